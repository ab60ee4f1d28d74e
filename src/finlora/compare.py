"""`finlora compare`: full fine-tuning vs LoRA vs a TF-IDF baseline on the very same split(s).

Every strategy is trained on the same `PreparedData` (one de-duplicated split, or the same
stratified K folds), each with its own recipe. Each run happens in a fresh child process, so
its peak memory (the process's peak RSS, or peak CUDA memory) belongs to that run alone. A run
is finished when its directory holds `final_results.json` (written atomically by the run) and
`inference.json`; rerunning with the same output dir skips finished runs.

Layout of `output_dir`::

    runs/<strategy>-seed<S>[-fold<K>]/   one run's artifacts (model, final_results.json, ...)
    report.md, report.json               the comparison table, same numbers in both
    confusion_matrices.png, learning_curves.png, summary.png
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from finlora.artifacts import RESULTS, read_json, write_json
from finlora.calibration import pool_reliability
from finlora.config import (
    SHARED_KEYS,
    CompareConfig,
    TrainConfig,
    coerce,
    load_recipe,
)
from finlora.data import PreparedData, prepare_data, prepare_folds
from finlora.errors import (
    TERMINATED_EXIT_CODE,
    FinloraError,
    Terminated,
    quiet_half_built_objects,
    sigterm_raises_terminated,
    stops_held,
)
from finlora.logs import configure_logging
from finlora.results import (
    MultiLabelMetrics,
    SingleLabelMetrics,
    load_results,
    read_results,
)

log = logging.getLogger(__name__)

TRANSFORMER_STRATEGIES = ("full", "lora")
# Seconds a stopped compare gives its running child to clean up before killing it (within
# Kubernetes' default 30 s between SIGTERM and SIGKILL).
CHILD_STOP_GRACE_SECONDS = 20.0
# Cheapest first, so an interrupted compare has as many strategies finished as possible.
EXECUTION_ORDER = ("baseline", "lora", "full")
INFERENCE = "inference.json"
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class RunUnit:
    """One training run: a strategy on one split/fold with one seed."""

    strategy: str
    seed: int
    fold: int | None
    directory: Path

    @property
    def name(self) -> str:
        return self.directory.name


def resolve_recipe_path(path: str) -> Path:
    """A recipe path as given, or relative to the source checkout (for the default recipes)."""
    candidate = Path(path)
    if candidate.is_file() or candidate.is_absolute():
        return candidate
    packaged = REPO_ROOT / path
    return packaged if packaged.is_file() else candidate


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise FinloraError(f"--train_overrides item {item!r} is not KEY=VALUE")
        if key in SHARED_KEYS or key in {"output_dir", "seed", "use_lora"}:
            raise FinloraError(
                f"--train_overrides cannot set {key}: the comparison decides it "
                "(use the `finlora compare` flag of the same name)"
            )
        try:
            out[key] = coerce(key, value)
        except KeyError:
            raise FinloraError(
                f"--train_overrides: {key} is not a `finlora train` setting"
            ) from None
    return out


def strategy_config(settings: CompareConfig, strategy: str, unit: RunUnit) -> TrainConfig:
    """A transformer strategy's recipe with the comparison's data, seed and run dir forced in."""
    recipe_path = settings.lora_config if strategy == "lora" else settings.full_config
    values = load_recipe(resolve_recipe_path(recipe_path))
    values.update(parse_overrides(settings.train_overrides))
    if settings.model_name:
        values["model_name"] = settings.model_name
    values.update({key: getattr(settings, key) for key in SHARED_KEYS})
    values.update(use_lora=strategy == "lora", seed=unit.seed, output_dir=str(unit.directory))
    return TrainConfig(**values)


def plan_units(settings: CompareConfig) -> list[list[RunUnit]]:
    """Runs grouped by split/fold (fold-major), so an interrupted compare has whole folds.

    The baseline runs once per split, with the first seed: TF-IDF and lbfgs logistic
    regression with C picked on validation are deterministic, so more seeds would only repeat
    its numbers and shrink its standard deviation."""
    runs = Path(settings.output_dir) / "runs"
    folds = list(range(settings.folds)) if settings.folds else [None]
    strategies = sorted(settings.strategies, key=EXECUTION_ORDER.index)
    groups = []
    for fold in folds:
        for seed in settings.seed_list:
            suffix = f"-seed{seed}" + (f"-fold{fold}" if fold is not None else "")
            seeded = [s for s in strategies if s != "baseline" or seed == settings.seed]
            groups.append([RunUnit(s, seed, fold, runs / f"{s}{suffix}") for s in seeded])
    return groups


def is_finished(unit: RunUnit) -> bool:
    return (unit.directory / RESULTS).is_file() and (unit.directory / INFERENCE).is_file()


def check_same_split(unit: RunUnit, data: PreparedData) -> None:
    """A finished run of a different split must not be mixed into this comparison."""
    results = read_results(unit.directory)
    if results is None:
        return
    if results.data.split_sha256 != data.info["split_sha256"]:
        raise FinloraError(
            f"{unit.directory} was trained on a different split (other data or settings); "
            "use a new --output_dir or delete that directory"
        )


# ---------------------------------------------------------------- running in a child process


def _run_in_child(
    settings: CompareConfig, unit: RunUnit, data: PreparedData, log_level: int
) -> None:
    """Child process entry: train if needed, then measure test throughput."""
    configure_logging(log_level, f"%(asctime)s %(levelname)s [{unit.name}] %(name)s: %(message)s")
    try:
        with sigterm_raises_terminated():
            if read_results(unit.directory) is None:
                if unit.strategy == "baseline":
                    from finlora.baseline import train_baseline

                    train_baseline(data, unit.directory, seed=unit.seed)
                else:
                    from finlora.training import train

                    train(strategy_config(settings, unit.strategy, unit), data=data)
            measure_throughput(unit, data)
    except FinloraError as exc:
        print(f"finlora: error in {unit.name}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except Terminated:  # sent by run_unit, the only one that stops this process
        quiet_half_built_objects()
        raise SystemExit(TERMINATED_EXIT_CODE) from None


def measure_throughput(unit: RunUnit, data: PreparedData, warmup: int = 16) -> dict:
    """Sentences per second when predicting the test set with the saved model (after warm-up)."""
    texts = list(data.test["text"])
    if unit.strategy == "baseline":
        from finlora.baseline import BaselineModel

        model = BaselineModel.load(unit.directory)
    else:
        from finlora.predictor import Predictor

        model = Predictor.load(unit.directory)
    predict = model.predict_label_matrix if data.multi_label else model.predict_ids
    predict(texts[:warmup])
    started = time.perf_counter()
    predict(texts)
    seconds = time.perf_counter() - started
    payload = {
        "test_sentences": len(texts),
        "seconds": round(seconds, 4),
        "sentences_per_second": round(len(texts) / seconds, 1),
    }
    staging = unit.directory / f".{INFERENCE}.tmp"
    write_json(staging, payload)
    os.replace(staging, unit.directory / INFERENCE)
    return payload


def stop_child(process: multiprocessing.process.BaseProcess) -> None:
    """SIGTERM the child, which then removes its temporary files; SIGKILL it if it has not
    exited within the grace period."""
    if process.pid is None:  # never started
        return
    process.terminate()
    process.join(CHILD_STOP_GRACE_SECONDS)
    if process.exitcode is None:
        process.kill()
        process.join()


def run_unit(settings: CompareConfig, unit: RunUnit, data: PreparedData) -> None:
    """Run one unit in a fresh spawned process; a failure there is an error here, and a stop
    here (Ctrl-C, SIGTERM) stops the child too before it goes on up."""
    context = multiprocessing.get_context("spawn")
    process = context.Process(
        target=_run_in_child,
        args=(settings, unit, data, logging.getLogger("finlora").getEffectiveLevel()),
        name=f"finlora-{unit.name}",
    )
    try:
        with stops_held():  # the child starts with SIGINT ignored: only this process stops it
            process.start()
        process.join()
    except (Terminated, KeyboardInterrupt):
        with stops_held():
            stop_child(process)
        raise
    if process.exitcode != 0:
        raise FinloraError(
            f"run {unit.name} failed (exit code {process.exitcode}); see the log above. "
            "Finished runs are kept: rerun the same command to resume"
        )


# ---------------------------------------------------------------- numbers


def bootstrap_macro_f1_ci(
    confusion: list[list[int]], samples: int, seed: int, level: float = 0.95
) -> list[float]:
    """Percentile bootstrap interval of macro-F1, resampling the test examples.

    The confusion matrix holds every (true, predicted) pair, so no predictions file is needed.
    """
    matrix = np.asarray(confusion, dtype=int)
    k = matrix.shape[0]
    pairs = np.repeat(np.arange(k * k), matrix.ravel())  # true * k + predicted
    rng = np.random.default_rng(seed)
    scores = np.empty(samples)
    for i in range(samples):
        counts = np.bincount(rng.choice(pairs, size=pairs.size), minlength=k * k).reshape(k, k)
        tp = np.diag(counts)
        denominator = counts.sum(0) + counts.sum(1)  # 2tp + fp + fn
        f1 = np.divide(2 * tp, denominator, out=np.zeros(k), where=denominator > 0)
        scores[i] = f1.mean()
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(scores, tail)), float(np.percentile(scores, 100 - tail))]


def run_record(unit: RunUnit, settings: CompareConfig) -> dict:
    """The per-run numbers of the report, read from the run's own files."""
    results = load_results(unit.directory / RESULTS)
    inference = read_json(unit.directory / INFERENCE)
    test = results.test
    record = {
        "strategy": unit.strategy,
        "seed": unit.seed,
        "fold": unit.fold,
        "artifact_dir": str(unit.directory),
        "macro_f1": test.macro_f1,
        **(
            multilabel_metrics(test)
            if isinstance(test, MultiLabelMetrics)
            else single_label_metrics(test)
        ),
        "validation_macro_f1": results.validation.macro_f1,
        "trainable_params": results.trainable_params,
        "total_params": results.total_params,
        "trainable_percent": 100.0 * results.trainable_fraction,
        "train_seconds": results.train_seconds,
        "peak_memory_mb": results.peak_memory_mb,
        "inference_sentences_per_second": inference["sentences_per_second"],
        "best_epoch": results.best_epoch,
        "history": [row.to_dict() for row in results.history],
        "test_size": test.size,
        "device": results.device,
        "precision": results.precision,
        "warnings": results.warnings or [],
    }
    if unit.strategy in TRANSFORMER_STRATEGIES:  # the shipped behavioural suite, if any fits
        from finlora.checks import suite_scores

        record.update(suite_scores(unit.directory, results))
    if test.calibration is not None and test.calibration.reliability is not None:
        record["calibration"] = test.calibration.to_dict()  # the reliability diagram
    if isinstance(test, SingleLabelMetrics):
        record["macro_f1_ci95"] = bootstrap_macro_f1_ci(
            test.confusion_matrix, settings.bootstrap, unit.seed
        )
    return record


