"""The command line as a user meets it: exit codes and one-line errors, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from processes import sigint_as_in_a_terminal

from finlora.cli import main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--data", "missing.csv"], "does not exist"),
        (["train", "--epochs", "x"], "cannot read 'x' as float"),
        (
            ["train", "--no_such_flag", "1"],
            "finlora: error: unrecognized argument(s) --no_such_flag 1 "
            "(see `finlora train --help`)",
        ),
        (["predict", "--model", "m", "--batch_size", "0", "t"], "--batch_size: must be at least 1"),
        (["predict", "--model", "m", "--threads", "-2", "t"], "--threads: must be at least 1"),
        (["predict", "--model", "m", "--output", "o.csv", "t"], "--output goes with --input"),
        (["export", "--model", ".", "--opset", "3"], "--opset 3 cannot be exported; use 14-20"),
        (["compare", "--bootstrap", "0"], "--bootstrap must be at least 100"),
        (["train", "--config", "nope.yaml"], "config file nope.yaml does not exist"),
        (["train", "--dataset", "imdb"], "unknown dataset"),
        (["predict", "--model", "nowhere", "text"], "does not exist"),
        (["predict", "--model", "."], "give texts to classify or --input"),
        (["evaluate", "--model", "nowhere"], "required: --data"),
    ],
)
def test_usage_and_data_errors_exit_2_with_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_quiet_is_accepted_after_the_command_too(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["predict", "-q", "--model", "nowhere", "text"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_bad_csv_column_names_existing_columns(tmp_path, capsys):
    path = tmp_path / "d.csv"
    path.write_text("sentence,y\na,b\n")
    assert main(["train", "--data", str(path)]) == 2
    assert "columns are 'sentence', 'y'" in capsys.readouterr().err


def test_max_length_beyond_the_encoder_is_refused(tmp_path, capsys, tiny_model_dir,
                                                  phrasebank_slice):  # fmt: skip
    out = tmp_path / "o"
    argv = ["train", "--data", str(phrasebank_slice), "--model_name", str(tiny_model_dir),
            "--max_length", "1024", "--output_dir", str(out)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "--max_length 1024 is longer than" in err and "(512 tokens)" in err
    assert not out.exists()


def test_an_existing_file_at_output_dir_is_refused_before_training(
    tmp_path, capsys, tiny_model_dir, phrasebank_slice
):
    afile = tmp_path / "afile"
    afile.write_text("important\n")
    argv = ["train", "--data", str(phrasebank_slice), "--model_name", str(tiny_model_dir),
            "--output_dir", str(afile)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"finlora: error: --output_dir {afile} is an existing file, not a directory; "
        "choose another --output_dir"
    )
    assert afile.read_text() == "important\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux's /proc")
def test_an_output_dir_where_no_directory_can_be_made_fails_before_training(
    capsys, tiny_model_dir, phrasebank_slice
):
    """/proc passes a permission check for root, but takes no new directory."""
    argv = ["train", "--data", str(phrasebank_slice), "--model_name", str(tiny_model_dir),
            "--output_dir", "/proc/finlora_out"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("finlora: error: cannot create --output_dir /proc/finlora_out in /proc")
    assert err.endswith("; choose another --output_dir") and len(err.splitlines()) == 1


@pytest.mark.slow  # a real `finlora train` process per case
@pytest.mark.parametrize("quiet", [True, False])
def test_train_stdout_is_only_its_json_summary(quiet, tmp_path, tiny_model_dir, phrasebank_slice):
    """`finlora train ... | jq` works: the Trainer's log dicts stay off stdout; progress bars
    go to stderr, and -q shows none."""
    out = tmp_path / "o"
    proc = subprocess.run(
        [sys.executable, "-m", "finlora", *(["-q"] if quiet else []), "train",
         "--data", str(phrasebank_slice), "--model_name", str(tiny_model_dir), "--epochs", "1",
         "--batch_size", "32", "--max_length", "32", "--output_dir", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["output_dir"] == str(out)
    assert ("100%|" in proc.stderr) is not quiet  # tqdm bars


@pytest.mark.slow  # a real `python train.py` process
def test_seed_entry_point_parses_seed_flags_and_fails_cleanly_offline(tmp_path, data_dir):
    """`python train.py --model_name ProsusAI/finbert --use_lora --batch_size 16 --fp16`."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FINLORA_DATA_DIR": str(data_dir),
           "HF_HOME": str(tmp_path / "hf")}  # fmt: skip
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, os.path.join(repo, "train.py"), "--model_name", "ProsusAI/finbert",
         "--use_lora", "--batch_size", "16", "--fp16", "--output_dir", str(tmp_path / "o")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("finlora: error: cannot load model 'ProsusAI/finbert'")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


HALF_BUILT_WHEN_STOPPED = """
import os, signal, sys, time
import finlora.cli as cli

class ProgressBar:  # like tqdm: __del__ assumes __init__ got to the end
    def __init__(self):
        os.kill(os.getpid(), signal.{signal})
        time.sleep(10)
        self.position = 0

    def __del__(self):
        abs(self.position)

def train(args):
    ProgressBar()

cli.cmd_train = train
sys.exit(cli.main(["train"]))
"""


@pytest.mark.parametrize(
    ("signal_name", "code", "line"),
    [
        ("SIGTERM", 143, "finlora: terminated (SIGTERM); no half-written output was left"),
        ("SIGINT", 130, "finlora: interrupted; no half-written output was left"),
    ],
)
def test_a_stop_inside_a_constructor_still_ends_with_one_line(signal_name, code, line):
    """The object a stop leaves half-built fails in __del__ later; Python would print that as
    'Exception ignored ... Traceback' after finlora's own line (seen with tqdm's bars)."""
    script = HALF_BUILT_WHEN_STOPPED.replace("{signal}", signal_name)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          preexec_fn=sigint_as_in_a_terminal)  # fmt: skip
    assert (proc.returncode, proc.stderr.strip()) == (code, line)
