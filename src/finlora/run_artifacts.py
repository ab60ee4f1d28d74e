"""What a finished training run writes: the merged model (and adapter), tokenizer, settings,
the multi-label thresholds, `final_results.json` and the model card.

The model shipped is evaluated here, on CPU in fp32, exactly as `finlora predict` loads it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from torch import nn

from finlora.artifacts import (
    ADAPTER_DIR,
    MODEL_CARD,
    RELIABILITY_PNG,
    RESOLVED_CONFIG,
    RESULTS,
    THRESHOLDS,
    TRAINING_ARGS,
    write_json,
)
from finlora.calibration import (
    CALIBRATION,
    Calibration,
    calibration_report,
    conformal_report,
)
from finlora.config import TrainConfig, save_config
from finlora.data import PreparedData
from finlora.evaluation import (
    apply_thresholds,
    classification_report,
    format_multilabel_report,
    format_report,
    multilabel_report,
    tune_thresholds,
)
from finlora.machine import device_name, library_versions, peak_memory_mb
from finlora.modeling import merge_adapter, to_cpu_fp32
from finlora.predictor import Predictor
from finlora.results import (
    DataReport,
    Distributed,
    EpochRecord,
    FinalResults,
    LossReport,
    Refit,
    SingleLabelMetrics,
    SplitMetrics,
    TokenLengths,
    decode,
)

if TYPE_CHECKING:
    from finlora.training import Fit

log = logging.getLogger(__name__)


def single_class_warning(validation: dict, config: TrainConfig) -> str | None:
    """A model that gives every validation text the same class has learned nothing: training
    diverged or stalled (one LoRA+ run with A at 1e-3 did). Say so, with the fix, instead of
    shipping it quietly."""
    counts = validation["prediction_distribution"]
    predicted = [name for name, count in counts.items() if count > 0]
    if len(counts) < 2 or len(predicted) != 1:
        return None
    rates = f"--learning_rate (now {config.learning_rate:g})"
    if config.use_lora and config.loraplus_lr_ratio > 0:
        rates += f" or --loraplus_lr_ratio (now {config.loraplus_lr_ratio:g})"
    return (
        f"the trained model predicts '{predicted[0]}' for every validation text: training "
        f"diverged or stalled; retrain with a lower {rates}, or another --seed"
    )


@dataclass
class Selection:
    """What the selected model scored on validation, and the thresholds tuned there.

    Before a refit frees that model, its test report is kept too, so the refit's effect is
    on record.
    """

    thresholds: list[float] | None
    validation: dict | None
    test: dict | None = None


def assess_selected(predictor: Predictor, data: PreparedData, *, test: bool) -> Selection:
    """Tune the multi-label thresholds on validation (setting them on `predictor`) and
    report validation, and test if asked."""
    validation_scores = None
    if data.multi_label:  # scored once: the thresholds and the report both read these
        validation_scores = predictor.probabilities(data.validation["text"])
        predictor.thresholds = tune_thresholds(data.label_matrix("validation"), validation_scores)
    return Selection(
        predictor.thresholds if data.multi_label else None,
        split_report(predictor, data, "validation", validation_scores),
        split_report(predictor, data, "test") if test else None,
    )


def cpu_predictor(model: nn.Module, tokenizer, config: TrainConfig) -> Predictor:
    """The trained model, adapter merged, in fp32 on the CPU: what is saved and evaluated."""
    return Predictor(
        to_cpu_fp32(merge_adapter(model)), tokenizer, config.max_length, config.eval_batch_size
    )


def write_artifacts(
    staging: Path,
    tokenizer,
    config: TrainConfig,
    data: PreparedData,
    precision: str,
    selected: Fit,
    refit: Fit | None = None,
    selection: Selection | None = None,
) -> FinalResults:
    """Save adapter, merged model, tokenizer, settings; evaluate the merged model; report.

    The model saved is the refit one when there is one, and `selection` then holds the
    selected model's figures; validation figures (and the thresholds) are always the
    selected model's, as the refit one has trained on validation.
    """
    final = refit or selected
    if config.use_lora:
        # In a subfolder: transformers applies an adapter_config.json it finds next to
        # config.json on top of the (already merged) weights, which would apply LoRA twice.
        final.model.save_pretrained(staging / ADAPTER_DIR)
    predictor = cpu_predictor(final.model, tokenizer, config)
    predictor.model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    write_json(staging / TRAINING_ARGS, final.args.to_dict())
    save_config(config, staging / RESOLVED_CONFIG)

    if selection is None:  # the model shipped is the selected one
        selection = assess_selected(predictor, data, test=False)
    if data.multi_label:
        predictor.thresholds = selection.thresholds
        write_thresholds(staging, selection.thresholds, data)
    warnings = []
    if config.calibrate and refit:
        warnings.append(
            "no calibration.json: --refit trains on the validation split, which calibration "
            "and the conformal prediction sets need held out"
        )
    elif config.calibrate and data.validation.empty:
        warnings.append("no calibration.json: the validation split is empty")
    elif config.calibrate:
        calibrate(predictor, data, staging, selection)
    test = split_report(predictor, data, "test")
    if test:
        log.info("\n%s", (format_multilabel_report if data.multi_label else format_report)(test))
    warning = None if data.multi_label else single_class_warning(selection.validation, config)
    if warning:
        warnings.insert(0, warning)
    for line in warnings:
        log.warning(line)
    results = FinalResults(
        task=data.problem_type,
        labels=data.labels,
        base_model=config.model_name,
        strategy="lora" if config.use_lora else "full",
        pooling=config.pooling,
        test=metrics_block(test),
        validation=metrics_block(selection.validation),
        best_epoch=selected.best_epoch,
        history=[EpochRecord.from_dict(row) for row in selected.history],
        trainable_params=final.params["trainable_params"],
        total_params=final.params["total_params"],
        trainable_fraction=final.params["trainable_fraction"],
        train_seconds=round(selected.seconds + (refit.seconds if refit else 0.0), 2),
        peak_memory_mb=round(peak_memory_mb(), 1),
        device=device_name(),
        distributed=Distributed.from_dict(final.layout),
        precision=precision,
        seed=config.seed,
        loss=LossReport(
            name=final.loss_name,
            weights=final.weights,
            focal_gamma=config.focal_gamma,
            multi_label=data.multi_label,
        ),
        data=DataReport.from_dict(data.info),
        train_token_lengths=TokenLengths.from_dict(final.train_token_lengths),
        warnings=warnings,
        versions=library_versions(),
    )
    if refit:
        results.refit = Refit(
            epochs=refit.args.num_train_epochs,
            train_rows=refit.train_rows,
            train_seconds=round(refit.seconds, 2),
            # The choice to refit was made before either model was tested.
            selected_model_test=metrics_block(selection.test),
        )
    write_json(staging / RESULTS, results.to_dict())
    write_model_card(staging, results)
    return results


def calibrate(
    predictor: Predictor, data: PreparedData, staging: Path, selection: Selection
) -> Calibration:
    """Fit calibration and the conformal scores on validation, save calibration.json, set
    it on `predictor` and add the validation `calibration` / `conformal` blocks."""
    logits = predictor.logits(data.validation["text"])
    truth = validation_truth(data, "validation")
    calibration = Calibration.fit(logits, truth, data.labels, data.multi_label)
    # raw_thresholds are untouched: the predictor maps them, so decisions do not change
    predictor.calibration = calibration
    calibration.save(staging)
    fitted = calibration_report(logits, truth, calibration)
    conformal = conformal_report(calibration.apply(logits), truth, calibration)
    if selection.validation is not None:
        selection.validation.update(calibration=fitted, conformal=conformal)
    log.info("calibration on validation (n=%d): %s; %s", len(truth), fitted, conformal)
    return calibration


def validation_truth(data: PreparedData, split: str) -> np.ndarray:
    """Class ids (single-label) or the 0/1 label matrix (multi-label) of a split."""
    if data.multi_label:
        return np.asarray(data.label_matrix(split))
    return np.asarray(data.label_ids(split))


def split_report(
    predictor: Predictor, data: PreparedData, split: str, scores: np.ndarray | None = None
) -> dict | None:
    """The metrics block of one split (None for an empty test split); multi-label `scores`
    already computed for it (by an uncalibrated predictor) are reused. A calibrated
    predictor adds the `calibration` and `conformal` blocks."""
    frame = getattr(data, split)
    if frame.empty:
        return None
    calibration = predictor.calibration
    logits = None
    if scores is None or calibration is not None:
        logits = predictor.logits(frame["text"])
        scores = predictor.scores(logits)
    if data.multi_label:
        block = multilabel_report(
            data.label_matrix(split), apply_thresholds(scores, predictor.thresholds),
            data.labels, predictor.raw_thresholds,
        )  # fmt: skip
    else:
        block = classification_report(data.label_ids(split), scores.argmax(-1), data.labels)
    if calibration is not None:
        truth = validation_truth(data, split)
        block["calibration"] = calibration_report(logits, truth, calibration)
        if calibration.has_sets:
            block["conformal"] = conformal_report(scores, truth, calibration)
    return block


def write_thresholds(staging: Path, thresholds: list[float], data: PreparedData) -> None:
    """The per-label thresholds beside the model, with the validation rows they came from."""
    write_json(
        staging / THRESHOLDS,
        {
            "labels": data.labels,
            "thresholds": dict(zip(data.labels, thresholds)),
            "tuned_on": "validation",
            "validation_positives": dict(
                zip(data.labels, data.label_matrix("validation").sum(axis=0).astype(int).tolist())
            ),
        },
    )
    log.info("thresholds: %s", {k: round(v, 3) for k, v in zip(data.labels, thresholds)})


def metrics_block(block: dict | None) -> SplitMetrics | None:
    """A `test` / `validation` block of `finlora.evaluation`, typed."""
    return decode(SplitMetrics, block)


def calibration_section(path: Path, calibration) -> list[str]:
    """The model card's calibration lines: ECE and Brier before/after on test, and the
    reliability diagram (reliability.png beside it) when matplotlib is installed."""
    from finlora.calibration import plot_reliability

    lines = [
        "## Calibration (test)",
        "",
        "| scores | ECE (15 bins) | Brier |",
        "|---|---:|---:|",
        f"| raw | {calibration.ece_before:.4f} | {calibration.brier_before:.4f} |",
        f"| calibrated | {calibration.ece_after:.4f} | {calibration.brier_after:.4f} |",
    ]
    block = calibration.to_dict()
    if plot_reliability(block, path / RELIABILITY_PNG, "Reliability on test"):
        lines += ["", f"![Reliability diagram on test]({RELIABILITY_PNG})"]
    return lines


def write_model_card(path: Path, results: FinalResults) -> None:
    """README.md beside the model: what it is, how it scored, how to load it."""
    test = results.test
    lines = [
        f"# finlora classifier: {', '.join(results.labels)}",
        "",
        f"- base model: `{results.base_model}` ({results.strategy}, {results.pooling} pooling)",
        f"- trainable parameters: {results.trainable_params:,} of "
        f"{results.total_params:,} ({100 * results.trainable_fraction:.2f}%)",
        f"- data: `{results.data.source}`",
    ]
    if isinstance(test, SingleLabelMetrics):
        lines.append(
            f"- test macro-F1 {test.macro_f1:.4f}, accuracy {test.accuracy:.4f} (n={test.size})"
        )
    elif test:
        lines.append(
            f"- multi-label, per-label thresholds in `{THRESHOLDS}`: test macro-F1 "
            f"{test.macro_f1:.4f}, micro-F1 {test.micro_f1:.4f} (n={test.size})"
        )
    calibration = getattr(test, "calibration", None)
    if calibration:
        lines.append(
            f"- calibrated on validation (`{CALIBRATION}`): test ECE "
            f"{calibration.ece_before:.4f} -> {calibration.ece_after:.4f}, Brier "
            f"{calibration.brier_before:.4f} -> {calibration.brier_after:.4f}"
        )
    conformal = getattr(test, "conformal", None)
    if conformal:
        lines.append(
            f"- prediction sets at {conformal.coverage_target:g} coverage: test coverage "
            f"{conformal.coverage:.4f}, {100 * conformal.review_share:.1f}% of texts flagged "
            "`needs_review`"
        )
    refit = results.refit
    if refit:
        lines.append(
            f"- refit: trained {refit.epochs:g} epochs (the epoch chosen on validation) on "
            f"the {refit.train_rows} training + validation rows"
        )
    # save_pretrained copies mean_pooling.py, the mean-pooling head's class, beside the weights.
    remote_code = ", trust_remote_code=True" if results.pooling == "mean" else ""
    lines += [
        "",
        "Load with plain transformers: "
        f"`AutoModelForSequenceClassification.from_pretrained(this_dir{remote_code})`, "
        "or `finlora predict --model this_dir TEXT`.",
        "",
    ]
    if calibration:
        lines += [*calibration_section(path, calibration), ""]
    (path / MODEL_CARD).write_text("\n".join(lines), encoding="utf-8")
