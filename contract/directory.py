"""Reading, writing and checking a model directory:

    <model_dir>/manifest.json       the ``Manifest``
    <model_dir>/purifier.onnx       the graphs it lists, with their sha256
    <model_dir>/classifier.onnx
    <model_dir>/samples/<id>.png    the demo images it lists, with their sha256 (optional)
    <model_dir>/classifier.safetensors, purifier.safetensors
                                    the weights the graphs were exported from

Every failure is a ``ContractError`` whose message names the file and the problem.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from pydantic import ValidationError

from .errors import ContractError
from .hashing import sha256_file
from .manifest import SAMPLES_DIR, SUPPORTED_FORMAT_VERSIONS, Manifest

MANIFEST = "manifest.json"
# provenance export always writes; the service can run without it, validate-model cannot
PROVENANCE = ("normalization", "neurons", "models", "metrics", "export")


def read_manifest_text(text: str, source: str = MANIFEST) -> Manifest:
    """Parses and validates a manifest's JSON text; ``source`` names it in errors."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ContractError(f"unreadable manifest {source}: {exc}") from None
    if not isinstance(raw, dict):
        raise ContractError(f"invalid manifest {source}: not a JSON object")
    version = raw.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise ContractError(
            f"manifest format_version {version!r} is not supported "
            f"(this reader knows {list(SUPPORTED_FORMAT_VERSIONS)})"
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        raise ContractError(f"invalid manifest {source}: {describe(exc)}") from None


def describe(exc: ValidationError) -> str:
    """Each problem as ``field.path: message``, the way a person would fix it."""
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(p) for p in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def load_manifest(model_dir: str | os.PathLike) -> Manifest:
    path = Path(model_dir) / MANIFEST
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ContractError(f"no manifest: {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ContractError(f"unreadable manifest {path}: {exc}") from None
    return read_manifest_text(text, str(path))


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_shareable(path: str | os.PathLike) -> None:
    """Gives ``path`` (and, for a directory, everything under it) the permissions a plain
    ``open`` / ``mkdir`` would have, whatever a temporary-file helper gave it (``mkstemp``,
    ``mkdtemp`` and safetensors create owner-only files): a model directory written by one
    user must stay readable by the service running as another."""
    mask = current_umask()
    path = Path(path)
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for item in paths:
        if not item.is_symlink():
            os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~mask)


def write_manifest(model_dir: str | os.PathLike, manifest: Manifest) -> Path:
    """Writes ``manifest.json`` atomically (a reader sees the old file or the new one)."""
    model_dir = Path(model_dir)
    path = model_dir / MANIFEST
    fd, staged = tempfile.mkstemp(dir=model_dir, prefix=".manifest-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(manifest.to_json(), indent=2) + "\n")
        make_shareable(staged)
        os.replace(staged, path)
    finally:
        if os.path.exists(staged):
            os.unlink(staged)
    return path


def verify_graph_files(model_dir: str | os.PathLike, manifest: Manifest) -> None:
    """Every graph the manifest lists exists and has the sha256 it records."""
    for role, entry in manifest.files.items():
        path = Path(model_dir) / entry.path
        if not path.is_file():
            raise ContractError(f"{role} graph {path} is missing")
        actual = sha256_file(path)
        if actual != entry.sha256:
            raise ContractError(
                f"{role} graph {path} is corrupt: sha256 {actual[:16]}... does not match "
                f"the manifest's {entry.sha256[:16]}..."
            )


def verify_sample_files(model_dir: str | os.PathLike, manifest: Manifest) -> list[str]:
    """Problems with the listed samples' files (missing, or another sha256)."""
    problems = []
    for sample in manifest.samples:
        path = Path(model_dir) / SAMPLES_DIR / f"{sample.id}.png"
        if not path.is_file():
            problems.append(f"sample {sample.id}: {path} is missing")
        elif sha256_file(path) != sample.sha256:
            problems.append(f"sample {sample.id}: {path} does not match its sha256")
    return problems


def validate_model_dir(model_dir: str | os.PathLike) -> tuple[Manifest | None, list[str]]:
    """Everything the contract says about a directory, short of running the graphs: the
    manifest (with the provenance export writes), every graph's and sample's sha256.
    Returns the manifest (None when it cannot be read) and the problems found."""
    try:
        manifest = load_manifest(model_dir)
    except ContractError as exc:
        return None, [str(exc)]
    missing = [name for name in PROVENANCE if getattr(manifest, name) is None]
    problems = [f"manifest has no {name!r} section" for name in missing]
    try:
        verify_graph_files(model_dir, manifest)
    except ContractError as exc:
        problems.append(str(exc))
    problems += [f"sample record ignored: {reason}" for reason in manifest.rejected_samples]
    problems += verify_sample_files(model_dir, manifest)
    problems += verify_weight_files(model_dir, manifest)
    return manifest, problems


def verify_weight_files(model_dir: str | os.PathLike, manifest: Manifest) -> list[str]:
    """Problems with the bundled weights (``models.<role>.checkpoint``): a file outside the
    directory, missing, or with another sha256."""
    if manifest.models is None:
        return []
    problems = []
    for role in ("classifier", "purifier"):
        record = getattr(manifest.models, role)
        if not record.bundled:
            problems.append(
                f"{role} weights are not in the directory (checkpoint names {record.checkpoint!r}"
                "): the served model cannot be rebuilt from it"
            )
            continue
        path = Path(model_dir) / record.checkpoint
        if not path.is_file():
            problems.append(f"{role} weights {path} are missing")
        elif sha256_file(path) != record.checkpoint_sha256:
            problems.append(f"{role} weights {path} do not match their sha256")
    return problems
