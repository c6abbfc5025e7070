"""The model ``make serve`` serves: models/fashion-mnist loads with every check and
classifies real test images about as well as its manifest says."""

from __future__ import annotations

import json

import numpy as np
from service_helpers import REPO

from service.config import Settings
from service.runtime import load_runtime

BUNDLED = REPO / "models" / "fashion-mnist"


def test_bundled_model_serves_its_recorded_accuracy(fashion_images):
    runtime = load_runtime(Settings(model_dir=BUNDLED, providers="cpu", intra_op_threads=1))
    manifest = json.loads((BUNDLED / "manifest.json").read_text())
    assert manifest["metrics"]["clean_accuracy"] > 0.8
    images, labels = fashion_images
    x = (images.astype(np.float32) / 255.0)[:, None]
    everything = np.ones(len(x), bool)
    result = runtime.run(x, everything, everything)
    accuracy = float((result.logits.argmax(1) == labels).mean())
    # 16 images: a loose bound around the manifest's purified accuracy (about 0.78)
    assert accuracy >= 0.5, accuracy
    assert (result.classifier_spikes > 0).all() and (result.purifier_spikes > 0).all()
