"""`finlora compare` and `finlora profile` on a tiny in-process BERT and real PhraseBank lines."""

from __future__ import annotations

import json
import shutil
import signal
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from processes import processes_with, stop_once_training

import finlora.compare
from finlora.artifacts import read_json
from finlora.baseline import BaselineModel, train_baseline
from finlora.cli import main
from finlora.compare import bootstrap_macro_f1_ci, compare, plan_units
from finlora.config import CompareConfig, ProfileConfig, TrainConfig
from finlora.data import prepare_data, prepare_folds
from finlora.errors import FinloraError
from finlora.evaluation import classification_report
from finlora.results import load_results, validate_results

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY_TRAINING = ["epochs=1", "batch_size=32", "max_length=48", "bf16=false"]


@pytest.fixture(scope="module", autouse=True)
def one_thread_per_run():
    """Each run is a spawned process; one torch thread each keeps tiny runs fast on busy cores."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        yield


class InProcess:
    """Stands in for compare's spawned child and runs it here, in this process, with the same
    entry function, arguments and exit-code contract. A fresh interpreter per run spends most
    of a tiny run importing torch; what these tests check is what compare computes from the
    runs. The real spawn runs in the `single` fixture (its LoRA run) and the stop tests."""

    def __init__(self, target, args=(), name=None):
        self.target, self.args, self.name = target, args, name
        self.pid = self.exitcode = None

    def start(self):
        try:
            self.target(*self.args)
            self.exitcode = 0
        except SystemExit as exc:
            self.exitcode = exc.code if isinstance(exc.code, int) else 1

    def join(self, timeout=None):
        pass


def in_process_but(spawned: str | None, patch: pytest.MonkeyPatch) -> None:
    """compare's units run in this process, except those of strategy `spawned`."""
    real = finlora.compare.multiprocessing.get_context("spawn")

    def process(target, args, name):
        if args[1].strategy == spawned:
            return real.Process(target=target, args=args, name=name)
        return InProcess(target, args, name)

    context = SimpleNamespace(get_context=lambda method: SimpleNamespace(Process=process))
    patch.setattr(finlora.compare, "multiprocessing", context)


@pytest.fixture
def runs_in_process(monkeypatch):
    in_process_but(None, monkeypatch)


def settings(data, model, out, **changes) -> CompareConfig:
    values = dict(
        data=str(data),
        model_name=str(model),
        train_overrides=TINY_TRAINING,
        output_dir=str(out),
        bootstrap=200,
    )
    return CompareConfig(**{**values, **changes})


def results(out, name):
    return read_json(out / "runs" / name / "final_results.json")


def assert_png(path):
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200


@pytest.fixture(scope="module")
def single(tmp_path_factory, tiny_model_dir, phrasebank_slice):
    out = tmp_path_factory.mktemp("compare") / "single"
    config = settings(phrasebank_slice, tiny_model_dir, out)
    with pytest.MonkeyPatch.context() as patch:
        in_process_but("lora", patch)  # one real spawned child, the rest here
        report = compare(config)
    return config, report, out


@pytest.mark.slow  # the single-split comparison: three runs, one in a spawned child
def test_every_strategy_trains_on_the_same_split(single):
    _, _, out = single
    runs = {s: results(out, f"{s}-seed42") for s in ("full", "lora", "baseline")}
    for run in runs.values():
        validate_results(run)  # transformer and baseline variants of the schema
    fingerprints = {s: r["data"]["split_sha256"] for s, r in runs.items()}
    assert fingerprints["full"] == fingerprints["lora"] == fingerprints["baseline"]
    assert len(set(fingerprints["full"].values())) == 3  # train, validation, test differ
    assert {r["test"]["size"] for r in runs.values()} == {30}
    assert runs["full"]["strategy"] == "full" and runs["lora"]["strategy"] == "lora"