def single_label_metrics(test: SingleLabelMetrics) -> dict:
    return {
        "accuracy": test.accuracy,
        "weighted_f1": test.weighted_f1,
        "per_class_f1": {name: row.f1 for name, row in test.per_class.items()},
        "confusion_matrix": test.confusion_matrix,
    }


def multilabel_metrics(test: MultiLabelMetrics) -> dict:
    """Multi-label: accuracy is exact-match (every label of the row right), F1s are per label."""
    per_label = test.per_label
    support = sum(row.support for row in per_label.values())
    return {
        "micro_f1": test.micro_f1,
        "accuracy": test.subset_accuracy,
        "weighted_f1": sum(row.f1 * row.support for row in per_label.values()) / max(support, 1),
        "lexglue_micro_f1": test.lexglue.micro_f1,
        "lexglue_macro_f1": test.lexglue.macro_f1,
        "per_class_f1": {name: row.f1 for name, row in per_label.items()},
        "per_class_support": {name: row.support for name, row in per_label.items()},
    }


SUMMARY_METRICS = (
    "macro_f1",
    "micro_f1",
    "accuracy",
    "weighted_f1",
    "lexglue_micro_f1",
    "lexglue_macro_f1",
    "suite_pass_rate",  # transformer runs whose labels a shipped suite has (finlora.checks)
    "validation_macro_f1",
    "trainable_params",
    "total_params",
    "trainable_percent",
    "train_seconds",
    "peak_memory_mb",
    "inference_sentences_per_second",
)


