"""Rewrites an exported graph's unrolled MLF loops into one ``ai.spikeguard::MLF`` node each.

``torch.onnx.export`` (dynamo) writes ``mlf_reference`` step by step; per neuron and step
``t`` the graph holds::

    x_t   = Gather(X, t, axis=0)
    u_t   = Add(prev_t, x_t)             prev_0 = 0 * decay * (1 - 0); prev_t =
                                          Mul(Mul(u_{t-1}, decay), Sub(1, s_{t-1}))
    s_t   = Cast(GreaterOrEqual(Sub(u_t, V_th), 0))   V_th: [K, 1, ...]
    y_t   = Unsqueeze(ReduceSum(s_t, [0]), [0])
    Y     = Concat(y_0 .. y_{T-1}, axis=0)
    count = ReduceSum(Y, [0, 2, 3, ...])  (the exporter's per-image spike count)

``fuse_neurons`` finds each such ``Concat``, reads ``X``, ``V_th``, ``decay`` and ``T`` off
it, puts ``MLF(X) -> (Y, count)`` in its place and drops what only the loop used. Anything
that does not match is left alone; ``NotAnMLFNeuron`` is raised when a loop matches partly
(an exporter change, not something to paper over).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper

from .graph import add_function, mlf_node


class NotAnMLFNeuron(ValueError):
    """A loop that has part of the unrolled MLF pattern but not all of it."""


class _Graph:
    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for n in graph.node:
            for i in n.input:
                self.consumers[i].append(n)
        self.initializers = {i.name: i for i in graph.initializer}

    def const(self, name: str) -> np.ndarray | None:
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is None or node.op_type != "Constant" or len(node.attribute) != 1:
            return None
        value = onnx.helper.get_attribute_value(node.attribute[0])
        if isinstance(value, onnx.TensorProto):
            return numpy_helper.to_array(value)
        return np.asarray(value) if isinstance(value, int | float | list) else None

    def node(self, name: str, op_type: str) -> onnx.NodeProto | None:
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type else None


def _attribute(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _step(g: _Graph, unsqueezed: str) -> tuple[onnx.NodeProto, onnx.NodeProto]:
    """The step whose ``Unsqueeze(ReduceSum(Cast(GE(Sub(u, V_th), 0))))`` output is
    ``unsqueezed``: returns its Add (``u_t``) and Sub (``u_t - V_th``) nodes."""
    unsq = g.node(unsqueezed, "Unsqueeze")
    total = unsq and g.node(unsq.input[0], "ReduceSum")
    cast = total and g.node(total.input[0], "Cast")
    ge = cast and g.node(cast.input[0], "GreaterOrEqual")
    sub = ge and g.node(ge.input[0], "Sub")
    add = sub and g.node(sub.input[0], "Add")
    if not add:
        raise NotAnMLFNeuron(f"{unsqueezed}: not a step of the MLF loop")
    zero = g.const(ge.input[1])
    if zero is None or zero.size != 1 or float(zero) != 0.0:
        raise NotAnMLFNeuron(f"{ge.name}: compares with something other than 0")
    return add, sub


def _gathered(g: _Graph, add: onnx.NodeProto) -> tuple[str, int, str]:
    """(X, t, prev) of ``u_t = Add(prev, Gather(X, t))`` (the Gather may be either input)."""
    for index in (1, 0):
        gather = g.node(add.input[index], "Gather")
        if gather is not None and _attribute(gather, "axis", 0) == 0:
            t = g.const(gather.input[1])
            if t is not None and t.size == 1:
                return gather.input[0], int(t), add.input[1 - index]
    raise NotAnMLFNeuron(f"{add.name}: no Gather over the time axis")


def _decay(g: _Graph, prev: str) -> float | None:
    """``decay`` from ``prev = Mul(Mul(u, decay), Sub(1, s))`` or ``Mul(Mul(0, decay), ...)``."""
    outer = g.node(prev, "Mul")
    if outer is None:
        return None
    for name in outer.input:
        inner = g.node(name, "Mul")
        if inner is None:
            continue
        for operand in inner.input:
            value = g.const(operand)
            if value is not None and value.size == 1:
                return float(value)
    return None


def _match(g: _Graph, concat: onnx.NodeProto) -> dict | None:
    """The neuron whose per-step outputs ``concat`` stacks, or None if it is no MLF loop."""
    if _attribute(concat, "axis") != 0 or not concat.input:
        return None
    first = g.node(concat.input[0], "Unsqueeze")
    if first is None or g.node(first.input[0], "ReduceSum") is None:
        return None
    try:
        steps = [_step(g, name) for name in concat.input]
    except NotAnMLFNeuron:
        return None
    sources, decays, thresholds = set(), [], None
    for t, (add, sub) in enumerate(steps):
        x, index, prev = _gathered(g, add)
        if index != t:
            raise NotAnMLFNeuron(f"{concat.name}: step {t} reads x[{index}]")
        sources.add(x)
        th = g.const(sub.input[1])
        if th is None:
            raise NotAnMLFNeuron(f"{sub.name}: thresholds are not a constant")
        if thresholds is not None and not np.array_equal(th, thresholds):
            raise NotAnMLFNeuron(f"{concat.name}: thresholds change between steps")
        thresholds = th
        decays.append(_decay(g, prev))
    if len(sources) != 1:
        raise NotAnMLFNeuron(f"{concat.name}: steps read different inputs {sorted(sources)}")
    found = {d for d in decays if d is not None}
    if len(found) != 1:
        raise NotAnMLFNeuron(f"{concat.name}: cannot read one decay from {decays}")
    if thresholds.ndim < 1 or thresholds.shape[0] != thresholds.size:
        raise NotAnMLFNeuron(f"{concat.name}: thresholds of shape {thresholds.shape}")
    return {
        "x": sources.pop(),
        "thresholds": thresholds.reshape(-1).astype(np.float32).tolist(),
        "decay": found.pop(),
        "timesteps": len(steps),
    }


def _count_node(g: _Graph, stacked: str) -> onnx.NodeProto | None:
    """The exporter's per-image ``ReduceSum(Y, [0, 2, 3, ...], keepdims=0)``, if any."""
    for node in g.consumers[stacked]:
        if node.op_type != "ReduceSum" or _attribute(node, "keepdims", 1) != 0:
            continue
        axes = g.const(node.input[1]) if len(node.input) > 1 else None
        if axes is not None and axes.size >= 1 and int(axes.flat[0]) == 0:
            rest = [int(a) for a in axes.flat[1:]]
            if rest == list(range(2, 2 + len(rest))) and 1 not in rest:
                return node
    return None


