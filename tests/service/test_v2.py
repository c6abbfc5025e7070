"""Open Inference Protocol V2: metadata, health and infer, as a V2 client sends them."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

NAME = "tiny-fashion-mnist"


def infer_body(images: np.ndarray, **extra) -> dict:
    return {
        "id": "req-1",
        "inputs": [
            {
                "name": "image",
                "shape": list(images.shape),
                "datatype": "FP32",
                "data": images.ravel().tolist(),
            }
        ],
        **extra,
    }


def test_server_and_health(client):
    assert client.get("/v2").json()["name"] == "spikeguard"
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get(f"/v2/models/{NAME}/ready").status_code == 200


def test_model_metadata(client):
    meta = client.get(f"/v2/models/{NAME}").json()
    assert meta["name"] == NAME and meta["versions"] == ["0.0.1"]
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert {o["name"]: o["shape"] for o in meta["outputs"]} == {
        "logits": [-1, 10],
        "classifier_spikes": [-1],
        "purifier_spikes": [-1],
    }
    assert client.get(f"/v2/models/{NAME}/versions/0.0.1").status_code == 200


def test_infer_matches_the_onnx_pipeline(client, fashion_images, tiny_model_dir):
    images = (fashion_images[0][:3].astype(np.float32) / 255.0)[:, None]
    response = client.post(f"/v2/models/{NAME}/infer", json=infer_body(images))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == NAME and body["id"] == "req-1"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["logits"]["shape"] == [3, 10] and outputs["logits"]["datatype"] == "FP32"
    purifier = ort.InferenceSession(str(tiny_model_dir / "purifier.onnx"))
    classifier = ort.InferenceSession(str(tiny_model_dir / "classifier.onnx"))
    purified, _, purifier_spikes = purifier.run(None, {"image": images})
    logits, classifier_spikes = classifier.run(None, {"image": purified})
    got = np.array(outputs["logits"]["data"], np.float32).reshape(3, 10)
    np.testing.assert_allclose(got, logits, atol=1e-4)
    assert outputs["purifier_spikes"]["data"] == purifier_spikes.tolist()
    assert outputs["classifier_spikes"]["data"] == classifier_spikes.tolist()
    assert min(outputs["classifier_spikes"]["data"]) > 0


def test_infer_without_purifier_and_chosen_outputs(client, fashion_images):
    images = (fashion_images[0][:2].astype(np.float32) / 255.0)[:, None]
    body = infer_body(images, parameters={"purify": False}, outputs=[{"name": "logits"}])
    response = client.post(f"/v2/models/{NAME}/infer", json=body)
    assert response.status_code == 200, response.text
    assert [o["name"] for o in response.json()["outputs"]] == ["logits"]
    body["outputs"] = [{"name": "purifier_spikes"}]
    assert client.post(f"/v2/models/{NAME}/infer", json=body).status_code == 422


def test_unknown_model_is_404(client):
    for path in ("/v2/models/other", "/v2/models/other/ready", f"/v2/models/{NAME}/versions/9"):
        response = client.get(path)
        assert response.status_code == 404 and response.json()["error"]["code"].endswith(
            "not_found"
        )


@pytest.mark.parametrize(
    ("mutate", "status", "mentions"),
    [
        (lambda b: b["inputs"][0].update(shape=[1, 1, 32, 32]), 422, "shape"),
        (lambda b: b["inputs"][0].update(datatype="INT8"), 422, "FP32"),
        (lambda b: b["inputs"][0].update(name="pixels"), 422, "image"),
        (lambda b: b["inputs"][0].update(data=[0.5] * 10), 422, "values"),
        (lambda b: b["inputs"][0].update(data=[255.0] * 784), 422, "[0, 1]"),
        (lambda b: b["inputs"][0].update(data=["a"] * 784), 422, "data"),
        (lambda b: b.update(parameters={"purify": "yes"}), 422, "purify"),
        (lambda b: b.pop("inputs"), 422, "inputs"),
    ],
)
def test_bad_infer_requests(client, mutate, status, mentions):
    body = infer_body(np.full((1, 1, 28, 28), 0.5, np.float32))
    mutate(body)
    response = client.post(f"/v2/models/{NAME}/infer", json=body)
    assert response.status_code == status, response.text
    assert mentions in response.json()["error"]["message"]


def test_batch_over_the_limit_is_413(make_client):
    client = make_client(max_batch_size=2)
    body = infer_body(np.full((3, 1, 28, 28), 0.5, np.float32))
    assert client.post(f"/v2/models/{NAME}/infer", json=body).status_code == 413
