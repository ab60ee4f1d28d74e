"""Multi-label CLAUDETTE benchmark: train the default recipe, print micro-F1 and macro-F1.

    FINLORA_DATA_DIR=/work/shared/datasets HF_HUB_OFFLINE=1 \
        nice python bench/claudette_multilabel.py [--epochs 8] [--output_dir DIR] [...]

Extra `--flag value` pairs override the recipe (any `finlora train` flag). The split is by
document (seeded), so the test documents are unseen Terms of Service. `--baseline` instead
fits a linear reference on the same split in a minute: TF-IDF word 1-2-grams, one
class-balanced logistic regression per label, thresholds tuned on validation. LexGLUE anchors
(UNFAIR-ToS test, its own document split): Legal-BERT 96.0 / 83.0, BERT-base 95.6 / 81.3,
TF-IDF+SVM 95.4 / 78.8 LexGLUE-style micro / macro-F1.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np

from finlora.config import resolve_config
from finlora.data import prepare_data
from finlora.evaluation import apply_thresholds, multilabel_report, tune_thresholds
from finlora.training import train

RECIPE = Path(__file__).resolve().parents[1] / "config" / "claudette_multilabel.yaml"


def parse_overrides(argv: list[str]) -> dict[str, str]:
    if len(argv) % 2:
        raise SystemExit("usage: claudette_multilabel.py [--flag value ...]")
    return {key.lstrip("-"): value for key, value in zip(argv[::2], argv[1::2])}


def baseline(config) -> dict:
    """TF-IDF + logistic regression per label on the recipe's split, in final_results form."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    data = prepare_data(config)
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    features = vectorizer.fit_transform(data.train["text"])
    targets = data.label_matrix("train")
    models = [
        LogisticRegression(C=10.0, class_weight="balanced", max_iter=2000).fit(features, y)
        for y in targets.T
    ]

    def scores(split):
        x = vectorizer.transform(getattr(data, split)["text"])
        return np.stack([m.predict_proba(x)[:, 1] for m in models], axis=1)

    thresholds = tune_thresholds(data.label_matrix("validation"), scores("validation"))
    blocks = {
        split: multilabel_report(
            data.label_matrix(split), apply_thresholds(scores(split), thresholds), data.labels,
            thresholds,
        )
        for split in ("validation", "test")
    }  # fmt: skip
    return {"strategy": "tfidf+logreg", "base_model": "-", "precision": "fp64",
            "best_epoch": None, "train_seconds": 0.0, "device": "cpu", "data": data.info,
            **blocks}  # fmt: skip


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("transformers", "peft", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    argv = sys.argv[1:]
    run_baseline = "--baseline" in argv
    config = resolve_config(parse_overrides([a for a in argv if a != "--baseline"]), str(RECIPE))
    results = baseline(config) if run_baseline else train(config)
    groups = results["data"]["groups"]
    print(f"\nclaudette_tos, split by document: train {len(groups['train'])} docs, "
          f"validation {len(groups['validation'])}, test {len(groups['test'])} "
          f"({', '.join(groups['test'])})")  # fmt: skip
    print(f"{results['strategy']} on {results['base_model']}, {results['precision']}, "
          f"best epoch {results['best_epoch']}, {results['train_seconds']:.0f} s training, "
          f"{results['device']}")  # fmt: skip
    for split in ("validation", "test"):
        block = results[split]
        print(f"{split:<11} micro-F1 {block['micro_f1']:.4f}  macro-F1 {block['macro_f1']:.4f}  "
              f"LexGLUE-style micro {block['lexglue']['micro_f1']:.4f} / macro "
              f"{block['lexglue']['macro_f1']:.4f}  (n={block['size']})")  # fmt: skip
    print(f"{'label':<6}{'P':>8}{'R':>8}{'F1':>8}{'support':>9}{'threshold':>11}")
    test = results["test"]
    for name, row in test["per_label"].items():
        print(f"{name:<6}{row['precision']:>8.3f}{row['recall']:>8.3f}{row['f1']:>8.3f}"
              f"{row['support']:>9}{test['thresholds'][name]:>11.3f}")  # fmt: skip
    zero = [name for name, row in test["per_label"].items() if row["f1"] == 0]
    print(f"goal macro-F1 >= 0.80: {'met' if test['macro_f1'] >= 0.80 else 'NOT met'}; "
          f"labels at zero F1: {', '.join(zero) or 'none'}")  # fmt: skip


if __name__ == "__main__":
    main()
