"""Spot-safe training: kill a real `finlora train` mid-run, rerun, get the same result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from processes import stop_once_training
from servers import FAKE_AWS, S3_BACKENDS, s3_server

from finlora.checkpoints import CHECKPOINT_COMPLETE, resume_point, run_fingerprint
from finlora.cli import main
from finlora.cloud import s3
from finlora.config import TrainConfig
from finlora.data import prepare_data
from finlora.errors import FinloraError

ARGS = ["--epochs", "3", "--max_length", "32", "--batch_size", "32", "--learning_rate", "0.001",
        "--no_lora", "--seed", "7"]  # fmt: skip


def train_command(data: Path, model: Path, output: str, checkpoints: str | None) -> list[str]:
    command = [sys.executable, "-m", "finlora", "train", "--data", str(data),
               "--model_name", str(model), "--output_dir", output, *ARGS]  # fmt: skip
    return command + (["--checkpoint_dir", checkpoints] if checkpoints else [])


def outcome(results: dict) -> dict:
    """What must not depend on the interruption: per-epoch losses/metrics and test scores."""
    return {"history": results["history"], "test": results["test"], "best": results["best_epoch"]}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir, phrasebank_slice) -> dict:
    """The outcome of the run below without a kill, in this process (same code path)."""
    reference = tmp_path_factory.mktemp("reference") / "run"
    command = train_command(phrasebank_slice, tiny_model_dir, str(reference), None)
    assert main(command[3:]) == 0
    return outcome(json.loads((reference / "final_results.json").read_text()))


@pytest.mark.slow  # two real `finlora train` processes and an S3 server
@pytest.mark.parametrize("backend", S3_BACKENDS)
def test_killed_run_resumes_to_the_same_result(
    backend, uninterrupted, tiny_model_dir, phrasebank_slice, tmp_path, monkeypatch
):
    """Checkpoints on S3 (moto, SeaweedFS): kill once epoch 1 is saved, rerun, compare with
    the uninterrupted run."""
    expected = uninterrupted
    with s3_server(backend, tmp_path) as endpoint:
        for key, value in {**FAKE_AWS, "AWS_ENDPOINT_URL": endpoint}.items():
            monkeypatch.setenv(key, value)
        env = {**os.environ}
        s3.client().create_bucket(Bucket="ckpts")
        # A half-written checkpoint (no _SUCCESS) left by some earlier crash: never used.
        s3.client().put_object(Bucket="ckpts", Key="run/checkpoint-999/optimizer.pt", Body=b"x")
        out, ck = str(tmp_path / "resumed"), "s3://ckpts/run"
        command = train_command(phrasebank_slice, tiny_model_dir, out, ck)
        process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 600
        while "run/checkpoint-8/_SUCCESS" not in {k for k, _ in objects("ckpts", "run/")}:
            assert process.poll() is None, process.stderr.read()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.2)
        process.send_signal(signal.SIGKILL)  # a spot interruption, without warning
        process.wait()
        assert not Path(out).exists()

        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "resuming from" in done.stderr
        results = json.loads((Path(out) / "final_results.json").read_text())
        assert outcome(results) == expected
        remote = {k.split("/")[1] for k, _ in objects("ckpts", "run/")}
        assert "checkpoint-24" in remote and "checkpoint-999" not in remote

        # Rerunning a finished run resumes at its end: nothing to train, same result.
        assert main(command[3:]) == 0
        assert outcome(json.loads((Path(out) / "final_results.json").read_text())) == expected


def objects(bucket: str, prefix: str) -> list[tuple[str, int]]:
    return s3.list_objects(s3.client(), bucket, prefix)


def test_half_written_checkpoints_are_removed_and_other_runs_refused(tiny_model_dir, tmp_path):
    data_file = tmp_path / "d.csv"
    data_file.write_text("text,label\n" + "".join(f"t{i},{'ab'[i % 2]}\n" for i in range(40)))
    config = TrainConfig(data=str(data_file), model_name=str(tiny_model_dir))
    fingerprint = run_fingerprint(config, prepare_data(config))
    folder = tmp_path / "ck"
    for step, complete in ((5, True), (10, True), (15, False)):
        (folder / f"checkpoint-{step}").mkdir(parents=True)
        (folder / f"checkpoint-{step}" / "trainer_state.json").write_text(
            json.dumps({"best_model_checkpoint": f"/elsewhere/checkpoint-{step}"})
        )
        if complete:
            (folder / f"checkpoint-{step}" / CHECKPOINT_COMPLETE).write_text("")
    latest = resume_point(folder, fingerprint)
    assert latest == folder / "checkpoint-10"
    assert not (folder / "checkpoint-15").exists()
    state = json.loads((latest / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"] == str(folder / "checkpoint-10")

    other = run_fingerprint(
        TrainConfig(data=str(data_file), model_name=str(tiny_model_dir), seed=1),
        prepare_data(config),
    )
    with pytest.raises(FinloraError, match="different run"):
        resume_point(folder, other)


@pytest.mark.slow  # a real `finlora train` process
def test_sigterm_leaves_no_temporary_files_and_no_output(
    tiny_model_dir, phrasebank_slice, tmp_path
):
    """A scheduler's SIGTERM mid-run: exit 143 with one line, temp dirs removed, no output."""
    scratch = tmp_path / "tmp"  # the run's TMPDIR, where its temporary checkpoints go
    scratch.mkdir()
    out = tmp_path / "parent" / "out"
    command = train_command(phrasebank_slice, tiny_model_dir, str(out), None)
    log = tmp_path / "train.log"
    assert stop_once_training(command, scratch, log) == 143, log.read_text()[-3000:]
    text = log.read_text()  # progress bars may follow the line; a traceback may not
    assert "finlora: terminated (SIGTERM); no half-written output was left" in text
    assert "Traceback" not in text
    assert list(scratch.glob("finlora-*")) == []
    assert not out.exists()
    assert not out.parent.exists() or list(out.parent.iterdir()) == []
