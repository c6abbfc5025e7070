"""Spiking building blocks: surrogate gradients (``surrogates``), LIF (eq. 5) and MLF
(eq. 6) neurons (``neurons``; one step of eq. 6 in ``dynamics``), their training kernels
(``kernels``), the spike recorder (``recorder``) and the layers models are built from
(``layers``).

Tensors are time-major, ``[T, B, ...]``. A neuron's membrane state lives inside ``forward``
and starts from zero on every call, so the same input always gives the same output and
nothing leaks between batches (or between an attack's iterations).

LIF, eq. 5 of the paper (STBP, Wu et al. 2018), with hard reset::

    u[t] = k_tau * u[t-1] * (1 - o[t-1]) + x[t]
    o[t] = H(u[t] - V_th)

MLF, eq. 6 (Feng et al. 2022): K LIF units with thresholds ``V_th = (0.6, 1.6, 2.6)`` share
the input ``x``; each keeps its own membrane and reset; the unit emits the sum of the K
spikes, an integer in ``0..K``.

``H`` has no useful derivative, so backward uses a surrogate. The surrogate is an object
on each neuron and can be swapped (``use_surrogate``): a white-box evaluation attacks with
several shapes and keeps the per-sample worst case.
"""

from .dynamics import charge, fire, zero_membrane
from .kernels import EAGER, Kernels, compiled_kernels, get_kernels, mlf_backward, mlf_forward
from .layers import (
    ConvBNSpike,
    DirectEncoder,
    NeuronConfig,
    Normalize,
    merge_time,
    split_time,
    threshold_batchnorm,
)
from .neurons import (
    DEFAULT_DECAY,
    DEFAULT_THRESHOLDS,
    DEFAULT_TIMESTEPS,
    LIF,
    MLF,
    SpikingNeuron,
    mlf_reference,
    spiking_neurons,
    use_kernels,
    use_surrogate,
)
from .recorder import SpikeRecorder, firing_rates, spike_count
from .surrogates import (
    SURROGATES,
    ArcTan,
    NoSurrogate,
    Rectangular,
    SigmoidDerivative,
    StraightThrough,
    Surrogate,
    get_surrogate,
)

__all__ = [
    "DEFAULT_DECAY", "DEFAULT_THRESHOLDS", "DEFAULT_TIMESTEPS", "EAGER", "LIF", "MLF",
    "SURROGATES", "ArcTan", "ConvBNSpike", "DirectEncoder", "Kernels", "NeuronConfig",
    "NoSurrogate", "Normalize", "Rectangular", "SigmoidDerivative", "SpikeRecorder",
    "SpikingNeuron", "StraightThrough", "Surrogate", "charge", "compiled_kernels", "fire",
    "zero_membrane",
    "firing_rates", "get_kernels", "get_surrogate", "merge_time", "mlf_backward",
    "mlf_forward", "mlf_reference", "spike_count", "spiking_neurons", "split_time",
    "threshold_batchnorm", "use_kernels", "use_surrogate",
]  # fmt: skip
