"""What a graph costs and where ONNX Runtime spends its time on it (for bench/run.py)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

FLOP_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def graph_facts(path: Path) -> dict:
    """FLOPs per image of ``path`` (batch 1) and what ORT_ENABLE_ALL leaves of it."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    nodes = [n for n in model.graph.node if n.op_type in FLOP_OPS]
    weights = {i.name: tuple(i.dims) for i in model.graph.initializer}
    exposed = {name for n in nodes for name in [*n.input[:2], n.output[0]] if name}
    exposed -= set(weights)
    existing = {o.name for o in model.graph.output}
    for name in sorted(exposed - existing):
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    image = np.random.default_rng(0).random((1, 1, 28, 28), np.float32)
    shapes = {n: v.shape for n, v in zip(names, session.run(names, {"image": image}), strict=True)}

    def shape(name: str) -> tuple[int, ...]:
        return weights[name] if name in weights else tuple(shapes[name])

    flops = 0
    convs = []
    for n in nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "Conv":
            w, out = shape(n.input[1]), shape(n.output[0])
            macs = int(np.prod(out)) * int(np.prod(w[1:]))
            convs.append({"input": list(shape(n.input[0])), "output": list(out)})
        elif n.op_type == "ConvTranspose":
            # weight [C_in, C_out / group, kH, kW]: each input element feeds C_out/group*k*k
            w, x = shape(n.input[1]), shape(n.input[0])
            macs = int(np.prod(x)) * int(np.prod(w[1:]))
        else:  # Gemm, MatMul
            a, out = shape(n.input[0]), shape(n.output[0])
            k = a[0] if n.op_type == "Gemm" and attrs.get("transA", 0) else a[-1]
            macs = int(np.prod(out)) * k
        flops += 2 * macs

    # what the service's optimisation level does to the graph, saved next to a temp copy
    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / f"{path.stem}.optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(optimized)
        options.log_severity_level = 3
        ort.InferenceSession(str(path), options, ["CPUExecutionProvider"])
        after = onnx.load(str(optimized))
    count = lambda g, op: sum(1 for x in g.node if op in x.op_type)  # noqa: E731
    original = onnx.load(str(path)).graph
    return {
        "flops_per_image": flops,
        "flop_nodes": len(nodes),
        "first_conv": convs[0] if convs else None,
        "batchnorm_nodes": count(original, "BatchNormalization"),
        "batchnorm_nodes_after_ort": count(after.graph, "BatchNormalization"),
        "conv_nodes": count(original, "Conv"),
        "fused_conv_nodes_after_ort": count(after.graph, "FusedConv"),
        "nodes": len(original.node),
        "nodes_after_ort": len(after.graph.node),
    }


def op_time_shares(
    path: Path, threads: int, batch: int, runs: int, native: bool = False
) -> dict[str, float]:
    """Share of ORT's kernel time by operator type (ORT's profiler, ORT_ENABLE_ALL), with
    the MLF kernel library registered when ``native``."""
    import onnxruntime as ort

    import mlf_kernel

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        options.log_severity_level = 3
        if native:
            mlf_kernel.register(options)
        session = ort.InferenceSession(str(path), options, ["CPUExecutionProvider"])
        image = np.random.default_rng(0).random((batch, 1, 28, 28), np.float32)
        for _ in range(runs):
            session.run(None, {"image": image})
        events = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            totals[op] = totals.get(op, 0.0) + e["dur"]
    whole = sum(totals.values()) or 1.0
    return {op: t / whole for op, t in sorted(totals.items(), key=lambda kv: -kv[1])}