def summarize(records: list[dict], labels: list[str]) -> dict:
    """One strategy: the number itself for one run; mean, std (ddof=1) and runs for several."""
    summary: dict[str, Any] = {"n_runs": len(records)}
    many = len(records) > 1
    for key in SUMMARY_METRICS:
        if key not in records[0]:  # micro and LexGLUE figures: multi-label only
            continue
        values = np.asarray([r[key] for r in records], dtype=float)
        summary[key] = float(values.mean())
        if many:
            summary[f"{key}_std"] = float(values.std(ddof=1))
    summary["per_class_f1"], spread = {}, {}
    for name in labels:
        # Multi-label: a run whose test part has no positive of a label scores it 0 (there was
        # nothing to find); its mean skips such runs, which the report lists.
        scores = [
            r["per_class_f1"][name]
            for r in records
            if r.get("per_class_support", {}).get(name, 1) > 0
        ]
        summary["per_class_f1"][name] = float(np.mean(scores)) if scores else None
        spread[name] = float(np.std(scores, ddof=1)) if len(scores) > 1 else None
    if many:
        summary["per_class_f1_std"] = spread
    else:
        if "macro_f1_ci95" in records[0]:
            summary["macro_f1_ci95"] = records[0]["macro_f1_ci95"]
        summary["artifact_dir"] = records[0]["artifact_dir"]
    if "confusion_matrix" in records[0]:
        summary["confusion_matrix"] = np.sum([r["confusion_matrix"] for r in records], 0).tolist()
    if "per_class_support" in records[0]:
        summary["per_class_support"] = {
            name: int(sum(r["per_class_support"][name] for r in records)) for name in labels
        }
    calibration = pool_reliability([r.get("calibration") for r in records])
    if calibration:
        summary["calibration"] = calibration
    dropped = {"history", "confusion_matrix", "calibration"}
    summary["runs"] = [{k: v for k, v in r.items() if k not in dropped} for r in records]
    return summary


