"""Multi-label CLAUDETTE benchmark: train the default recipe, print micro-F1 and macro-F1.

    FINLORA_DATA_DIR=/work/shared/datasets HF_HUB_OFFLINE=1 \
        nice python bench/claudette_multilabel.py [--epochs 8] [--output_dir DIR] [...]

Extra `--flag value` pairs override the recipe (any `finlora train` flag). The split is by
document (seeded), so the test documents are unseen Terms of Service. `--baseline` instead
fits finlora's linear reference on the same split in a minute, the one `finlora compare
--strategies baseline` runs: TF-IDF word 1-2-grams, one class-balanced logistic regression
per label, C and per-label thresholds picked on validation. LexGLUE anchors
(UNFAIR-ToS test, its own document split): Legal-BERT 96.0 / 83.0, BERT-base 95.6 / 81.3,
TF-IDF+SVM 95.4 / 78.8 LexGLUE-style micro / macro-F1.

`--train_fraction F` trains on a seeded random F of the training documents (validation and test
unchanged): points of a learning curve, to tell how much more labelled data would buy.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np

from finlora.baseline import train_baseline
from finlora.config import resolve_config
from finlora.data import PreparedData, prepare_data
from finlora.training import train

RECIPE = Path(__file__).resolve().parents[1] / "config" / "claudette_multilabel.yaml"


def parse_overrides(argv: list[str]) -> dict[str, str]:
    if len(argv) % 2:
        raise SystemExit("usage: claudette_multilabel.py [--flag value ...]")
    return {key.lstrip("-"): value for key, value in zip(argv[::2], argv[1::2])}


def keep_training_documents(data: PreparedData, fraction: float, seed: int) -> PreparedData:
    """The same split with only `fraction` of the training documents (whole documents)."""
    documents = np.random.default_rng(seed).permutation(sorted(data.train["group"].unique()))
    kept = documents[: max(1, round(fraction * len(documents)))]
    return data.with_train(data.train[data.train["group"].isin(kept)], train_fraction=fraction)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("transformers", "peft", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    argv = sys.argv[1:]
    run_baseline = "--baseline" in argv
    overrides = parse_overrides([a for a in argv if a != "--baseline"])
    fraction = float(overrides.pop("train_fraction", 1.0))
    if not 0 < fraction <= 1:
        raise SystemExit("--train_fraction must be in (0, 1]")
    config = resolve_config(overrides, str(RECIPE))
    data = prepare_data(config)
    if fraction < 1:
        data = keep_training_documents(data, fraction, config.seed)
    results = (
        train_baseline(data, f"{config.output_dir}-baseline", config.seed)
        if run_baseline
        else train(config, data)
    )
    groups = results.data.groups
    print(f"\nclaudette_tos, split by document: train {len(groups['train'])} docs "
          f"({len(data.train)} sentences), "
          f"validation {len(groups['validation'])}, test {len(groups['test'])} "
          f"({', '.join(groups['test'])})")  # fmt: skip
    selected = (
        f"C={results.C:g} picked on validation"
        if run_baseline
        else f"{results.precision}, best epoch {results.best_epoch}"
    )
    print(f"{results.strategy} on {results.base_model}, {selected}, "
          f"{results.train_seconds:.0f} s training, {results.device}")  # fmt: skip
    for split in ("validation", "test"):
        block = getattr(results, split)
        print(f"{split:<11} micro-F1 {block.micro_f1:.4f}  macro-F1 {block.macro_f1:.4f}  "
              f"LexGLUE-style micro {block.lexglue.micro_f1:.4f} / macro "
              f"{block.lexglue.macro_f1:.4f}  (n={block.size})")  # fmt: skip
    print(f"{'label':<6}{'P':>8}{'R':>8}{'F1':>8}{'support':>9}{'threshold':>11}")
    test = results.test
    for name, row in test.per_label.items():
        print(f"{name:<6}{row.precision:>8.3f}{row.recall:>8.3f}{row.f1:>8.3f}"
              f"{row.support:>9}{test.thresholds[name]:>11.3f}")  # fmt: skip
    zero = [name for name, row in test.per_label.items() if row.f1 == 0]
    print(f"goal macro-F1 >= 0.80: {'met' if test.macro_f1 >= 0.80 else 'NOT met'}; "
          f"labels at zero F1: {', '.join(zero) or 'none'}")  # fmt: skip


if __name__ == "__main__":
    main()
