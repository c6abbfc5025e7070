"""One model per request: a reload under load never answers with one model's labels or
version and another model's outputs."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

V2_VERSION = "0.0.2-renamed"


def rename_and_permute_classes(model_dir: Path) -> list[str]:
    """Turns ``model_dir`` into another model: the classifier's logits in reverse class
    order, the class names reversed and renamed, a new version; returns the new names.
    The same image then gets the same class under another name and another index, so an
    answer that takes its names from one model and its logits from the other shows."""
    path = model_dir / "classifier.onnx"
    graph = onnx.load(path)
    for node in graph.graph.node:
        node.input[:] = ["logits_unpermuted" if n == "logits" else n for n in node.input]
        node.output[:] = ["logits_unpermuted" if n == "logits" else n for n in node.output]
    manifest = json.loads((model_dir / "manifest.json").read_text())
    classes = len(manifest["class_names"])
    order = numpy_helper.from_array(np.arange(classes - 1, -1, -1, dtype=np.int64), "reverse")
    graph.graph.initializer.append(order)
    graph.graph.node.append(
        helper.make_node("Gather", ["logits_unpermuted", "reverse"], ["logits"], axis=1)
    )
    onnx.save(graph, path)
    names = [f"{name} (v2)" for name in reversed(manifest["class_names"])]
    manifest["class_names"] = names
    manifest["version"] = V2_VERSION
    manifest["files"]["classifier"]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest["files"]["classifier"]["bytes"] = path.stat().st_size
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    return names


def test_a_reload_under_load_never_mixes_two_models(make_client, model_dir_copy, fashion_png):
    client = make_client(model_dir=model_dir_copy, batch_wait_ms=5, max_batch_size=2)
    state = client.app.state.service
    baseline = client.post("/classify", files={"file": ("x.png", fashion_png)}).json()
    label, index = baseline["label"], baseline["class_index"]
    classes = len(state.runtime.manifest.class_names)
    v1_version = baseline["model"]["version"]
    new_names = rename_and_permute_classes(model_dir_copy)
    assert new_names[classes - 1 - index] == f"{label} (v2)"

    # The first batch on the old model is held until the reload is done, so requests that
    # started on the old model are queued behind it when the model is swapped.
    old = state.runtime
    real_run, gate, entered = old.run, threading.Event(), threading.Event()

    def held_run(*args):
        entered.set()
        gate.wait(30)
        return real_run(*args)

    old.run = held_run
    answers: list[tuple[str, int, str]] = []
    errors: list[str] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            response = client.post("/classify", files={"file": ("x.png", fashion_png)})
            if response.status_code != 200:
                errors.append(response.text)
                continue
            body = response.json()
            answers.append((body["model"]["version"], body["class_index"], body["label"]))

    threads = [threading.Thread(target=load) for _ in range(8)]
    for thread in threads:
        thread.start()
    try:
        assert entered.wait(30), "no request reached the model"
        deadline = time.monotonic() + 10
        while state.batcher.depth < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert state.batcher.depth >= 3, "requests did not queue behind the held batch"
        assert client.portal.call(state.reload) is True
        assert state.runtime is not old
        gate.set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sum(a[0] == V2_VERSION for a in answers) < 12:
            time.sleep(0.05)
    finally:
        gate.set()
        stop.set()
        for thread in threads:
            thread.join(30)
    assert not errors, errors[:3]
    expected = {
        v1_version: (index, label),
        V2_VERSION: (classes - 1 - index, f"{label} (v2)"),
    }
    mixed = [a for a in answers if expected.get(a[0]) != (a[1], a[2])]
    assert not mixed, mixed[:5]
    versions = {a[0] for a in answers}
    assert versions == {v1_version, V2_VERSION}, versions
    # the requests queued before the swap were answered by the model they started with
    assert sum(a[0] == v1_version for a in answers) >= 3


def test_v2_outputs_and_version_come_from_one_model(make_client, model_dir_copy, fashion_images):
    client = make_client(model_dir=model_dir_copy)
    state = client.app.state.service
    name = state.runtime.manifest.name
    image = (fashion_images[0][:1].astype(np.float32) / 255.0)[:, None]
    body = {
        "inputs": [
            {
                "name": "image",
                "shape": [1, 1, 28, 28],
                "datatype": "FP32",
                "data": image.ravel().tolist(),
            }
        ],
        "outputs": [{"name": "logits"}],
    }

    def logits() -> tuple[str, np.ndarray]:
        answer = client.post(f"/v2/models/{name}/infer", json=body).json()
        return answer["model_version"], np.array(answer["outputs"][0]["data"])

    version, before = logits()
    rename_and_permute_classes(model_dir_copy)
    assert client.portal.call(state.reload) is True
    new_version, after = logits()
    assert (version, new_version) == ("0.0.1", V2_VERSION)
    np.testing.assert_allclose(after, before[::-1], atol=1e-5)