def _prune(graph: onnx.GraphProto) -> None:
    """Drops nodes nothing reads (graph outputs count as read), then unread initializers."""
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    unread = [i for i in graph.initializer if i.name not in needed]
    for initializer in unread:
        graph.initializer.remove(initializer)
    produced = {o for n in graph.node for o in n.output} | {i.name for i in graph.initializer}
    stale = [v for v in graph.value_info if v.name not in produced]
    for value in stale:
        graph.value_info.remove(value)


def fuse_neurons(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` with every unrolled MLF loop as one node; returns it and the
    number of neurons fused. The model-local function is attached when any was."""
    fused = onnx.ModelProto()
    fused.CopyFrom(model)
    g = _Graph(fused.graph)
    replacements: dict[int, onnx.NodeProto] = {}
    drop: set[str] = set()  # outputs of the exporter's per-neuron count nodes
    timesteps = set()
    for position, node in enumerate(fused.graph.node):
        if node.op_type != "Concat":
            continue
        neuron = _match(g, node)
        if neuron is None:
            continue
        counter = _count_node(g, node.output[0])
        count = counter.output[0] if counter else f"{node.output[0]}_spike_count"
        if counter is not None:
            drop.add(counter.output[0])
        replacements[position] = mlf_node(
            neuron["x"],
            node.output[0],
            count,
            thresholds=neuron["thresholds"],
            decay=neuron["decay"],
            timesteps=neuron["timesteps"],
            name=f"mlf_{len(replacements)}",
        )
        timesteps.add(neuron["timesteps"])
    if not replacements:
        return fused, 0
    if len(timesteps) != 1:
        raise NotAnMLFNeuron(f"neurons with different timesteps {sorted(timesteps)}")
    nodes = [
        replacements.get(position, node)
        for position, node in enumerate(fused.graph.node)
        if not (node.op_type == "ReduceSum" and node.output[0] in drop)
    ]
    del fused.graph.node[:]
    fused.graph.node.extend(nodes)
    _prune(fused.graph)
    add_function(fused, timesteps.pop())
    return fused, len(replacements)
