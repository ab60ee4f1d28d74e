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
    go to stderr, and -q shows none, nor Hugging Face's LOAD REPORT (the tiny encoder has no
    classifier weights) nor the libraries' FutureWarnings."""
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
    assert ("LOAD REPORT" in proc.stderr) is not quiet
    if quiet:
        assert "Warning" not in proc.stderr, proc.stderr[-2000:]


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


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Shell words that end a `finlora ...` command on a line (pipes, redirections, lists).
SHELL_ENDS = {"|", "||", "&&", ";", ">", ">>", "2>", "&"}


def documented_commands() -> list[tuple[str, list[str]]]:
    """Every `finlora ...` command line in the fenced code blocks of README.md and docs/*.md
    (continuations joined, comments and shell plumbing cut); lines showing a syntax
    (`[--flag a|b]`, `<DIR>`, `...`) are not commands."""
    import glob
    import re
    import shlex

    docs = sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))
    found = []
    for path in [os.path.join(REPO, "README.md"), *docs]:
        with open(path, encoding="utf-8") as file:
            text = file.read()
        for block in re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.M | re.S):
            for line in block.replace("\\\n", " ").splitlines():
                if not re.match(r"\s*(\$ )?(\w+=\S* )*finlora ", line):
                    continue
                raw = shlex.split(line.split(" #")[0], posix=False)  # quotes kept: '|' stays
                end = next((i for i, w in enumerate(raw) if w in SHELL_ENDS), len(raw))
                words = shlex.split(" ".join(raw[:end]))
                while words and re.fullmatch(r"\$|\w+=\S*", words[0]):  # prompt, VAR=value
                    words = words[1:]
                if words[:1] != ["finlora"] or any(w in ("...", "…") for w in words):
                    continue
                if re.search(r"\[--|<[A-Z_a-z]+>", line):
                    continue
                found.append((f"{os.path.basename(path)}: {line.strip()[:60]}", words[1:]))
    return found


def test_readme_and_docs_show_commands():
    assert any(argv[:1] == ["train"] for _, argv in documented_commands())


@pytest.mark.parametrize(
    "argv", [argv for _, argv in documented_commands()], ids=[i for i, _ in documented_commands()]
)
def test_every_documented_command_line_parses(argv, monkeypatch):
    """Parsed and turned into the command's settings (recipes read), not run."""
    from finlora.cli import _flags, build_parser, settings_of

    monkeypatch.chdir(REPO)
    args, unknown = build_parser().parse_known_args(argv)
    assert unknown == [], f"unknown flags {unknown}"
    if argv[:2] == ["sagemaker", "launch"]:  # the train flags after `--` parse too
        flags = args.train_flags[1:] if args.train_flags[:1] == ["--"] else args.train_flags
        build_parser().parse_args(["train", *flags])
    if "--help" not in argv and "--version" not in argv:
        assert settings_of(args._settings, args) is not None
        assert "config" not in _flags(args) or args._settings.name != "train"


def test_every_subcommand_parser_is_generated_with_its_flags():
    from finlora.cli import build_parser, commands, subcommand_parsers

    parsers = subcommand_parsers(build_parser())
    assert set(parsers) == {command.name for command in commands()}
    help_text = parsers["train"].format_help()
    for title in ("data and split:", "LoRA adapter:", "training loop:", "cloud: S3:"):
        assert title in help_text
    assert "--model MODEL" in parsers["serve"].format_help()


def test_serve_flags_come_from_serve_settings_flag_over_env_over_default(monkeypatch, tmp_path):
    from finlora.cli import build_parser, settings_of
    from finlora.serve.settings import ServeSettings, load_settings

    monkeypatch.setenv("FINLORA_PORT", "7000")
    monkeypatch.setenv("FINLORA_HOST", "0.0.0.0")
    args = build_parser().parse_args(["serve", "--model", str(tmp_path), "--port", "9000"])
    settings = load_settings(settings_of(args._settings, args))
    assert (settings.port, settings.host, settings.model_dir) == (9000, "0.0.0.0", tmp_path)
    assert settings.max_batch == ServeSettings.model_fields["max_batch"].default
