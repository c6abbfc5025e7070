"""Fixtures for the native MLF kernel's tests: the built library and one-node ONNX models."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import mlf_kernel
from mlf_kernel.graph import ONNX_OPSET, add_function, mlf_node


def mlf_model(
    rank: int, thresholds: Sequence[float], decay: float, timesteps: int
) -> onnx.ModelProto:
    """``X [T, B, ...] -> (Y, Count)`` through one MLF node and the model-local function."""
    dims = ["T", "B"] + [f"d{i}" for i in range(rank - 2)]
    graph = helper.make_graph(
        [mlf_node("X", "Y", "Count", thresholds=thresholds, decay=decay, timesteps=timesteps)],
        "mlf",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, dims)],
        [
            helper.make_tensor_value_info("Y", TensorProto.FLOAT, dims),
            helper.make_tensor_value_info("Count", TensorProto.FLOAT, ["B"]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    model.ir_version = 10
    add_function(model, timesteps)
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def run_mlf(kernel_library: Path) -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """``run_mlf(x, thresholds, decay, native=...)``: (Y, Count) from ONNX Runtime, with the
    kernel library registered (``native=True``) or through the function body."""
    import onnxruntime as ort

    def run(x: np.ndarray, thresholds, decay: float, *, native: bool, level=None):
        model = mlf_model(x.ndim, thresholds, decay, x.shape[0])
        options = ort.SessionOptions()
        options.graph_optimization_level = level or ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        if native:
            mlf_kernel.register(options, kernel_library)
        session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        y, count = session.run(None, {"X": np.ascontiguousarray(x, np.float32)})
        return y, count

    return run
