"""The floor any transformer must beat: TF-IDF word 1-2 grams + class-balanced logistic regression.

Trained on the same `PreparedData` as the transformers and written in the same layout
(`final_results.json` with the same `test`/`validation` blocks), so `finlora compare` reads
every strategy the same way. The model is saved without pickles: the vocabulary and settings
as JSON, the IDF weights and coefficients as safetensors.
"""

from __future__ import annotations

import logging
import platform
import resource
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import sklearn
from safetensors.numpy import load_file, save_file
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from threadpoolctl import threadpool_limits

from finlora import __version__
from finlora.artifacts import RESULTS, atomic_output_dir, read_json, write_json
from finlora.data import PreparedData
from finlora.errors import FinloraError
from finlora.evaluation import classification_report, format_report

log = logging.getLogger(__name__)

MODEL_JSON = "baseline.json"
WEIGHTS = "baseline.safetensors"
# Inverse regularisation strengths tried; the best validation macro-F1 wins (ties: smaller C).
C_GRID = (0.25, 1.0, 4.0, 16.0, 64.0)
VECTORIZER_SETTINGS = {"ngram_range": (1, 2), "sublinear_tf": True, "lowercase": True}


class BaselineModel:
    """A fitted TF-IDF vectorizer and logistic regression with the label names."""

    def __init__(self, vectorizer: TfidfVectorizer, classifier: LogisticRegression, labels):
        self.vectorizer = vectorizer
        self.classifier = classifier
        self.labels = list(labels)

    @classmethod
    def fit(cls, texts: Sequence[str], label_ids: Sequence[int], labels, c: float, seed: int):
        vectorizer = TfidfVectorizer(**VECTORIZER_SETTINGS)
        features = vectorizer.fit_transform(list(texts))
        classifier = LogisticRegression(
            C=c, class_weight="balanced", max_iter=5000, random_state=seed
        )
        # One BLAS thread: these small sparse problems run 10x slower when BLAS threads
        # compete for busy cores (measured: 16 s instead of 1 s for one fit on PhraseBank).
        with threadpool_limits(limits=1):
            classifier.fit(features, list(label_ids))
        return cls(vectorizer, classifier, labels)

    def predict_ids(self, texts: Sequence[str]) -> list[int]:
        return self.classifier.predict(self.vectorizer.transform([str(t) for t in texts])).tolist()

    @property
    def parameter_count(self) -> int:
        return int(self.classifier.coef_.size + self.classifier.intercept_.size)

    def save(self, directory: Path) -> None:
        write_json(
            directory / MODEL_JSON,
            {
                "labels": self.labels,
                "classes": self.classifier.classes_.tolist(),
                "C": self.classifier.C,
                "vectorizer": VECTORIZER_SETTINGS,
                "vocabulary": {term: int(i) for term, i in self.vectorizer.vocabulary_.items()},
            },
        )
        save_file(
            {  # safetensors writes raw buffers: Fortran-ordered arrays would come back transposed
                "idf": np.ascontiguousarray(self.vectorizer.idf_),
                "coef": np.ascontiguousarray(self.classifier.coef_),
                "intercept": np.ascontiguousarray(self.classifier.intercept_),
            },
            str(directory / WEIGHTS),
        )

    @classmethod
    def load(cls, directory: str | Path) -> BaselineModel:
        directory = Path(directory)
        if not (directory / MODEL_JSON).is_file() or not (directory / WEIGHTS).is_file():
            raise FinloraError(
                f"{directory} holds no baseline model ({MODEL_JSON}, {WEIGHTS}); "
                "pass a baseline run directory of `finlora compare`"
            )
        meta = read_json(directory / MODEL_JSON)
        arrays = load_file(str(directory / WEIGHTS))
        settings = {**meta["vectorizer"], "ngram_range": tuple(meta["vectorizer"]["ngram_range"])}
        vectorizer = TfidfVectorizer(vocabulary=meta["vocabulary"], **settings)
        vectorizer.idf_ = arrays["idf"]
        classifier = LogisticRegression(C=meta["C"], class_weight="balanced")
        classifier.classes_ = np.asarray(meta["classes"])
        classifier.coef_ = arrays["coef"]
        classifier.intercept_ = arrays["intercept"]
        return cls(vectorizer, classifier, meta["labels"])


def peak_rss_mb() -> float:
    """This process's peak resident set size (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_baseline(data: PreparedData, output_dir: str | Path, seed: int = 42) -> dict:
    """Fit on train, pick C on validation macro-F1, test, write the run directory atomically."""
    train_ids, validation_ids = data.label_ids("train"), data.label_ids("validation")
    started = time.perf_counter()
    selection, best = [], None
    for c in C_GRID:
        model = BaselineModel.fit(data.train["text"], train_ids, data.labels, c, seed)
        score = float(
            f1_score(
                validation_ids,
                model.predict_ids(data.validation["text"]),
                labels=list(range(len(data.labels))),
                average="macro",
                zero_division=0,
            )
        )
        selection.append({"C": c, "macro_f1": score})
        if best is None or score > best[0]:
            best = (score, model)
    model = best[1]
    train_seconds = time.perf_counter() - started
    log.info(
        "baseline: TF-IDF 1-2 grams (%d features) + balanced logistic regression, C=%g "
        "(validation macro-F1 %.4f) in %.1fs",
        len(model.vectorizer.vocabulary_),
        model.classifier.C,
        best[0],
        train_seconds,
    )

    validation = classification_report(
        validation_ids, model.predict_ids(data.validation["text"]), data.labels
    )
    test = None
    if not data.test.empty:
        test = classification_report(
            data.label_ids("test"), model.predict_ids(data.test["text"]), data.labels
        )
        log.info("\n%s", format_report(test, "baseline test"))
    params = model.parameter_count
    results = {
        "task": "single_label",
        "labels": data.labels,
        "base_model": "tfidf-logreg",
        "strategy": "baseline",
        "test": test,
        "validation": validation,
        "selection": selection,
        "C": model.classifier.C,
        "features": len(model.vectorizer.vocabulary_),
        "history": [],
        "trainable_params": params,
        "total_params": params,
        "trainable_fraction": 1.0,
        "train_seconds": round(train_seconds, 2),
        "peak_memory_mb": round(peak_rss_mb(), 1),
        "device": f"cpu ({platform.processor() or platform.machine()})",
        "seed": seed,
        "data": data.info,
        "versions": {
            "finlora": __version__,
            "python": platform.python_version(),
            "scikit-learn": sklearn.__version__,
        },
    }
    with atomic_output_dir(output_dir) as staging:
        model.save(staging)
        write_json(staging / RESULTS, results)
    return results
