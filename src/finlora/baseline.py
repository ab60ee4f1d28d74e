"""The floor any transformer must beat: TF-IDF word 1-2 grams + class-balanced logistic regression.

Trained on the same `PreparedData` as the transformers and written in the same layout
(`final_results.json` with the same `test`/`validation` blocks), so `finlora compare` reads
every strategy the same way. Multi-label data gets one balanced logistic regression per label
and per-label thresholds tuned on validation, as the transformers do. The model is saved
without pickles: the vocabulary and settings as JSON, the IDF weights and coefficients as
safetensors.
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
from threadpoolctl import threadpool_limits

from finlora import __version__
from finlora.artifacts import RESULTS, atomic_output_dir, read_json, write_json
from finlora.data import PreparedData
from finlora.errors import FinloraError
from finlora.evaluation import (
    apply_thresholds,
    classification_report,
    format_multilabel_report,
    format_report,
    multilabel_report,
    tune_thresholds,
)
from finlora.results import (
    BASELINE,
    BaselineChoice,
    DataReport,
    FinalResults,
    SplitMetrics,
    decode,
)

log = logging.getLogger(__name__)

MODEL_JSON = "baseline.json"
WEIGHTS = "baseline.safetensors"
# Inverse regularisation strengths tried; the best validation macro-F1 wins (ties: smaller C).
C_GRID = (0.25, 1.0, 4.0, 16.0, 64.0)
VECTORIZER_SETTINGS = {"ngram_range": (1, 2), "sublinear_tf": True, "lowercase": True}


def _logistic_regression(c: float) -> LogisticRegression:
    """lbfgs: deterministic, so the baseline needs no seed."""
    return LogisticRegression(C=c, class_weight="balanced", max_iter=5000)


def _constant_classifier(label: str, y: np.ndarray, features: int, c: float):
    """A label that is on (or off) for every training text: a logistic regression that says so.

    scikit-learn cannot fit one class; the transformers train on such a label too (with a
    warning), so the baseline does the same instead of failing the comparison.
    """
    log.warning("baseline: label %s is %s for every training text", label,
                "on" if y.any() else "off")  # fmt: skip
    classifier = _logistic_regression(c)
    classifier.classes_ = np.array([0, 1])
    classifier.coef_ = np.zeros((1, features))
    classifier.intercept_ = np.array([30.0 if y.any() else -30.0])
    return classifier


class BaselineModel:
    """A fitted TF-IDF vectorizer and logistic regression with the label names.

    Multi-label: `classifiers` holds one binary logistic regression per label and
    `thresholds` the per-label decision thresholds; single-label: one multinomial classifier.
    """

    def __init__(
        self,
        vectorizer: TfidfVectorizer,
        classifiers: list[LogisticRegression],
        labels,
        thresholds: list[float] | None = None,
    ):
        self.vectorizer = vectorizer
        self.classifiers = classifiers
        self.labels = list(labels)
        self.thresholds = thresholds

    @property
    def multi_label(self) -> bool:
        return self.thresholds is not None

    @property
    def C(self) -> float:
        return float(self.classifiers[0].C)

    @classmethod
    def fit_features(cls, vectorizer: TfidfVectorizer, features, targets, labels, c):
        """The classifier(s) on texts `vectorizer` already turned into `features` (one
        vectorizer serves every C tried). `targets`: class ids, or a multi-hot matrix
        (rows, labels) for multi-label data."""
        targets = np.asarray(targets)
        columns = targets.T if targets.ndim == 2 else [targets]
        # One BLAS thread: these small sparse problems run 10x slower when BLAS threads
        # compete for busy cores (measured: 16 s instead of 1 s for one fit on PhraseBank).
        with threadpool_limits(limits=1):
            classifiers = [
                _logistic_regression(c).fit(features, y)
                if targets.ndim == 1 or 0 < y.sum() < len(y)
                else _constant_classifier(label, y, features.shape[1], c)
                for label, y in zip(labels, columns)
            ]
        thresholds = [0.5] * len(labels) if targets.ndim == 2 else None
        return cls(vectorizer, classifiers, labels, thresholds)

    def features(self, texts: Sequence[str]):
        return self.vectorizer.transform([str(t) for t in texts])

    def predict_ids(self, texts: Sequence[str]) -> list[int]:
        return self.classifiers[0].predict(self.features(texts)).tolist()

    def label_scores(self, texts: Sequence[str]) -> np.ndarray:
        """Multi-label: each label's probability, shape (texts, labels)."""
        x = self.features(texts)
        return np.stack([m.predict_proba(x)[:, 1] for m in self.classifiers], axis=1)

    def predict_label_matrix(self, texts: Sequence[str]) -> np.ndarray:
        return apply_thresholds(self.label_scores(texts), self.thresholds)

    @property
    def parameter_count(self) -> int:
        return int(sum(m.coef_.size + m.intercept_.size for m in self.classifiers))

    def save(self, directory: Path) -> None:
        write_json(
            directory / MODEL_JSON,
            {
                "labels": self.labels,
                "classes": [m.classes_.tolist() for m in self.classifiers],
                "C": self.C,
                "thresholds": self.thresholds,
                "vectorizer": VECTORIZER_SETTINGS,
                "vocabulary": {term: int(i) for term, i in self.vectorizer.vocabulary_.items()},
            },
        )
        save_file(
            {  # safetensors writes raw buffers: Fortran-ordered arrays would come back transposed
                "idf": np.ascontiguousarray(self.vectorizer.idf_),
                "coef": np.ascontiguousarray(np.vstack([m.coef_ for m in self.classifiers])),
                "intercept": np.concatenate([m.intercept_ for m in self.classifiers]),
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
        classifiers, row = [], 0
        per_classifier = meta["classes"]
        if per_classifier and not isinstance(per_classifier[0], list):
            per_classifier = [per_classifier]  # saved before multi-label baselines
        for classes in per_classifier:
            classifier = _logistic_regression(meta["C"])
            classifier.classes_ = np.asarray(classes)
            rows = 1 if len(classes) == 2 else len(classes)  # binary: one coefficient row
            classifier.coef_ = arrays["coef"][row : row + rows]
            classifier.intercept_ = arrays["intercept"][row : row + rows]
            classifiers.append(classifier)
            row += rows
        return cls(vectorizer, classifiers, meta["labels"], meta.get("thresholds"))


def peak_rss_mb() -> float:
    """This process's peak resident set size (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _split_report(model: BaselineModel, data: PreparedData, split: str) -> dict:
    texts = getattr(data, split)["text"]
    if data.multi_label:
        return multilabel_report(
            data.label_matrix(split), model.predict_label_matrix(texts), data.labels,
            model.thresholds,
        )  # fmt: skip
    return classification_report(data.label_ids(split), model.predict_ids(texts), data.labels)


def train_baseline(data: PreparedData, output_dir: str | Path, seed: int = 42) -> FinalResults:
    """Fit on train, pick C on validation macro-F1, test, write the run directory atomically.

    `seed` is only recorded (the compare run's seed): the fit itself is deterministic.

    Multi-label: each C's per-label thresholds are tuned on validation before scoring it,
    which is what ships (as for the transformers).
    """
    started = time.perf_counter()
    vectorizer = TfidfVectorizer(**VECTORIZER_SETTINGS)
    features = vectorizer.fit_transform(list(data.train["text"]))
    selection, best = [], None
    for c in C_GRID:
        model = BaselineModel.fit_features(
            vectorizer, features, data.targets("train"), data.labels, c
        )
        if data.multi_label:
            model.thresholds = tune_thresholds(
                data.label_matrix("validation"), model.label_scores(data.validation["text"])
            )
        report = _split_report(model, data, "validation")
        selection.append({"C": c, "macro_f1": report["macro_f1"]})
        if best is None or report["macro_f1"] > best[0]["macro_f1"]:
            best = (report, model)
    validation, model = best
    train_seconds = time.perf_counter() - started
    log.info(
        "baseline: TF-IDF 1-2 grams (%d features) + balanced logistic regression%s, C=%g "
        "(validation macro-F1 %.4f) in %.1fs",
        len(model.vectorizer.vocabulary_),
        " per label" if data.multi_label else "",
        model.C,
        validation["macro_f1"],
        train_seconds,
    )
    test = None
    if not data.test.empty:
        test = _split_report(model, data, "test")
        formatter = format_multilabel_report if data.multi_label else format_report
        log.info("\n%s", formatter(test, "baseline test"))
    params = model.parameter_count
    results = FinalResults(
        task=data.problem_type,
        labels=data.labels,
        base_model="tfidf-logreg",
        strategy=BASELINE,
        test=decode(SplitMetrics, test),
        validation=decode(SplitMetrics, validation),
        selection=[BaselineChoice.from_dict(choice) for choice in selection],
        C=model.C,
        features=len(model.vectorizer.vocabulary_),
        history=[],
        trainable_params=params,
        total_params=params,
        trainable_fraction=1.0,
        train_seconds=round(train_seconds, 2),
        peak_memory_mb=round(peak_rss_mb(), 1),
        device=f"cpu ({platform.processor() or platform.machine()})",
        seed=seed,
        data=DataReport.from_dict(data.info),
        versions={
            "finlora": __version__,
            "python": platform.python_version(),
            "scikit-learn": sklearn.__version__,
        },
    )
    with atomic_output_dir(output_dir) as staging:
        model.save(staging)
        write_json(staging / RESULTS, results.to_dict())
    return results
