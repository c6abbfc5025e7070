"""The model-directory contract: what ``python -m training export`` writes and the service
reads. Torch-free (pydantic and the standard library only), so both halves import it.

* ``graphs``: the two ONNX graphs' file names and input/output names.
* ``manifest``: ``manifest.json`` as typed models, with its format version.
* ``directory``: reading, writing and checking a model directory (file hashes, samples).
"""

from .directory import (
    MANIFEST,
    load_manifest,
    make_shareable,
    read_manifest_text,
    validate_model_dir,
    verify_graph_files,
    verify_sample_files,
    verify_weight_files,
    write_manifest,
)
from .errors import ContractError
from .graphs import (
    CLASSIFIER_OUTPUTS,
    GRAPH_FILES,
    GRAPH_OUTPUTS,
    IMAGE_INPUT,
    PURIFIER_OUTPUTS,
    ROLES,
    WEIGHT_FILES,
    check_graph_io,
)
from .hashing import sha256_bytes, sha256_file
from .manifest import (
    FORMAT_VERSION,
    SAMPLE_ID,
    SAMPLES_DIR,
    SUPPORTED_FORMAT_VERSIONS,
    ExportInfo,
    GraphFile,
    GraphFiles,
    InputSpec,
    Manifest,
    Metrics,
    ModelRecord,
    ModelRecords,
    NeuronSettings,
    Normalization,
    SampleRecord,
    is_plain_file_name,
)

__all__ = [
    "CLASSIFIER_OUTPUTS",
    "FORMAT_VERSION",
    "GRAPH_FILES",
    "GRAPH_OUTPUTS",
    "IMAGE_INPUT",
    "MANIFEST",
    "PURIFIER_OUTPUTS",
    "ROLES",
    "WEIGHT_FILES",
    "SAMPLES_DIR",
    "SAMPLE_ID",
    "SUPPORTED_FORMAT_VERSIONS",
    "ContractError",
    "ExportInfo",
    "GraphFile",
    "GraphFiles",
    "InputSpec",
    "Manifest",
    "Metrics",
    "ModelRecord",
    "ModelRecords",
    "NeuronSettings",
    "Normalization",
    "SampleRecord",
    "check_graph_io",
    "is_plain_file_name",
    "load_manifest",
    "make_shareable",
    "read_manifest_text",
    "sha256_bytes",
    "sha256_file",
    "validate_model_dir",
    "verify_graph_files",
    "verify_sample_files",
    "verify_weight_files",
    "write_manifest",
]