@pytest.mark.slow  # the single-split comparison: three runs, one in a spawned child
def test_report_numbers_are_the_runs_numbers(single):
    _, report, out = single
    assert read_json(out / "report.json") == json.loads(json.dumps(report))
    assert report["complete"] and report["runs_finished"] == 3
    markdown = (out / "report.md").read_text()
    for strategy in ("full", "lora", "baseline"):
        run = results(out, f"{strategy}-seed42")
        row = report["strategies"][strategy]
        assert row["macro_f1"] == pytest.approx(run["test"]["macro_f1"])
        assert row["accuracy"] == pytest.approx(run["test"]["accuracy"])
        assert row["weighted_f1"] == pytest.approx(run["test"]["weighted_f1"])
        assert row["trainable_params"] == run["trainable_params"]
        assert row["train_seconds"] == run["train_seconds"]
        assert row["peak_memory_mb"] == run["peak_memory_mb"]
        assert row["per_class_f1"]["neutral"] == run["test"]["per_class"]["neutral"]["f1"]
        assert row["inference_sentences_per_second"] > 0
        assert row["macro_f1_ci95"][0] <= row["macro_f1"] <= row["macro_f1_ci95"][1]
        assert row["artifact_dir"] == str(out / "runs" / f"{strategy}-seed42")
        assert f"{row['macro_f1']:.4f}" in markdown
    lora, full = report["strategies"]["lora"], report["strategies"]["full"]
    assert lora["trainable_params"] < full["trainable_params"] == full["total_params"]


@pytest.mark.slow  # the single-split comparison: three runs, one in a spawned child
def test_plots_are_readable_pngs(single):
    _, _, out = single
    for name in ("confusion_matrices.png", "learning_curves.png", "summary.png"):
        assert_png(out / name)
        assert f"]({name})" in (out / "report.md").read_text()
    for strategy in ("full", "lora"):  # calibrated on validation: a reliability diagram each
        assert_png(out / f"reliability_{strategy}.png")
        assert f"](reliability_{strategy}.png)" in (out / "report.md").read_text()
    assert not (out / "reliability_baseline.png").exists()


@pytest.mark.slow  # the single-split comparison: three runs, one in a spawned child
def test_report_lists_the_warnings_of_its_runs(single, tmp_path):
    config, _, out = single
    copy = tmp_path / "warned"
    shutil.copytree(out, copy)
    run_file = copy / "runs" / "lora-seed42" / "final_results.json"
    run = read_json(run_file)
    run["warnings"] = ["the trained model predicts 'neutral' for every validation text"]
    run_file.write_text(json.dumps(run))
    report = compare(settings(config.data, config.model_name, copy))
    lora_run = report["strategies"]["lora"]["runs"][0]
    assert lora_run["warnings"] == run["warnings"]
    markdown = (copy / "report.md").read_text()
    assert "- LoRA, seed 42: the trained model predicts 'neutral'" in markdown


@pytest.mark.slow  # the single-split comparison: three runs, one in a spawned child
def test_rerun_skips_finished_runs_and_redoes_missing_ones(single, runs_in_process):
    config, _, out = single
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/final_results.json")}
    assert len(stamps) == 3
    compare(config)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    import shutil

    lora = out / "runs" / "lora-seed42" / "final_results.json"
    shutil.rmtree(lora.parent)
    report = compare(config)
    assert lora.is_file() and report["complete"]
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p != lora)


@pytest.mark.slow  # the single-split comparison: three runs, one in a spawned child
def test_an_output_dir_of_another_split_is_refused(single, tiny_model_dir, phrasebank_slice):
    _, _, out = single
    other = settings(phrasebank_slice, tiny_model_dir, out, test_size=0.2)
    with pytest.raises(FinloraError, match="different split"):
        compare(other)


def test_folds_are_stratified_disjoint_and_cover_the_data(phrasebank_slice):
    config = TrainConfig(data=str(phrasebank_slice))
    folds = prepare_folds(config, 3)
    tests = [set(f.test["text"]) for f in folds]
    assert sum(map(len, tests)) == len(set().union(*tests)) == 299
    for fold in folds:
        train, validation, test = (set(fold.train["text"]), set(fold.validation["text"]),
                                   set(fold.test["text"]))  # fmt: skip
        assert not (train & validation or train & test or validation & test)
        counts = fold.class_counts("test")
        assert max(counts) - min(counts) <= 1  # the slice is balanced: 100/100/99
        assert len(validation) == pytest.approx(30, abs=2)
    assert prepare_folds(config, 3)[1].info["split_sha256"] == folds[1].info["split_sha256"]
    with pytest.raises(FinloraError, match="at least 2"):
        prepare_folds(config, 1)