# ---------------------------------------------------------------- the command


def compare(settings: CompareConfig) -> dict:
    """Train every strategy on the same split(s), skipping finished runs; write the report."""
    from finlora.report import pyplot

    pyplot()  # no plotting library: say so before hours of training, not after
    out = Path(settings.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for strategy in TRANSFORMER_STRATEGIES:  # fail on a bad recipe before any training
        if strategy in settings.strategies:
            strategy_config(settings, strategy, RunUnit(strategy, settings.seed, None, out))

    data_config = settings.data_config()
    splits = (
        prepare_folds(data_config, settings.folds)
        if settings.folds
        else [prepare_data(data_config)]
    )
    groups = plan_units(settings)
    total = sum(len(g) for g in groups)
    done = 0
    report: dict = {}
    for group in groups:
        data = splits[group[0].fold or 0]
        for unit in group:
            check_same_split(unit, data)
            if is_finished(unit):
                log.info("%s is finished; skipping it", unit.name)
            else:
                log.info("running %s (%d of %d runs finished)", unit.name, done, total)
                run_unit(settings, unit, data)
                report = write_report(settings, groups, splits)  # a partial report
            done += 1
    return report or write_report(settings, groups, splits)


def finished_records(settings: CompareConfig, groups: list[list[RunUnit]]) -> dict:
    records: dict[str, list[dict]] = {s: [] for s in settings.strategies}
    for group in groups:
        for unit in group:
            if is_finished(unit):
                records[unit.strategy].append(run_record(unit, settings))
    return records


def write_report(
    settings: CompareConfig, groups: list[list[RunUnit]], splits: list[PreparedData]
) -> dict:
    """report.json, report.md and the plots from every finished run so far."""
    from finlora.report import write_markdown, write_plots

    out = Path(settings.output_dir)
    labels = splits[0].labels
    records = finished_records(settings, groups)
    planned = sum(len(g) for g in groups)
    finished = sum(len(r) for r in records.values())
    first = splits[0].info
    report = {
        "settings": {k: v for k, v in vars(settings).items()},
        "dataset": first["dataset"] or first["source"],
        "labels": labels,
        "problem_type": splits[0].problem_type,
        **(
            {"accuracy_means": "exact match: every label of a text right (subset accuracy)"}
            if splits[0].multi_label
            else {}
        ),
        "class_counts": first["class_counts"],
        "split": {
            "kind": first["split_strategy"],
            "sizes": [s.info["sizes"] for s in splits],
            "duplicates_dropped": first["duplicates_dropped"],
            "conflicting_texts_dropped": first["conflicting_texts_dropped"],
        },
        "recipes": {
            s: str(resolve_recipe_path(getattr(settings, f"{s}_config")))
            for s in TRANSFORMER_STRATEGIES
            if s in settings.strategies
        },
        "runs_planned": planned,
        "runs_finished": finished,
        "complete": finished == planned,
        "machine": machine_description(records),
        "strategies": {s: summarize(r, labels) for s, r in records.items() if r},
    }
    write_json(out / "report.json", report)
    write_plots(report, records, out)
    write_markdown(report, out)
    return report


def machine_description(records: dict[str, list[dict]]) -> str:
    devices = {r["device"] for runs in records.values() for r in runs if r.get("device")}
    transformer = sorted(d for d in devices if "threads" in d or "cuda" in d)
    return f"{platform.machine()}, {os.cpu_count()} CPUs; " + (
        ", ".join(transformer) if transformer else "no transformer runs"
    )
