"""Open Inference Protocol V2: metadata, health and infer, as a V2 client sends them."""

from __future__ import annotations

import gzip
import json

import numpy as np
import onnxruntime as ort
import pytest

NAME = "tiny-fashion-mnist"
HEADER = "Inference-Header-Content-Length"


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
    server = client.get("/v2").json()
    assert server["name"] == "spikeguard" and server["extensions"] == ["binary_tensor_data"]
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
    for path, mentions in [
        ("/v2/models/other", "'other'"),
        ("/v2/models/other/ready", "'other'"),
        (f"/v2/models/{NAME}/versions/9", "'9'"),
    ]:
        response = client.get(path)
        assert response.status_code == 404, response.text
        # V2's error shape: {"error": "<message>"}
        body = response.json()
        assert set(body) == {"error"} and mentions in body["error"], body


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
    assert mentions in response.json()["error"]


def test_batch_over_the_limit_is_413(make_client):
    client = make_client(max_batch_size=2)
    body = infer_body(np.full((3, 1, 28, 28), 0.5, np.float32))
    assert client.post(f"/v2/models/{NAME}/infer", json=body).status_code == 413


def test_a_body_without_content_type_is_json(client, fashion_images):
    """V2 client libraries send no Content-Type: JSON is the protocol's default."""
    images = (fashion_images[0][:1].astype(np.float32) / 255.0)[:, None]
    typed = client.post(f"/v2/models/{NAME}/infer", json=infer_body(images))
    untyped = client.post(f"/v2/models/{NAME}/infer", content=json.dumps(infer_body(images)))
    assert "content-type" not in untyped.request.headers
    assert untyped.status_code == 200, untyped.text
    assert untyped.json() == typed.json()


def test_v2_routes_answer_v2_errors_and_the_others_keep_theirs(client):
    v2 = client.post(f"/v2/models/{NAME}/infer", content=b"{not json")
    assert v2.status_code == 400 and isinstance(v2.json()["error"], str), v2.text
    assert "JSON" in v2.json()["error"]
    unknown = client.get("/v2/no-such-route")
    assert unknown.status_code == 404 and isinstance(unknown.json()["error"], str)
    own = client.post("/classify", files={"file": ("x.png", b"text")})
    assert own.json()["error"]["code"] == "not_an_image"
    assert isinstance(client.get("/no-such-route").json()["error"], dict)


def binary_request(images: np.ndarray, **extra) -> tuple[bytes, dict[str, str]]:
    """A body with the binary tensor data extension: JSON header, then the raw FP32 image."""
    blob = images.astype("<f4").tobytes()
    header = {
        "inputs": [
            {
                "name": "image",
                "shape": list(images.shape),
                "datatype": "FP32",
                "parameters": {"binary_data_size": len(blob)},
            }
        ],
        **extra,
    }
    head = json.dumps(header).encode()
    return head + blob, {"Inference-Header-Content-Length": str(len(head))}


def test_binary_tensor_data_in_and_out(client, fashion_images):
    images = (fashion_images[0][:3].astype(np.float32) / 255.0)[:, None]
    expected = client.post(f"/v2/models/{NAME}/infer", json=infer_body(images)).json()
    expected = {o["name"]: o["data"] for o in expected["outputs"]}
    outputs = [{"name": "logits", "parameters": {"binary_data": True}}, {"name": "purifier_spikes"}]
    body, headers = binary_request(images, outputs=outputs)
    response = client.post(f"/v2/models/{NAME}/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    length = int(response.headers["inference-header-content-length"])
    head = json.loads(response.content[:length])
    logits, spikes = head["outputs"]
    assert logits["parameters"] == {"binary_data_size": 3 * 10 * 4} and "data" not in logits
    got = np.frombuffer(response.content[length:], "<f4")
    np.testing.assert_array_equal(got, np.array(expected["logits"], np.float32))
    assert spikes["data"] == expected["purifier_spikes"]

    # binary_data_output: every output binary, in the order the metadata lists them
    body, headers = binary_request(images, parameters={"binary_data_output": True})
    response = client.post(f"/v2/models/{NAME}/infer", content=body, headers=headers)
    length = int(response.headers["inference-header-content-length"])
    names = [o["name"] for o in json.loads(response.content[:length])["outputs"]]
    assert names == ["logits", "classifier_spikes", "purifier_spikes"]
    assert len(response.content) - length == (30 + 3 + 3) * 4


@pytest.mark.parametrize(
    ("mutate", "status", "mentions"),
    [
        (lambda body, h: (body, {HEADER: str(len(body) + 1)}), 400, "Inference-Header"),
        (lambda body, h: (body + b"\0\0\0\0", h), 422, "binary_data_size"),
        (lambda body, h: (body[:-4], h), 422, "binary_data_size"),
        (lambda body, h: (body, {}), 400, "JSON"),
    ],
)
def test_bad_binary_requests(client, mutate, status, mentions):
    body, headers = binary_request(np.full((1, 1, 28, 28), 0.5, np.float32))
    body, headers = mutate(body, headers)
    response = client.post(f"/v2/models/{NAME}/infer", content=body, headers=headers)
    assert response.status_code == status, response.text
    assert mentions in response.json()["error"]


def test_compressed_bodies_are_refused(client):
    body = json.dumps(infer_body(np.full((1, 1, 28, 28), 0.5, np.float32))).encode()
    response = client.post(
        f"/v2/models/{NAME}/infer",
        content=gzip.compress(body),
        headers={"Content-Encoding": "gzip"},
    )
    assert response.status_code == 415 and "gzip" in response.json()["error"]


def test_a_body_over_the_v2_limit_is_refused_before_parsing(client):
    """The default limit follows from the model: max_batch_size images as JSON (32 x 784
    values here, about 0.67 MB). A 10 MB body is refused from its declared length, and a
    chunked one as it streams past the limit; neither is parsed."""
    big = b'{"inputs": [{"name": "image", "datatype": "FP32", "shape": [1], "data": [' + (
        b"0.5, " * 2_000_000
    )
    response = client.post(f"/v2/models/{NAME}/infer", content=big)
    assert response.status_code == 413, response.text
    assert "limit of 667648" in response.json()["error"]

    def chunks():
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    streamed = client.post(f"/v2/models/{NAME}/infer", content=chunks())
    assert "content-length" not in streamed.request.headers
    assert streamed.status_code == 413 and "limit of 667648" in streamed.json()["error"]


def test_the_v2_limit_is_a_setting(make_client):
    client = make_client(max_infer_body_bytes=1000)
    body = json.dumps(infer_body(np.full((1, 1, 28, 28), 0.5, np.float32))).encode()
    response = client.post(f"/v2/models/{NAME}/infer", content=body)
    assert response.status_code == 413 and "limit of 1000" in response.json()["error"]