def test_cross_validation_reports_mean_and_std(
    tmp_path, tiny_model_dir, phrasebank_slice, runs_in_process
):
    out = tmp_path / "cv"
    config = settings(phrasebank_slice, tiny_model_dir, out, folds=2,
                      strategies=["lora", "baseline"])  # fmt: skip
    report = compare(config)
    assert sorted(report["strategies"]) == ["baseline", "lora"]
    for strategy in ("lora", "baseline"):
        runs = [results(out, f"{strategy}-seed42-fold{k}") for k in (0, 1)]
        row = report["strategies"][strategy]
        scores = [r["test"]["macro_f1"] for r in runs]
        assert row["n_runs"] == 2
        assert row["macro_f1"] == pytest.approx(np.mean(scores))
        assert row["macro_f1_std"] == pytest.approx(np.std(scores, ddof=1))
        assert sum(r["test"]["size"] for r in runs) == 299
        assert runs[0]["data"]["split_sha256"]["test"] != runs[1]["data"]["split_sha256"]["test"]
    for k in (0, 1):
        assert (results(out, f"lora-seed42-fold{k}")["data"]["split_sha256"]
                == results(out, f"baseline-seed42-fold{k}")["data"]["split_sha256"])  # fmt: skip
    assert " ± " in (out / "report.md").read_text()
    assert_png(out / "learning_curves.png")
    pooled = report["strategies"]["lora"]["calibration"]["reliability"]  # both folds' bins
    assert sum(b["count"] for b in pooled["raw"]) == 299
    assert sum(b["count"] for b in pooled["calibrated"]) == 299
    assert_png(out / "reliability_lora.png")


def test_baseline_runs_once_per_split_and_transformers_once_per_seed(
    tmp_path, tiny_model_dir, phrasebank_slice
):
    config = settings(phrasebank_slice, tiny_model_dir, tmp_path, folds=2, seeds=2)
    names = [unit.directory.name for group in plan_units(config) for unit in group]
    assert sorted(n for n in names if n.startswith("baseline")) == [
        "baseline-seed42-fold0", "baseline-seed42-fold1"
    ]  # fmt: skip
    for strategy in ("lora", "full"):
        assert sorted(n for n in names if n.startswith(strategy)) == [
            f"{strategy}-seed{seed}-fold{fold}" for seed in (42, 43) for fold in (0, 1)
        ]


def test_baseline_is_a_real_model(tmp_path, phrasebank_allagree):
    data = prepare_data(TrainConfig(data=str(phrasebank_allagree)))
    run = train_baseline(data, tmp_path / "baseline")
    assert run.test.accuracy > 0.8 and run.test.macro_f1 > 0.75  # chance: ~0.33
    assert load_results(tmp_path / "baseline") == run
    loaded = BaselineModel.load(tmp_path / "baseline")
    again = classification_report(
        data.label_ids("test"), loaded.predict_ids(data.test["text"]), data.labels
    )
    assert again["confusion_matrix"] == run.test.confusion_matrix


def test_group_folds_keep_each_document_in_one_place(claudette_dir):
    config = TrainConfig(data=str(claudette_dir), validation_size=0.15)
    folds = prepare_folds(config, 5)
    documents = [{part: set(getattr(f, part)["group"]) for part in ("train", "validation", "test")}
                 for f in folds]  # fmt: skip
    tested = [d["test"] for d in documents]
    assert sum(map(len, tested)) == len(set().union(*tested)) == 50  # each ToS tested once
    for fold, parts in zip(folds, documents):
        assert not (parts["train"] & parts["validation"] or parts["train"] & parts["test"]
                    or parts["validation"] & parts["test"])  # fmt: skip
        assert min(fold.class_counts("test")) > 0  # stratified: arbitration (44) in every fold
        assert fold.info["split_strategy"] == "stratified group 5-fold"
    one_split = prepare_data(TrainConfig(data=str(claudette_dir), validation_size=0.15,
                                         test_size=0.2))  # fmt: skip
    assert folds[0].info["split_sha256"] == one_split.info["split_sha256"]
    with pytest.raises(FinloraError, match="need at least 51"):
        prepare_folds(config, 50)


@pytest.mark.slow  # TF-IDF models of 8 labels on all of CLAUDETTE
def test_multilabel_baseline_is_a_real_model(tmp_path, claudette_dir):
    data = prepare_data(TrainConfig(data=str(claudette_dir), validation_size=0.15, test_size=0.2))
    run = train_baseline(data, tmp_path / "baseline")
    assert run.task == "multi_label" and load_results(tmp_path / "baseline") == run
    # flagging every sentence scores 0.06 macro-F1; a linear model on words, about 0.69
    assert run.test.macro_f1 > 0.6 and not run.test.never_predicted
    thresholds = list(run.test.thresholds.values())
    assert len(set(thresholds)) == len(thresholds) and 0 < min(thresholds) < max(thresholds) < 1
    loaded = BaselineModel.load(tmp_path / "baseline")
    decisions = loaded.predict_label_matrix(data.test["text"])
    assert decisions.sum(0).tolist() == list(run.test.prediction_distribution.values())


