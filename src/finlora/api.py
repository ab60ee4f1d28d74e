"""The Python API: what `finlora train`, `finlora evaluate` and `finlora predict` do, as calls.

from finlora import TrainConfig, train, Predictor

result = train(TrainConfig(data="headlines.csv", output_dir="outputs/headlines"))
predictor = Predictor.load("outputs/headlines")
predictor.predict(["Net loss widened to EUR 5.2 mn from EUR 1.1 mn."])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from finlora.config import TrainConfig
from finlora.errors import FinloraError


def train(config: TrainConfig | None = None, **settings: Any) -> dict | None:
    """Train a classifier and write its artifacts to `config.output_dir`.

    Args:
        config: the settings of the run. Without it, `settings` are resolved the way
            `finlora train` resolves flags (defaults < the named dataset's preset < `config`
            recipe file given as `recipe=` < `settings`).
        **settings: with `config`: settings replacing its own (`epochs=1`); without it:
            `finlora train` flags by field name, plus `recipe="config/phrasebank_lora.yaml"`.

    Returns:
        The run's results, as written to `final_results.json`: `test` and `validation`
        metric blocks (`macro_f1`, `accuracy` or `micro_f1`, per-class scores), `strategy`,
        `trainable_fraction`, `train_seconds`, `labels`, `history`, ... None on the
        non-zero ranks of a distributed run.

    Raises:
        FinloraError: settings or data that cannot work, with the fix in the message.
    """
    results, _ = run(_config(config, settings))
    return results


def run(config: TrainConfig) -> tuple[dict | None, TrainConfig]:
    """`train`, also returning the final config (S3 and SageMaker locations applied)."""
    from finlora.cloud.run import run_train  # torch and transformers: only now

    return run_train(config)


def _config(config: TrainConfig | None, settings: dict[str, Any]) -> TrainConfig:
    if config is None:
        return TrainConfig.resolve(settings.pop("recipe", None), **settings)
    if settings:
        from dataclasses import replace

        return replace(config, **settings)
    return config


def evaluate(
    model_dir: str | Path,
    texts: Sequence[str],
    labels: Sequence[str] | Sequence[Sequence[str]],
    batch_size: int = 64,
) -> dict:
    """Score a trained model on labelled texts.

    Args:
        model_dir: the output directory of `train` (or `finlora train`).
        texts: the texts to classify.
        labels: their true labels by name (a list of names per text for a multi-label
            model).
        batch_size: texts per inference batch.

    Returns:
        The metrics block `finlora evaluate` prints: `macro_f1`, `accuracy` (single-label) or
        `micro_f1` (multi-label), per-class precision/recall/F1, the confusion matrix, and
        `calibration`/`conformal` when the model is calibrated.
    """
    from finlora.predictor import Predictor

    predictor = Predictor.load(model_dir, batch_size=batch_size)
    if len(texts) != len(labels):
        raise FinloraError(f"{len(texts)} texts but {len(labels)} labels; give one per text")
    given = {name for label in labels for name in ([label] if isinstance(label, str) else label)}
    unknown = sorted(given - set(predictor.labels))
    if unknown:
        raise FinloraError(
            f"label(s) {', '.join(unknown)} unknown to the model; it knows "
            f"{', '.join(predictor.labels)}"
        )
    return metrics_block(predictor, texts, labels)


def metrics_block(predictor: Any, texts: Sequence[str], labels: Sequence) -> dict:
    """The metrics of a loaded Predictor on labelled texts, as `finlora evaluate` reports them.

    Args:
        predictor: a `finlora.Predictor`.
        texts: the texts.
        labels: their true labels by name (a list of names per text for a multi-label model),
            all known to the model.

    Returns:
        The metrics block (see `evaluate`), with `calibration` and `conformal` blocks when the
        model is calibrated; multi-label thresholds as saved (thresholds.json).
    """
    from finlora.calibration import uncertainty_blocks
    from finlora.data.prepare import multi_hot
    from finlora.evaluation import apply_thresholds, classification_report, multilabel_report

    logits = predictor.logits(list(texts))
    if predictor.multi_label:
        truth = multi_hot(list(labels), predictor.labels)
        block = multilabel_report(
            truth,
            apply_thresholds(predictor.scores(logits), predictor.thresholds),
            predictor.labels,
            predictor.raw_thresholds,
        )
    else:
        index = {name: i for i, name in enumerate(predictor.labels)}
        truth = [index[label] for label in labels]
        block = classification_report(truth, logits.argmax(-1), predictor.labels)
    block.update(uncertainty_blocks(predictor, logits, truth))
    return block
