"""One ONNX node per MLF neuron, and the model-local function behind it.

``ai.spikeguard::MLF(X) -> (Y, Count)``: ``X`` float ``[T, B, ...]`` is a neuron's input
current, ``Y`` (same shape) the spikes per step (how many of the K units fired: 0..K),
``Count`` ``[B]`` the spikes per image (summed over steps, units and positions).
Attributes: ``thresholds`` (K floats), ``decay`` (float), ``timesteps`` (int, = T).

The file also carries a model-local function ``ai.spikeguard.MLF`` (``mlf_function``):
eq. 6 in plain ONNX operators, one ``Where`` per step for the reset and a single Cast +
ReduceSum over all steps, so any ONNX runtime without the kernel library runs the file
(ONNX Runtime inlines the function wherever no kernel claims the node). Its arithmetic is
the exported unrolled loop's: ``u = Where(fired, 0, u * decay) + x[t]`` and
``fired = (u - V_th) >= 0`` in float32, from ``u = x[0]`` at the first step, which equals
``0 * decay * (1 - 0) + x[0]`` up to the sign of a zero, which no comparison sees.

``fuse_neurons(model)`` rewrites a graph exported with the unrolled loop (one Gather, Sub,
Mul, Add, GreaterOrEqual, Cast, ReduceSum... per step and neuron) into one node per neuron
plus the function; ``training`` exports that way and the benchmark compares both forms.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx
from onnx import AttributeProto, TensorProto, helper

from . import DOMAIN, OP_TYPE, OPSET

ONNX_OPSET = 18  # Split's num_outputs needs 18


def _ref(name: str, ref: str, kind: int) -> AttributeProto:
    attribute = AttributeProto()
    attribute.name = name
    attribute.ref_attr_name = ref
    attribute.type = kind
    return attribute


def _constant(output: str, attribute: AttributeProto) -> onnx.NodeProto:
    node = helper.make_node("Constant", [], [output])
    node.attribute.append(attribute)
    return node


def mlf_function(timesteps: int) -> onnx.FunctionProto:
    """The plain-operator body of ``MLF`` for ``timesteps`` steps (the loop is unrolled:
    a function body has a fixed number of nodes; thresholds and decay come from the
    calling node's attributes)."""
    if timesteps < 1:
        raise ValueError(f"timesteps must be >= 1, got {timesteps}")
    ints = lambda name, values: helper.make_node(  # noqa: E731
        "Constant", [], [name], value_ints=list(values)
    )
    nodes = [
        _constant("thresholds", _ref("value_floats", "thresholds", AttributeProto.FLOATS)),
        _constant("decay", _ref("value_float", "decay", AttributeProto.FLOAT)),
        helper.make_node("Constant", [], ["zero"], value_float=0.0),
        ints("axis1", [1]),
        ints("flat_shape", [0, 1, -1]),
        ints("image_shape", [0, 0, -1]),
        ints("axes02", [0, 2]),
        # thresholds [K] -> [K, 1]; input [T, B, ...] -> [T, 1, N] -> T steps of [1, 1, N]
        helper.make_node("Unsqueeze", ["thresholds", "axis1"], ["v_th"]),
        helper.make_node("Reshape", ["X", "flat_shape"], ["x_flat"]),
    ]
    steps = [f"x{t}" for t in range(timesteps)]
    if timesteps == 1:
        nodes.append(helper.make_node("Identity", ["x_flat"], steps))
    else:
        nodes.append(helper.make_node("Split", ["x_flat"], steps, axis=0, num_outputs=timesteps))
    fired = []
    for t in range(timesteps):
        u = "x0" if t == 0 else f"u{t}"
        if t > 0:
            nodes += [
                helper.make_node("Mul", [f"u{t - 1}" if t > 1 else "x0", "decay"], [f"d{t}"]),
                helper.make_node("Where", [f"fired{t - 1}", "zero", f"d{t}"], [f"r{t}"]),
                helper.make_node("Add", [f"r{t}", steps[t]], [u]),
            ]
        nodes += [
            helper.make_node("Sub", [u, "v_th"], [f"over{t}"]),  # [1, K, N]
            helper.make_node("GreaterOrEqual", [f"over{t}", "zero"], [f"fired{t}"]),
        ]
        fired.append(f"fired{t}")
    nodes += [
        helper.make_node("Concat", fired, ["fired_all"], axis=0),  # [T, K, N]
        helper.make_node("Cast", ["fired_all"], ["spikes_all"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["spikes_all", "axis1"], ["per_step"], keepdims=0),
        helper.make_node("Shape", ["X"], ["x_shape"]),
        helper.make_node("Reshape", ["per_step", "x_shape"], ["Y"]),
        helper.make_node("Reshape", ["Y", "image_shape"], ["y_images"]),  # [T, B, M]
        helper.make_node("ReduceSum", ["y_images", "axes02"], ["Count"], keepdims=0),
    ]
    return helper.make_function(
        DOMAIN,
        OP_TYPE,
        ["X"],
        ["Y", "Count"],
        nodes,
        [helper.make_opsetid("", ONNX_OPSET)],
        attributes=["thresholds", "decay", "timesteps"],
    )


def mlf_node(
    x: str,
    y: str,
    count: str,
    *,
    thresholds: Sequence[float],
    decay: float,
    timesteps: int,
    name: str | None = None,
) -> onnx.NodeProto:
    return helper.make_node(
        OP_TYPE,
        [x],
        [y, count],
        name=name,
        domain=DOMAIN,
        thresholds=[float(v) for v in thresholds],
        decay=float(decay),
        timesteps=int(timesteps),
    )


def add_function(model: onnx.ModelProto, timesteps: int) -> None:
    """Declares the domain and attaches the function (once) to ``model``."""
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, OPSET))
    existing = [f for f in model.functions if (f.domain, f.name) == (DOMAIN, OP_TYPE)]
    if existing:
        return
    model.functions.append(mlf_function(timesteps))