def test_baseline_keeps_a_label_without_training_positives(tmp_path):
    terminate = ["we may terminate your account", "we can suspend the service at any time"]
    law = ["governed by the laws of france", "the laws of england apply"]
    plain = ["hello and welcome", "read these terms carefully", "thanks for using our app"]

    def write(name, rows):
        path = tmp_path / name
        path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
        return str(path)

    train = [(t, ["TER"]) for t in terminate] + [(t, ["LAW"]) for t in law]
    train += [(t, []) for t in plain]
    held_out = [("you must arbitrate every dispute", ["A"]), (terminate[0] + " now", ["TER"]),
                (law[0] + " only", ["LAW"]), ("welcome to the app", [])]  # fmt: skip
    config = TrainConfig(data=write("train.jsonl", train), labels=["TER", "LAW", "A"],
                         validation_data=write("validation.jsonl", held_out),
                         test_data=write("test.jsonl", held_out))  # fmt: skip
    run = train_baseline(prepare_data(config), tmp_path / "baseline")
    # A was never seen in training: it is never predicted, though validation has a positive
    assert run.test.prediction_distribution["A"] == 0
    assert run.test.thresholds["A"] == 0.5
    loaded = BaselineModel.load(tmp_path / "baseline")
    decisions = loaded.predict_label_matrix([t for t, _ in held_out])
    assert decisions[:, 2].sum() == 0 and decisions[1, 0] == 1 and decisions[2, 1] == 1


@pytest.mark.slow  # six runs: two strategies on three folds
def test_multilabel_compare_by_document(tmp_path, tiny_model_dir, claudette_slice, runs_in_process):
    out = tmp_path / "ml"
    config = settings(claudette_slice, tiny_model_dir, out, folds=3, validation_size=0.34,
                      strategies=["full", "baseline"])  # fmt: skip
    report = compare(config)
    assert report["problem_type"] == "multi_label" and report["complete"]
    assert report["split"]["kind"] == "stratified group 3-fold"
    tested = [set(results(out, f"baseline-seed42-fold{k}")["data"]["groups"]["test"])
              for k in range(3)]  # fmt: skip
    assert sum(map(len, tested)) == len(set().union(*tested)) == 6
    markdown = (out / "report.md").read_text()
    for strategy in ("full", "baseline"):
        runs = [results(out, f"{strategy}-seed42-fold{k}")["test"] for k in range(3)]
        row = report["strategies"][strategy]
        assert row["macro_f1"] == pytest.approx(np.mean([r["macro_f1"] for r in runs]))
        assert row["micro_f1"] == pytest.approx(np.mean([r["micro_f1"] for r in runs]))
        assert row["accuracy"] == pytest.approx(np.mean([r["subset_accuracy"] for r in runs]))
        assert row["lexglue_macro_f1"] == pytest.approx(
            np.mean([r["lexglue"]["macro_f1"] for r in runs])
        )
        for label in ("LTD", "CR", "A"):  # the slice: CR absent from one test fold, A from all
            scored = [r["per_label"][label]["f1"] for r in runs if r["per_label"][label]["support"]]
            assert row["per_class_f1"][label] == (pytest.approx(np.mean(scored)) if scored
                                                  else None)  # fmt: skip
        assert row["per_class_support"]["LTD"] == sum(r["per_label"]["LTD"]["support"]
                                                      for r in runs)  # fmt: skip
        assert f"{row['macro_f1']:.4f} ± " in markdown
    assert "exact match" in markdown and "LexGLUE macro-F1" in markdown
    assert "No test positive of: " in markdown and "A (fold 1 seed 42, fold 2 seed 42" in markdown
    assert report["accuracy_means"].startswith("exact match")
    assert_png(out / "per_label_f1.png")
    assert not (out / "confusion_matrices.png").exists()


def test_bootstrap_interval():
    assert bootstrap_macro_f1_ci([[10, 0], [0, 10]], 100, 0) == [1.0, 1.0]
    low, high = bootstrap_macro_f1_ci([[40, 10], [5, 45]], 500, 0)
    assert low < 0.85 < high and high - low < 0.3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["compare", "--strategies", "full,svm"], "--strategies full,svm is invalid"),
        (["compare", "--folds", "1"], "--folds must be 0"),
        (["compare", "--train_overrides", "seed=3"], "cannot set seed"),
        (["compare", "--train_overrides", "epoch=3"], "epoch is not a `finlora train` setting"),
        (["compare", "--lora_config", "nope.yaml"], "config file nope.yaml does not exist"),
    ],
)
def test_compare_usage_errors(argv, message, tmp_path, capsys, phrasebank_slice):
    argv = [*argv, "--data", str(phrasebank_slice), "--output_dir", str(tmp_path / "o")]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("command", ["compare", "profile"])
