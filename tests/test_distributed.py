"""Real 2-process data-parallel runs: `torchrun --nproc_per_node 2` (gloo, CPU) on a tiny BERT
and real PhraseBank lines, as a user would launch it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from test_training import EXPECTED_LORA_FILES, files

from finlora.cli import main
from finlora.config import TrainConfig
from finlora.data import prepare_data
from finlora.evaluation import classification_report
from finlora.predictor import Predictor

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"


pytestmark = pytest.mark.slow  # every test launches torchrun: 3 processes importing torch

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def run(command: list[str], **env) -> subprocess.CompletedProcess:
    """Run with this checkout's finlora on the path and one thread per process."""
    environ = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        **env,
    }
    return subprocess.run(command, env=environ, capture_output=True, text=True, timeout=600)


def torchrun(
    entry: list[str], model, data, out: Path, *extra: str, **env
) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node 2 <entry> train ...` on the tiny model."""
    command = [
        *TORCHRUN,
        *entry,
        "train",
        "--data", str(data),
        "--model_name", str(model),
        "--epochs", "3",
        "--batch_size", "16",
        "--learning_rate", "0.05",
        "--loraplus_lr_ratio", "1",  # the LoRA+ optimizer, at plain LoRA's rates for this model
        "--max_length", "48",
        "--bf16", "false",  # fp32: the Trainer's evaluation is compared with fp32 inference
        "--group_by_length", "false",
        "--lora_target_modules", "query,value",
        "--lora_r", "8",
        "--lora_alpha", "16",  # with faster rates, larger adapters collapse the tiny model
        "--output_dir", str(out),
        *extra,
    ]  # fmt: skip
    return run(command, **env)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, tiny_model_dir, phrasebank_slice):
    parent = tmp_path_factory.mktemp("ddp")
    done = torchrun(["-m", "finlora"], tiny_model_dir, phrasebank_slice, parent / "out")
    assert done.returncode == 0, done.stderr[-4000:]
    return parent / "out", done


def test_rank_zero_writes_the_artifacts_once(ddp_run):
    out, done = ddp_run
    assert files(out) == EXPECTED_LORA_FILES
    assert [p.name for p in out.parent.iterdir()] == ["out"], "staging or stray files left"
    assert (done.stdout + done.stderr).count("artifacts written to") == 1
    summaries = [line for line in done.stdout.splitlines() if line.startswith('{"output_dir"')]
    assert len(summaries) == 1


def test_results_record_world_size_and_batch_sizes(ddp_run):
    results = json.loads((ddp_run[0] / "final_results.json").read_text())
    assert results["distributed"] == {
        "world_size": 2,
        "backend": "gloo",
        "per_device_batch_size": 16,
        "gradient_accumulation_steps": 1,
        "global_batch_size": 32,
    }
    args = json.loads((ddp_run[0] / "training_args.json").read_text())
    assert args["ddp_backend"] == "gloo" and args["per_device_train_batch_size"] == 16


def test_metrics_equal_a_single_process_evaluation(ddp_run, phrasebank_slice, tmp_path):
    out, _ = ddp_run
    results = json.loads((out / "final_results.json").read_text())
    data = prepare_data(TrainConfig(data=str(phrasebank_slice)))
    assert results["data"]["sizes"] == {"train": 239, "validation": 30, "test": 30}

    test_file = tmp_path / "test.csv"
    pd.DataFrame(data.test).to_csv(test_file, index=False)
    assert main(["-q", "evaluate", "--model", str(out), "--data", str(test_file),
                 "--output", str(tmp_path / "m.json")]) == 0  # fmt: skip
    evaluated = json.loads((tmp_path / "m.json").read_text())
    assert evaluated["size"] == results["test"]["size"] == 30
    assert evaluated["confusion_matrix"] == results["test"]["confusion_matrix"]
    assert evaluated["macro_f1"] == pytest.approx(results["test"]["macro_f1"])

    # The Trainer's per-epoch validation (sharded over 2 ranks, then gathered) must be the
    # score of the whole validation set, not of one rank's half.
    predicted = Predictor.load(out).predict_ids(data.validation["text"])
    validation = classification_report(data.label_ids("validation"), predicted, data.labels)
    best = next(row for row in results["history"] if row["epoch"] == results["best_epoch"])
    assert best["macro_f1"] == pytest.approx(validation["macro_f1"])
    assert best["accuracy"] == pytest.approx(validation["accuracy"])
    assert len(set(predicted)) > 1, "model too degenerate for this comparison to mean much"


def test_refit_runs_on_every_rank_with_the_same_epoch_count(
    ddp_run, tiny_model_dir, phrasebank_slice, tmp_path
):
    """Every rank must agree on the refit's length, or the job hangs in a collective."""
    out = tmp_path / "refit"
    done = torchrun(["-m", "finlora"], tiny_model_dir, phrasebank_slice, out, "--refit")
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads((out / "final_results.json").read_text())
    selected = json.loads((ddp_run[0] / "final_results.json").read_text())
    assert results["refit"]["epochs"] == results["best_epoch"] == selected["best_epoch"]
    assert results["refit"]["train_rows"] == 239 + 30
    assert (done.stdout + done.stderr).count("artifacts written to") == 1


@pytest.mark.parametrize(
    ("fault_rank", "fault", "shown"),
    [
        ("1", "raise", "RuntimeError: injected failure on rank 1"),
        ("0", "kill", "Signal 9 (SIGKILL) received"),
    ],
)
def test_a_failing_rank_fails_the_job_and_leaves_no_output(
    tmp_path, tiny_model_dir, phrasebank_slice, fault_rank, fault, shown
):
    out = tmp_path / "parent" / "out"
    entry = [str(TESTS / "ddp_fault_entry.py")]
    env = {"FAULT_RANK": fault_rank, "FAULT": fault}
    done = torchrun(entry, tiny_model_dir, phrasebank_slice, out, **env)
    assert done.returncode != 0
    assert shown in done.stderr
    assert not out.exists()
    assert list(out.parent.iterdir()) == [], "a staging dir was left behind"


SAME_DATA_CHECK = """
import os
import pandas as pd
import torch.distributed as dist
from finlora.data import PreparedData
from finlora.distributed import check_same_data_on_all_ranks
from finlora.errors import FinloraError

dist.init_process_group("gloo")
rank = int(os.environ["RANK"])
frame = pd.DataFrame({"text": ["a", "b", "c"], "label": ["x", "y", "x"]})
check_same_data_on_all_ranks(PreparedData(frame, frame, frame, ["x", "y"], False), [1.0, 2.0])
print(f"rank {rank}: same data accepted", flush=True)
other = PreparedData(frame, frame, frame.iloc[rank:], ["x", "y"], False)
try:
    check_same_data_on_all_ranks(other, [1.0, 2.0])
except FinloraError as exc:
    print(f"rank {rank}: {exc}", flush=True)
dist.destroy_process_group()
"""


def test_ranks_with_different_splits_are_refused():
    """The check `train` runs before training, over a real gloo group of 2 processes."""
    done = run([*TORCHRUN, "--no-python", sys.executable, "-c", SAME_DATA_CHECK])
    shown = f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-3000:]}"
    assert done.returncode == 0, shown
    for rank in (0, 1):
        assert f"rank {rank}: same data accepted" in done.stdout, shown
        assert f"rank {rank}: rank(s) [1] prepared different data splits" in done.stdout, shown
