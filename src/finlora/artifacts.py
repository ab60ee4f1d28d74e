"""The output directory: its file names, atomic writing, and checks when reading it back.

Layout of a finished run (no pickles anywhere)::

    config.json, model.safetensors        merged model, loadable with plain transformers
    mean_pooling.py                       --pooling mean only: the head's class (auto_map), so
                                          plain transformers loads it with trust_remote_code
    tokenizer.json, tokenizer_config.json tokenizer files
    adapter/adapter_config.json,
    adapter/adapter_model.safetensors     LoRA adapter (LoRA runs only; in a subfolder because
                                          transformers would otherwise stack it on the merged
                                          weights when loading this directory)
    training_args.json                    the Hugging Face TrainingArguments, as JSON
    finlora_config.yaml                   the resolved finlora settings of this run
    final_results.json                    test/validation metrics, data report, run facts
                                          (typed in finlora.results, JSON Schema in
                                          finlora/schemas/final_results.schema.json)
    thresholds.json                       multi-label only: per-label decision thresholds
    calibration.json                      temperature / per-label Platt scaling and the
                                          conformal scores, fitted on validation
                                          (finlora.calibration; absent with --calibrate
                                          false, --refit, or from older versions)
    README.md                             a model card with the headline numbers
    onnx/                                 ONNX export (`finlora export`), optional
"""

from __future__ import annotations

import contextlib
import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from finlora.errors import FinloraError

ADAPTER_DIR = "adapter"
RESOLVED_CONFIG = "finlora_config.yaml"
RESULTS = "final_results.json"
TRAINING_ARGS = "training_args.json"
THRESHOLDS = "thresholds.json"
MODEL_CARD = "README.md"
RELIABILITY_PNG = "reliability.png"  # the model card's reliability diagram (matplotlib)

# `finlora export` writes <model dir>/onnx/ (see finlora.export.onnx for its layout).
ONNX_DIR = "onnx"
EXPORT_INFO = "export.json"
ONNX_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
# How a saved model can be run (finlora.predictor): "auto" takes the ONNX export if present.
BACKENDS = ("auto", "onnx", "torch")
PRECISIONS = ("auto", "fp32", "int8")


@contextlib.contextmanager
def atomic_output_dir(target: str | Path) -> Iterator[Path]:
    """Yield a staging directory that becomes `target` only if the block succeeds.

    The staging directory sits next to the target (same file system, so the final rename is
    atomic); on failure it is removed and any previous `target` is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # A plain mkdir, not mkdtemp (always 0700): the output gets the mode the umask gives any
    # new directory, so other users and serving containers can read the model.
    staging = sibling_name(target, "tmp")
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    previous = None
    if target.exists():
        previous = sibling_name(target, "old")
        target.rename(previous)
    staging.rename(target)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


def sibling_name(target: Path, tag: str) -> Path:
    """A fresh hidden name next to `target` (same file system, so renames are atomic)."""
    return target.parent / f".{target.name}.{tag}-{uuid.uuid4().hex[:12]}"


def partial_file(path: Path) -> Path:
    """Where an output file is written before its rename onto `path.resolve()`: beside the
    real file, so a symlink keeps pointing at it. A stream (/dev/stdout, a FIFO) has nothing
    to rename over and is written directly."""
    if is_stream(path):
        return path
    return sibling_name(path.resolve(), "tmp")


def is_stream(path: Path) -> bool:
    """/dev/stdout and the like (even when the shell redirects them into a file), FIFOs."""
    if str(path).startswith(("/dev/", "/proc/self/fd/")):
        return True
    return path.exists() and not path.is_file() and not path.is_dir()


def write_json(path: str | Path, payload: Any) -> None:
    """Write through a temporary file renamed into place: never a half-written JSON."""
    write_text(path, json.dumps(payload, indent=2, default=str) + "\n")


def write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 text through a temporary file renamed into place (streams and FIFOs such
    as /dev/stdout are written directly)."""
    path = Path(path)
    partial = partial_file(path)
    if partial == path:
        path.write_text(text, encoding="utf-8")
        return
    try:
        partial.write_text(text, encoding="utf-8")
        partial.replace(path.resolve())
    finally:
        partial.unlink(missing_ok=True)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def check_output_file(path: str | Path, flag: str = "--output") -> None:
    """Create an output file's folder now, before the work that fills it, or say why not."""
    path = Path(path)
    if path.is_dir():
        raise FinloraError(f"{flag} {path} is a directory; give a file name")
    if is_stream(path):
        return
    path = path.resolve()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FinloraError(
            f"{flag} {path}: cannot create its folder {path.parent} ({exc.strerror})"
        ) from exc
    probe = sibling_name(path, "probe")  # a real write: access checks pass for root anywhere
    try:
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise FinloraError(
            f"{flag} {path}: cannot write in {path.parent} ({exc.strerror})"
        ) from exc


def require_model_dir(path: str | Path) -> Path:
    """A directory holding a saved (merged) model, or a one-line error saying what it lacks."""
    path = Path(path)
    if not path.is_dir():
        raise FinloraError(f"model directory {path} does not exist; pass a `finlora train` output")
    if not (path / "config.json").is_file():
        raise FinloraError(
            f"{path} holds no config.json; pass the --output_dir of a `finlora train` run"
        )
    if not any(path.glob("*.safetensors")):
        raise FinloraError(f"{path} holds no model weights (*.safetensors)")
    return path


def check_output_dir(target: str | Path) -> None:
    """Before a long training: `target` is no file, and its parent takes a new directory.

    An existing directory is a rerun and gets replaced; an existing file is refused rather
    than hidden. The probe makes and removes a real directory where the staging one will go,
    as a permission check alone passes for root on read-only or virtual file systems (/proc).
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise FinloraError(
            f"--output_dir {target} is an existing file, not a directory; choose another "
            "--output_dir"
        )
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = sibling_name(target, "probe")
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        raise FinloraError(
            f"cannot create --output_dir {target} in {parent} ({exc.strerror}); choose another "
            "--output_dir"
        ) from exc