def test_help_lists_every_setting(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--output_dir" in out and "--data" in out
    if command == "compare":
        assert "--folds" in out and "95% interval" in out


def test_profile(tmp_path, phrasebank_slice):
    source = tmp_path / "data.csv"
    lines = phrasebank_slice.read_text(encoding="iso-8859-1").splitlines()
    rows = [line.rsplit("@", 1) for line in lines]
    rows += [rows[0], rows[1], [rows[2][0], "neutral" if rows[2][1] != "neutral" else "positive"]]
    import pandas as pd

    pd.DataFrame(rows, columns=["sentence", "tone"]).to_csv(source, index=False)
    out = tmp_path / "profile"
    assert main(["-q", "profile", "--data", str(source), "--text_column", "sentence",
                 "--label_column", "tone", "--max_length", "24",
                 "--output_dir", str(out)]) == 0  # fmt: skip
    result = read_json(out / "profile.json")
    assert result["rows_read"] == 303
    # the slice itself repeats one sentence; the conflicting text is dropped in every copy
    assert result["duplicates_dropped"] == 3 and result["conflicting_texts_dropped"] == 1
    assert sum(result["class_counts"].values()) == result["rows_kept"] == 298
    assert result["imbalance_ratio"] == pytest.approx(100 / 99, abs=1e-3)
    assert result["class_counts"] == {"negative": 99, "neutral": 99, "positive": 100}
    lengths = result["token_lengths"]
    assert 0 < lengths["truncated_share"] < 1 and lengths["max_length"] == 24
    assert lengths["p50"] <= lengths["p95"] <= lengths["max"]
    positive = [r["word"] for r in result["distinctive_words"]["positive"]]
    assert {"rose", "increased"} & set(positive)
    assert all(len(result["frequent_words"][lab]) == 15 for lab in result["labels"])
    for name in ("class_counts.png", "token_lengths.png", "distinctive_words.png"):
        assert_png(out / name)
    assert "3 exact duplicates, 1 texts with conflicting labels" in (out / "profile.md").read_text()
    with pytest.raises(FinloraError, match="not both"):
        ProfileConfig(data="x.csv", dataset="phrasebank_allagree")


TERMINATED = "finlora: terminated (SIGTERM); no half-written output was left"
INTERRUPTED = "finlora: interrupted; no half-written output was left"


@pytest.mark.slow  # a real `finlora compare` process and its spawned child, per case
@pytest.mark.parametrize(
    ("signum", "whole_group", "code", "line"),
    [
        (signal.SIGTERM, False, 143, TERMINATED),  # a scheduler
        (signal.SIGINT, False, 130, INTERRUPTED),  # kill -INT
        (signal.SIGINT, True, 130, INTERRUPTED),  # Ctrl-C in a terminal
    ],
)
def test_a_stop_ends_the_running_child_too(signum, whole_group, code, line, tmp_path,
                                           tiny_model_dir, phrasebank_slice):  # fmt: skip
    """Whether the stop reaches compare's own process only or its child as well, the child must
    stop, both must remove their temporary files, and the log must end with compare's one line
    rather than the child's traceback."""
    scratch = tmp_path / "tmp"  # TMPDIR of compare and its children
    scratch.mkdir()
    command = [sys.executable, "-m", "finlora", "compare", "--data", str(phrasebank_slice),
               "--model_name", str(tiny_model_dir), "--strategies", "full",
               "--train_overrides", "epochs=200,batch_size=32,max_length=32,bf16=false",
               "--output_dir", str(tmp_path / "cmp")]  # fmt: skip
    log = tmp_path / "compare.log"
    exit_code = stop_once_training(command, scratch, log, signum, whole_group)
    assert exit_code == code, log.read_text()[-3000:]
    assert line in log.read_text() and "Traceback" not in log.read_text()
    assert processes_with(f"TMPDIR={scratch}".encode()) == []
    assert list(scratch.glob("finlora-*")) == []
    assert list((tmp_path / "cmp").rglob("final_results.json")) == []  # not trained to the end
