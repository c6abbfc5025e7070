"""``manifest.json`` as typed models.

Format version 1 (every manifest written so far). The fields the service needs are
required (name, version, dataset, class names, input, graph files); the provenance that
export always writes (normalisation, neurons, checkpoints, training configs, metrics,
export details) is typed but optional here, and ``validate_model_dir`` reports it missing.
Unknown fields are kept (read and written back unchanged), so a newer writer's additions
survive an older reader. ``samples`` lists the demo images (``training/samples``); a
malformed sample record is left out of ``samples`` and described in ``rejected_samples``
instead of failing the whole manifest, so a tampered record can only hide itself.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .graphs import GRAPH_FILES, GRAPH_OUTPUTS, IMAGE_INPUT, ROLES

FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)
SAMPLES_DIR = "samples"
SAMPLE_ID = r"^[a-z0-9][a-z0-9-]{0,63}$"
SHA256 = r"^[0-9a-f]{64}$"


class _Model(BaseModel):
    """Frozen, keeps unknown fields, reads numbers where strings are expected."""

    model_config = ConfigDict(
        frozen=True,
        extra="allow",
        coerce_numbers_to_str=True,
        populate_by_name=True,
        protected_namespaces=(),
    )

    def to_json(self) -> dict[str, Any]:
        """The JSON document: the fields that were given (defaults left unwritten), in
        the manifest's own spelling (``bytes``), unknown fields included."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


class InputSpec(_Model):
    """Both graphs' input: ``image`` float32 NCHW pixels in [0, 1]."""

    name: str = IMAGE_INPUT
    dtype: str = "float32"
    layout: str = "NCHW"
    channels: int
    height: int = Field(gt=0)
    width: int = Field(gt=0)
    value_range: tuple[float, float] = (0.0, 1.0)

    @field_validator("channels")
    @classmethod
    def _channels(cls, value: int) -> int:
        if value not in (1, 3):
            raise ValueError(f"input channels {value}: expected 1 or 3")
        return value

    @field_validator("value_range")
    @classmethod
    def _unit_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if tuple(value) != (0.0, 1.0):
            raise ValueError(f"input value_range {list(value)} is not [0, 1]")
        return value


class Normalization(_Model):
    inside_graph: bool = True
    note: str = ""
    mean: list[float]
    std: list[float]


class NeuronSettings(_Model):
    timesteps: int
    thresholds: list[float]
    decay: float


class GraphFile(_Model):
    """One ONNX graph: its file (a plain name inside the model directory) and names."""

    path: str
    sha256: str = Field(pattern=SHA256)
    size: int = Field(alias="bytes", ge=0)
    inputs: list[str] = [IMAGE_INPUT]
    outputs: list[str]

    @field_validator("path")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not is_plain_file_name(value):
            raise ValueError(f"graph path {value!r} is not a file name in the model directory")
        return value


class GraphFiles(_Model):
    purifier: GraphFile
    classifier: GraphFile

    @model_validator(mode="after")
    def _contract_names(self) -> GraphFiles:
        for role in ROLES:
            entry = self.role(role)
            if entry.inputs != [IMAGE_INPUT] or tuple(entry.outputs) != GRAPH_OUTPUTS[role]:
                raise ValueError(
                    f"{role} graph is listed with inputs {entry.inputs} and outputs "
                    f"{entry.outputs}; the contract is {[IMAGE_INPUT]} -> "
                    f"{list(GRAPH_OUTPUTS[role])}"
                )
        return self

    def role(self, role: str) -> GraphFile:
        return {"purifier": self.purifier, "classifier": self.classifier}[role]

    def items(self) -> list[tuple[str, GraphFile]]:
        return [(role, self.role(role)) for role in ROLES]

    @classmethod
    def default_path(cls, role: str) -> str:
        return GRAPH_FILES[role]


class ModelRecord(_Model):
    """The weights a graph was exported from, and how to rebuild its model. Other fields of
    the checkpoint's metadata (kind, epoch, metrics, ...) are kept as extras.

    ``checkpoint`` is a weights-only safetensors file inside the model directory (a plain
    file name: anyone can load exactly the served model and attack it white-box);
    ``source_checkpoint`` says where it was trained. Directories exported before weights
    were bundled name the source path in ``checkpoint``; ``bundled`` tells them apart."""

    architecture: str
    model_kwargs: dict[str, Any]
    checkpoint: str
    checkpoint_sha256: str = Field(pattern=SHA256)
    checkpoint_bytes: int | None = Field(default=None, ge=0)
    source_checkpoint: str | None = None
    source_checkpoint_sha256: str | None = Field(default=None, pattern=SHA256)
    neurons: NeuronSettings | None = None

    @property
    def bundled(self) -> bool:
        return is_plain_file_name(self.checkpoint)


