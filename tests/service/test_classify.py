"""POST /classify and POST /purify on real Fashion-MNIST images, in-process."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from service_helpers import png_bytes


def classify(client, data: bytes, **params):
    return client.post("/classify", files={"file": ("x.png", data)}, params=params)


def test_classify_returns_the_documented_json(client, fashion_png, tiny_model_dir: Path):
    manifest = json.loads((tiny_model_dir / "manifest.json").read_text())
    response = classify(client, fashion_png)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == {"name": manifest["name"], "version": manifest["version"]}
    assert body["label"] == manifest["class_names"][body["class_index"]]
    assert 0 < body["confidence"] <= 1
    assert len(body["top_k"]) == 5
    assert body["top_k"][0] == {
        "label": body["label"],
        "class_index": body["class_index"],
        "confidence": body["confidence"],
    }
    confidences = [p["confidence"] for p in body["top_k"]]
    assert confidences == sorted(confidences, reverse=True)
    assert body["purified"] is True
    assert 0 < body["noise_level"] < 1
    assert body["spikes"]["purifier"] > 0 and body["spikes"]["classifier"] > 0
    timings = body["timings_ms"]
    assert timings["batch_size"] == 1
    for stage in ("decode", "queue", "purify", "classify"):
        assert 0 <= timings[stage] <= timings["total"]


def test_classify_matches_the_onnx_pipeline(client, fashion_images, tiny_model_dir: Path):
    """The service's answer is purifier.onnx -> classifier.onnx on the same pixels."""
    import onnxruntime as ort

    pixels = fashion_images[0][3]
    sessions = {
        name: ort.InferenceSession(str(tiny_model_dir / f"{name}.onnx"))
        for name in ("purifier", "classifier")
    }
    x = (pixels.astype(np.float32) / 255.0)[None, None]
    purified, noise, purifier_spikes = sessions["purifier"].run(None, {"image": x})
    logits, classifier_spikes = sessions["classifier"].run(None, {"image": purified})
    body = classify(client, png_bytes(Image.fromarray(pixels, "L")), top_k=10).json()
    assert body["class_index"] == int(logits.argmax())
    probabilities = np.exp(logits[0] - logits[0].max())
    probabilities /= probabilities.sum()
    got = {p["class_index"]: p["confidence"] for p in body["top_k"]}
    np.testing.assert_allclose([got[i] for i in range(10)], probabilities, atol=1e-5)
    assert body["spikes"] == {
        "purifier": int(purifier_spikes[0]),
        "classifier": int(classifier_spikes[0]),
    }
    assert abs(body["noise_level"] - float(noise.mean())) < 1e-5


def test_answers_depend_on_the_image(client, fashion_images):
    """Different images give different logits and spike counts: the network is not silent."""
    bodies = [
        classify(client, png_bytes(Image.fromarray(img, "L")), top_k=10).json()
        for img in fashion_images[0][:4]
    ]
    spikes = {b["spikes"]["classifier"] for b in bodies}
    confidences = {tuple(round(p["confidence"], 6) for p in b["top_k"]) for b in bodies}
    assert len(spikes) > 1 and len(confidences) > 1


def without_timings(body: dict) -> dict:
    return {k: v for k, v in body.items() if k != "timings_ms"}


@pytest.mark.parametrize("media_type", ["image/png", "application/octet-stream"])
def test_a_raw_image_body_gets_the_same_answer_as_a_form(client, fashion_images, media_type):
    """The image as the request body itself (no multipart framing) is classified exactly as
    the same file in a form; the declared image type does not have to match the file."""
    for image in fashion_images[0][:3]:
        data = png_bytes(Image.fromarray(image, "L"))
        form = classify(client, data, top_k=10)
        raw = client.post(
            "/classify", content=data, headers={"content-type": media_type}, params={"top_k": 10}
        )
        assert form.status_code == raw.status_code == 200, raw.text
        assert without_timings(raw.json()) == without_timings(form.json())
    mislabelled = client.post(
        "/classify", content=data, headers={"content-type": "image/jpeg"}, params={"top_k": 10}
    )
    assert without_timings(mislabelled.json()) == without_timings(form.json())


def test_purify_takes_a_raw_image_body(client, fashion_png):
    form = client.post("/purify", files={"file": ("x.png", fashion_png)})
    raw = client.post("/purify", content=fashion_png, headers={"content-type": "image/png"})
    assert form.status_code == raw.status_code == 200, raw.text
    assert raw.content == form.content
    assert raw.headers["X-Noise-Level"] == form.headers["X-Noise-Level"]


def test_classify_without_purification(client, fashion_png):
    body = classify(client, fashion_png, purify="false", top_k=3).json()
    assert body["purified"] is False
    assert body["noise_level"] is None and body["spikes"]["purifier"] is None
    assert body["timings_ms"]["purify"] is None
    assert len(body["top_k"]) == 3 and body["spikes"]["classifier"] > 0


