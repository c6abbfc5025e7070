"""The native MLF neuron kernel for ONNX Runtime's CPU provider, and how to load it.

An exported graph holds each multi-level-firing neuron (eq. 6) as one node
``ai.spikeguard::MLF`` (see ``mlf_kernel.graph``), and carries a model-local ONNX function
with the same name whose body computes it in plain ONNX operators. A runtime without this
library inlines the function; a CPU session that registers the library runs the node with
the C++ kernel in ``mlf_kernel/src/mlf.cc`` instead, with identical outputs.

This module imports neither torch nor onnx: the service uses it.

* ``library_path()``: where the built library is (``SPIKEGUARD_MLF_LIBRARY`` overrides);
* ``register(options)``: registers it with an ``onnxruntime.SessionOptions`` for a CPU
  session; never for CUDA or TensorRT sessions (the kernel is CPU only, and a custom node
  splits a TensorRT graph into many engines: those sessions run the function instead);
* ``isa()``: the vectorised variant this CPU runs ("avx512", "avx2", "generic").

``make kernel`` builds the library (the install and the Docker build stage run it).
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

DOMAIN = "ai.spikeguard"
OP_TYPE = "MLF"
OPSET = 1
LIBRARY_NAME = "libspikeguard_mlf.so"
ENV_LIBRARY = "SPIKEGUARD_MLF_LIBRARY"
PACKAGE_DIR = Path(__file__).resolve().parent


class KernelUnavailable(RuntimeError):
    """The library is not built, or this platform cannot load it."""


def library_path() -> Path:
    """The library to load: ``$SPIKEGUARD_MLF_LIBRARY`` if set, else the one ``make kernel``
    builds next to this file."""
    override = os.environ.get(ENV_LIBRARY)
    return Path(override) if override else PACKAGE_DIR / LIBRARY_NAME


def available(path: Path | None = None) -> bool:
    return (path or library_path()).is_file()


@functools.cache
def _isa(path: str) -> str:
    library = ctypes.CDLL(path)
    library.SpikeguardMlfIsa.restype = ctypes.c_char_p
    return library.SpikeguardMlfIsa().decode()


def isa(path: Path | None = None) -> str:
    """The variant the library runs on this CPU (honours ``SPIKEGUARD_MLF_ISA``)."""
    path = path or library_path()
    if not path.is_file():
        raise KernelUnavailable(f"the MLF kernel library {path} is not built (make kernel)")
    if os.environ.get("SPIKEGUARD_MLF_ISA"):
        _isa.cache_clear()
    return _isa(str(path))


def register(options, path: Path | None = None) -> Path:
    """Registers the library with ``options`` (an ``onnxruntime.SessionOptions`` for a CPU
    session); returns its path. Raises ``KernelUnavailable`` when it is not built or ONNX
    Runtime refuses it."""
    path = path or library_path()
    if not path.is_file():
        raise KernelUnavailable(f"the MLF kernel library {path} is not built (make kernel)")
    try:
        options.register_custom_ops_library(str(path))
    except Exception as exc:  # onnxruntime raises its own exception types
        raise KernelUnavailable(f"onnxruntime cannot load {path}: {exc}") from None
    return path