class ModelRecords(_Model):
    classifier: ModelRecord
    purifier: ModelRecord


class Metrics(_Model):
    """Accuracies measured through ONNX Runtime at export (fractions, not percent)."""

    eval_images: int = Field(ge=1)
    clean_accuracy: float = Field(ge=0, le=1)
    purified_clean_accuracy: float = Field(ge=0, le=1)
    robust: dict[str, Any] | None = None


class ExportInfo(_Model):
    torch: str
    exporter: str
    opset: int
    parity: dict[str, Any]


class SampleRecord(_Model):
    """One demo image: ``samples/<id>.png`` with its sha256 and how it was made."""

    id: str = Field(pattern=SAMPLE_ID)
    source: str
    file: str
    sha256: str = Field(pattern=SHA256)
    test_index: int
    label: str
    class_index: int = Field(ge=0)
    variant: str
    threat_model: str | None
    threat_model_note: str
    eps: float = Field(ge=0)
    steps: int = Field(ge=0)
    attack: dict[str, Any] | None

    @model_validator(mode="after")
    def _file_is_named_by_id(self) -> SampleRecord:
        if self.file != f"{SAMPLES_DIR}/{self.id}.png":
            raise ValueError(f"sample {self.id!r} names file {self.file!r}, not its own")
        return self


class Manifest(_Model):
    """A model directory's ``manifest.json``."""

    format_version: int
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    created: str | None = None
    dataset: str
    class_names: list[str] = Field(min_length=1)
    input: InputSpec
    normalization: Normalization | None = None
    neurons: NeuronSettings | None = None
    files: GraphFiles
    models: ModelRecords | None = None
    training: dict[str, Any] = {}
    metrics: Metrics | None = None
    export: ExportInfo | None = None
    samples: list[SampleRecord] = []
    rejected_samples: list[str] = Field(default=[], exclude=True)

    @field_validator("format_version")
    @classmethod
    def _supported(cls, value: int) -> int:
        if value not in SUPPORTED_FORMAT_VERSIONS:
            raise ValueError(
                f"format_version {value!r} is not supported (this reader knows "
                f"{list(SUPPORTED_FORMAT_VERSIONS)})"
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _set_aside_bad_samples(cls, data: Any) -> Any:
        """Keeps the well-formed sample records; describes the others."""
        if not isinstance(data, dict) or "samples" not in data:
            return data
        records = data["samples"]
        if records is None:
            records = []
        if not isinstance(records, list):
            return data  # the field's own validation reports it
        good, rejected, seen = [], [], set()
        for record in records:
            try:
                sample = SampleRecord.model_validate(record)
            except ValueError as exc:
                rejected.append(f"{_sample_name(record)}: {_first_error(exc)}")
                continue
            if sample.id in seen:
                rejected.append(f"{sample.id}: listed twice")
                continue
            seen.add(sample.id)
            good.append(sample)
        return {**data, "samples": good, "rejected_samples": rejected}

    @property
    def channels(self) -> int:
        return self.input.channels

    @property
    def height(self) -> int:
        return self.input.height

    @property
    def width(self) -> int:
        return self.input.width

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    def graph(self, role: str) -> GraphFile:
        return self.files.role(role)

    def sample(self, sample_id: str) -> SampleRecord | None:
        return next((s for s in self.samples if s.id == sample_id), None)


def _sample_name(record: Any) -> str:
    sample_id = record.get("id") if isinstance(record, dict) else None
    return repr(sample_id) if isinstance(sample_id, str) else "a sample record"


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"{where}: {first['msg']}" if where else first["msg"]
    return str(exc)


def is_plain_file_name(text: str) -> bool:
    """A file directly inside the model directory: no separators, not ``.``/``..``."""
    return bool(text) and "/" not in text and "\\" not in text and text not in (".", "..")


def is_sample_id(text: str) -> bool:
    return re.fullmatch(SAMPLE_ID, text) is not None