def test_top_k_is_capped_at_the_number_of_classes(client, fashion_png):
    assert len(classify(client, fashion_png, top_k=50).json()["top_k"]) == 10


def test_any_size_and_mode_is_converted(client, fashion_images):
    """A large RGBA photo-sized upload is flattened, greyed and resized, not refused."""
    rgba = Image.fromarray(fashion_images[0][1], "L").resize((300, 200)).convert("RGBA")
    response = classify(client, png_bytes(rgba))
    assert response.status_code == 200, response.text


def test_purify_returns_a_png_at_model_resolution(client, fashion_png):
    response = client.post("/purify", files={"file": ("x.png", fashion_png)})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "PNG" and image.size == (28, 28) and image.mode == "L"
    assert 0 < float(response.headers["X-Noise-Level"]) < 1
    assert int(response.headers["X-Spike-Count"]) > 0


def test_purify_can_resize_back_to_the_original_size(client, fashion_images):
    upload = Image.fromarray(fashion_images[0][2], "L").resize((90, 60))
    files = {"file": ("x.jpg", png_bytes(upload, "JPEG"))}
    response = client.post("/purify", files=files, params={"size": "original"})
    assert response.status_code == 200, response.text
    assert Image.open(io.BytesIO(response.content)).size == (90, 60)


def test_exif_orientation_is_respected(client, fashion_images):
    """A JPEG stored 90x60 with orientation 6 (rotate 90 clockwise) is a 60x90 picture."""
    exif = Image.Exif()
    exif[0x0112] = 6
    upload = Image.fromarray(fashion_images[0][2], "L").resize((90, 60))
    files = {"file": ("x.jpg", png_bytes(upload, "JPEG", exif=exif.tobytes()))}
    response = client.post("/purify", files=files, params={"size": "original"})
    assert response.status_code == 200, response.text
    assert Image.open(io.BytesIO(response.content)).size == (60, 90)


def test_ranking_keeps_class_order_on_ties_and_probabilities_sum_to_one():
    from service.routes.classify import ranked, softmax

    logits = [0.5, 2.0, 2.0, -1.0, 2.0]
    probabilities = softmax(logits)
    expected = np.exp(np.array(logits) - max(logits))
    np.testing.assert_allclose(probabilities, expected / expected.sum(), rtol=1e-12)
    assert abs(sum(probabilities) - 1.0) < 1e-12
    assert ranked(probabilities, 4) == [1, 2, 4, 0]  # the three tied first, in class order
    assert ranked(softmax([1e4, -1e4]), 5) == [0, 1]  # no overflow, k capped by the classes


def test_upload_routes_skip_fastapi_routing_and_stay_documented(make_client, fashion_png):
    """POSTs to the upload routes bypass FastAPI's middleware stack (and only they: another
    method at the same path gets FastAPI's 405); the schema still documents them."""
    client = make_client()
    app = client.app
    entered: list[str] = []
    stack = app.middleware_stack

    async def counting(scope, receive, send):
        entered.append(f"{scope['method']} {scope['path']}")
        await stack(scope, receive, send)

    app.middleware_stack = counting
    try:
        assert client.post("/classify", files={"file": ("x.png", fashion_png)}).status_code == 200
        purified = client.post(
            "/purify", content=fashion_png, headers={"content-type": "image/png"}
        )
        assert purified.status_code == 200
        assert entered == []
        refused = client.get("/classify")
        assert refused.status_code == 405
        assert refused.json()["error"]["code"] == "method_not_allowed"
        assert entered == ["GET /classify"]
    finally:
        app.middleware_stack = stack
    paths = app.openapi()["paths"]
    for path, params in (("/classify", {"purify", "top_k"}), ("/purify", {"size", "output"})):
        operation = paths[path]["post"]
        assert "image/png" in operation["requestBody"]["content"]
        assert {p["name"] for p in operation["parameters"]} == params


def test_upload_route_failure_answers_json_500_and_is_counted(make_client, fashion_png):
    """An unexpected error in an upload route (served past FastAPI's stack) gets the app's
    500 handler: the JSON error shape, counted as a 5xx of its route; the next request is
    served."""
    client = make_client()
    service = client.app.state.service
    real_infer = service.infer

    async def broken_infer(*args, **kwargs):
        raise RuntimeError("a fault inside the route")

    service.infer = broken_infer
    try:
        response = client.post("/classify", files={"file": ("x.png", fashion_png)})
    finally:
        service.infer = real_infer
    assert response.status_code == 500
    assert response.json() == {"error": {"code": "internal", "message": "internal server error"}}
    metrics = client.get("/metrics").text
    assert (
        'spikeguard_request_duration_seconds_count{endpoint="/classify",status_class="5xx"} 1.0'
        in metrics
    )
    assert client.post("/classify", files={"file": ("x.png", fashion_png)}).status_code == 200
