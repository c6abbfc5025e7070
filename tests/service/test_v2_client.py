"""A real V2 client library (``tritonclient[http]``, pinned in the dev extra) against a real
``python -m service`` on 127.0.0.1: metadata, health, JSON and binary inference, errors.
The answers equal ``/classify``'s on the same images."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image
from service_helpers import png_bytes
from tritonclient.utils import InferenceServerException

NAME = "tiny-fashion-mnist"


@pytest.fixture
def served(start_server) -> tuple[str, triton.InferenceServerClient]:
    url = start_server()
    client = triton.InferenceServerClient(url.removeprefix("http://"), network_timeout=60)
    yield url, client
    client.close()


def infer(client, images: np.ndarray, *, binary: bool, purify: bool = True):
    tensor = triton.InferInput("image", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images, binary_data=binary)
    names = ["logits", "classifier_spikes"] + (["purifier_spikes"] if purify else [])
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in names]
    return client.infer(NAME, [tensor], outputs=outputs, parameters={"purify": purify})


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def test_metadata_and_health(served):
    _, client = served
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(NAME)
    server = client.get_server_metadata()
    assert server["name"] == "spikeguard" and "binary_tensor_data" in server["extensions"]
    meta = client.get_model_metadata(NAME)
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]


@pytest.mark.parametrize("purify", [True, False])
def test_json_and_binary_answers_equal_classify(served, fashion_images, purify):
    url, client = served
    images = fashion_images[0][:4]
    tensors = (images.astype(np.float32) / 255.0)[:, None]
    as_json = infer(client, tensors, binary=False, purify=purify)
    as_binary = infer(client, tensors, binary=True, purify=purify)
    for name in ("logits", "classifier_spikes") + (("purifier_spikes",) if purify else ()):
        np.testing.assert_array_equal(as_json.as_numpy(name), as_binary.as_numpy(name))
    assert as_binary.get_response()["model_version"] == "0.0.1"
    # tritonclient puts binary outputs after the JSON header: they were sent as binary
    assert "data" not in as_binary.get_output("logits")
    assert "data" in as_json.get_output("logits")

    probabilities = softmax(as_binary.as_numpy("logits").astype(np.float64))
    spikes = as_binary.as_numpy("classifier_spikes")
    with httpx.Client(base_url=url, timeout=60) as http:
        for i, image in enumerate(images):
            png = png_bytes(Image.fromarray(image, "L"))
            answer = http.post(
                "/classify", files={"file": ("x.png", png)}, params={"purify": purify, "top_k": 10}
            ).json()
            assert answer["class_index"] == int(probabilities[i].argmax())
            by_class = {p["class_index"]: p["confidence"] for p in answer["top_k"]}
            np.testing.assert_allclose(
                [by_class[k] for k in range(10)], probabilities[i], atol=1e-6
            )
            assert answer["spikes"]["classifier"] == int(spikes[i]) > 0
            if purify:
                assert answer["spikes"]["purifier"] == int(as_json.as_numpy("purifier_spikes")[i])


def test_errors_reach_the_client_as_messages(served):
    _, client = served
    with pytest.raises(InferenceServerException) as unknown:
        client.get_model_metadata("no-such-model")
    assert unknown.value.status() == "404"
    assert "no-such-model" in unknown.value.message()

    wrong = triton.InferInput("image", [1, 1, 32, 32], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 1, 32, 32), np.float32), binary_data=True)
    with pytest.raises(InferenceServerException) as refused:
        client.infer(NAME, [wrong])
    assert refused.value.status() == "422"
    assert "expected [N, 1, 28, 28]" in refused.value.message()
