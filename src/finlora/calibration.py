"""Calibrated scores and conformal prediction sets, fitted on the validation split.

Two steps run after training, both on the validation rows the selected model never trained on:

1. **Calibration.** Single-label: temperature scaling (Guo et al. 2017), one scalar T > 0
   minimising the validation negative log-likelihood of softmax(logits / T); the argmax, hence
   every label and macro-F1, is unchanged. Multi-label: per-label Platt scaling,
   sigmoid(a * logit + b) with a > 0, fitted by the binary log-loss on Platt's smoothed targets
   (so a label without validation positives cannot run off to b = -inf). Each map is
   increasing, so a per-label threshold tuned on the raw scores (thresholds.json) decides
   exactly as its image under the map does on the calibrated ones: thresholds stay in the raw
   space on disk and the predictor maps them (`Calibration.map_thresholds`).
2. **Conformal prediction sets** (split conformal, LAC: nonconformity 1 - p(true label) of the
   calibrated probabilities). With n validation scores and target coverage 1 - alpha the
   threshold is the ceil((n + 1)(1 - alpha))-th smallest score; a label enters a text's set
   when 1 - p(label) <= that quantile. On exchangeable data the set holds the true label with
   probability >= 1 - alpha. All validation scores are saved, so any coverage can be asked
   for at predict time. Multi-label: the same per label over its two outcomes (present,
   absent): a label is "in" when only "present" is in its set, "out" when only "absent" is,
   else "unsure" (coverage then holds per label, not for a whole row).

Everything is saved as `calibration.json` (plain JSON, written atomically) beside the model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from finlora.artifacts import read_json, write_json
from finlora.errors import FinloraError

CALIBRATION = "calibration.json"
FORMAT_VERSION = 1
DEFAULT_COVERAGE = 0.9
ECE_BINS = 15
TEMPERATURE_BOUNDS = (0.05, 20.0)
SLOPE_BOUNDS = (1e-3, 100.0)
IN, OUT, UNSURE = "in", "out", "unsure"


# ---------------------------------------------------------------- probabilities and metrics


def softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -x))


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS):
    """Sum over equal-width confidence bins of (bin share) x |accuracy - mean confidence|.

    Bins are (k/B, (k+1)/B], the first one also holding 0.
    """
    confidence = np.asarray(confidence, dtype=np.float64).ravel()
    correct = np.asarray(correct, dtype=np.float64).ravel()
    if confidence.size == 0:
        return 0.0
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = index == b
        if mask.any():
            total += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(total)


def reliability_bins(
    confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS
) -> list[dict[str, float | int | None]]:
    """The bins of `expected_calibration_error`: per bin its edges, `count`, mean `confidence`
    and `accuracy` (None for an empty bin); the counts sum to the number of scores."""
    confidence = np.asarray(confidence, dtype=np.float64).ravel()
    correct = np.asarray(correct, dtype=np.float64).ravel()
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    out = []
    for b in range(bins):
        mask = index == b
        count = int(mask.sum())
        out.append(
            {
                "lower": round(b / bins, 6),
                "upper": round((b + 1) / bins, 6),
                "count": count,
                "confidence": round(float(confidence[mask].mean()), 6) if count else None,
                "accuracy": round(float(correct[mask].mean()), 6) if count else None,
            }
        )
    return out


def reliability(probabilities: np.ndarray, truth: np.ndarray, multi_label: bool = False):
    """Reliability-diagram bins (15): single-label, the top-class probability against whether
    the top class is right (counts sum to the rows); multi-label, every p(label present)
    against its presence, all labels pooled (counts sum to rows x labels)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    truth = np.asarray(truth)
    if multi_label:
        return reliability_bins(probabilities.ravel(), truth.ravel() > 0.5)
    return reliability_bins(probabilities.max(-1), probabilities.argmax(-1) == truth)


def ece(probabilities: np.ndarray, truth: np.ndarray, multi_label: bool = False) -> float:
    """Top-class ECE (single-label: truth are class ids); multi-label (truth a 0/1 matrix):
    the mean over labels of the ECE of p(label present) against its presence."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    truth = np.asarray(truth)
    if multi_label:
        return float(
            np.mean(
                [
                    expected_calibration_error(probabilities[:, j], truth[:, j])
                    for j in range(probabilities.shape[1])
                ]
            )
        )
    predicted = probabilities.argmax(-1)
    return expected_calibration_error(probabilities.max(-1), predicted == truth)


def brier(probabilities: np.ndarray, truth: np.ndarray, multi_label: bool = False) -> float:
    """Mean over rows of the summed squared error over classes (single-label, truth ids);
    multi-label: the mean over rows and labels of (p - y)^2."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if multi_label:
        return float(np.mean((probabilities - np.asarray(truth, dtype=np.float64)) ** 2))
    onehot = np.eye(probabilities.shape[1])[np.asarray(truth, dtype=int)]
    return float(np.mean(np.sum((probabilities - onehot) ** 2, axis=1)))


# ---------------------------------------------------------------- fitting


def fit_temperature(logits: np.ndarray, truth: Sequence[int]) -> float:
    """The T in TEMPERATURE_BOUNDS minimising the NLL of softmax(logits / T) (bounded Brent
    search over log T: deterministic, no starting point to choose)."""
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, dtype=np.float64)
    truth = np.asarray(truth, dtype=int)
    rows = np.arange(len(truth))

    def nll(log_t: float) -> float:
        scaled = logits / math.exp(log_t)
        top = scaled.max(axis=1, keepdims=True)
        log_z = np.log(np.exp(scaled - top).sum(axis=1)) + top[:, 0]
        return float(np.mean(log_z - scaled[rows, truth]))

    low, high = (math.log(b) for b in TEMPERATURE_BOUNDS)
    found = minimize_scalar(nll, bounds=(low, high), method="bounded", options={"xatol": 1e-6})
    return float(math.exp(found.x))


def fit_platt(logits: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Platt scaling of one label: (a, b) of sigmoid(a * logit + b), a in SLOPE_BOUNDS, fitted
    on Platt's smoothed targets (N+ + 1)/(N+ + 2) and 1/(N- + 2)."""
    from scipy.optimize import minimize

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(truth) > 0.5
    positives, negatives = int(y.sum()), int((~y).sum())
    target = np.where(y, (positives + 1) / (positives + 2), 1 / (negatives + 2))

    def loss(params: np.ndarray) -> tuple[float, np.ndarray]:
        a, b = params
        s = a * z + b
        # binary cross-entropy with logits, and its gradient
        value = np.mean(np.logaddexp(0.0, s) - target * s)
        residual = sigmoid(s) - target
        return float(value), np.array([np.mean(residual * z), np.mean(residual)])

    found = minimize(
        loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B", bounds=[SLOPE_BOUNDS, (-50, 50)]
    )
    return float(found.x[0]), float(found.x[1])


def conformal_quantile(scores: Sequence[float], coverage: float) -> float:
    """Split-conformal threshold: the ceil((n + 1) * coverage)-th smallest of the n scores,
    or +inf when that rank exceeds n (too few rows for this coverage: every label is kept)."""
    check_coverage(coverage)
    ordered = np.sort(np.asarray(scores, dtype=np.float64))
    n = len(ordered)
    rank = math.ceil((n + 1) * coverage - 1e-9)
    if n == 0 or rank > n:
        return math.inf
    return float(ordered[max(rank, 1) - 1])


def check_coverage(coverage: float) -> None:
    if not 0.0 < coverage < 1.0:
        raise FinloraError(f"--coverage must be between 0 and 1 (exclusive), got {coverage}")


def lac_scores(probabilities: np.ndarray, truth: np.ndarray, multi_label: bool) -> np.ndarray:
    """Nonconformity 1 - p(true outcome): one per row (single-label), or a (rows, labels)
    matrix for multi-label (the outcome being the label's presence or absence)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if multi_label:
        y = np.asarray(truth) > 0.5
        return np.where(y, 1.0 - probabilities, probabilities)
    return 1.0 - probabilities[np.arange(len(truth)), np.asarray(truth, dtype=int)]


# ---------------------------------------------------------------- the saved object


@dataclass
class Calibration:
    """What calibration.json holds: the score map and the validation nonconformity scores.

    `temperature` (single-label) or `slopes`/`intercepts` (multi-label, per label);
    `scores`: single-label a list, multi-label one list per label.
    """

    labels: list[str]
    multi_label: bool
    temperature: float | None = None
    slopes: list[float] | None = None
    intercepts: list[float] | None = None
    scores: list | None = None
    coverage: float = DEFAULT_COVERAGE
    rows: int = 0
    _quantiles: dict = field(default_factory=dict, repr=False)

    # -- mapping scores
    def apply(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities from raw logits."""
        logits = np.asarray(logits, dtype=np.float64)
        if self.multi_label:
            return sigmoid(logits * np.asarray(self.slopes) + np.asarray(self.intercepts))
        return softmax(logits / self.temperature)

    def map_thresholds(self, raw: Sequence[float]) -> list[float]:
        """Raw-space thresholds (on sigmoid(logit)) in the calibrated space: same decisions."""
        raw = np.clip(np.asarray(raw, dtype=np.float64), 0.0, 1.0)
        with np.errstate(divide="ignore"):
            z = np.log(raw) - np.log1p(-raw)
        return sigmoid(z * np.asarray(self.slopes) + np.asarray(self.intercepts)).tolist()

    def unmap_thresholds(self, calibrated: Sequence[float]) -> list[float]:
        calibrated = np.clip(np.asarray(calibrated, dtype=np.float64), 0.0, 1.0)
        with np.errstate(divide="ignore"):
            s = np.log(calibrated) - np.log1p(-calibrated)
        return sigmoid((s - np.asarray(self.intercepts)) / np.asarray(self.slopes)).tolist()

    # -- prediction sets
    def quantile(self, coverage: float | None = None):
        """The conformal threshold (single-label) or one per label, for `coverage`."""
        coverage = self.coverage if coverage is None else coverage
        if coverage not in self._quantiles:
            if self.multi_label:
                value = [conformal_quantile(s, coverage) for s in self.scores]
            else:
                value = conformal_quantile(self.scores, coverage)
            self._quantiles[coverage] = value
        return self._quantiles[coverage]

    def set_matrix(self, probabilities: np.ndarray, coverage: float | None = None) -> np.ndarray:
        """Single-label: (rows, classes) booleans, True where the class is in the set."""
        return 1.0 - np.asarray(probabilities) <= self.quantile(coverage) + 1e-12

    def label_status(self, probabilities: np.ndarray, coverage: float | None = None):
        """Multi-label: (rows, labels) array of "in" / "out" / "unsure"."""
        probabilities = np.asarray(probabilities, dtype=np.float64)
        q = np.asarray(self.quantile(coverage)) + 1e-12
        present, absent = 1.0 - probabilities <= q, probabilities <= q
        status = np.full(probabilities.shape, UNSURE, dtype=object)
        status[present & ~absent] = IN
        status[absent & ~present] = OUT
        return status

    def prediction_sets(
        self, probabilities: np.ndarray, coverage: float | None = None
    ) -> tuple[list[list[str]], list[list[str]], list[bool]]:
        """Per row: the labels in the set (multi-label: surely present), the unsure labels
        (multi-label only; [] for single-label) and whether the row needs review (single-label:
        a set of size != 1; multi-label: any unsure label)."""
        labels = np.asarray(self.labels, dtype=object)
        if self.multi_label:
            status = self.label_status(probabilities, coverage)
            sets = [labels[row == IN].tolist() for row in status]
            unsure = [labels[row == UNSURE].tolist() for row in status]
            return sets, unsure, [bool(u) for u in unsure]
        members = self.set_matrix(probabilities, coverage)
        sets = [labels[row].tolist() for row in members]
        return sets, [[] for _ in sets], [len(s) != 1 for s in sets]

    # -- fitting and files
    @classmethod
    def fit(
        cls,
        logits: np.ndarray,
        truth: np.ndarray,
        labels: list[str],
        multi_label: bool,
        coverage: float = DEFAULT_COVERAGE,
    ) -> Calibration:
        """Fit the score map, then the conformal scores on the calibrated validation rows."""
        check_coverage(coverage)
        logits = np.asarray(logits, dtype=np.float64)
        if multi_label:
            fitted = [fit_platt(logits[:, j], np.asarray(truth)[:, j]) for j in range(len(labels))]
            calibration = cls(
                list(labels),
                True,
                slopes=[a for a, _ in fitted],
                intercepts=[b for _, b in fitted],
                coverage=coverage,
                rows=len(logits),
            )
        else:
            calibration = cls(
                list(labels),
                False,
                temperature=fit_temperature(logits, truth),
                coverage=coverage,
                rows=len(logits),
            )
        scores = lac_scores(calibration.apply(logits), truth, multi_label)
        calibration.scores = (
            [sorted(np.round(scores[:, j], 8).tolist()) for j in range(len(labels))]
            if multi_label
            else sorted(np.round(scores, 8).tolist())
        )
        return calibration

    def to_dict(self) -> dict:
        payload: dict = {
            "format_version": FORMAT_VERSION,
            "labels": self.labels,
            "multi_label": self.multi_label,
            "fitted_on": "validation",
            "rows": self.rows,
        }
        if self.multi_label:
            payload["method"] = "platt"
            payload["platt"] = {
                lab: {"slope": a, "intercept": b}
                for lab, a, b in zip(self.labels, self.slopes, self.intercepts)
            }
        else:
            payload["method"] = "temperature"
            payload["temperature"] = self.temperature
        quantile = self.quantile()
        payload["conformal"] = {
            "method": "lac",
            "score": "1 - calibrated probability of the true outcome",
            "coverage": self.coverage,
            "quantile": (
                dict(zip(self.labels, map(_finite, quantile)))
                if self.multi_label
                else _finite(quantile)
            ),
            "scores": dict(zip(self.labels, self.scores)) if self.multi_label else self.scores,
        }
        return payload

    @classmethod
    def from_dict(cls, payload: dict, source: str | Path = CALIBRATION) -> Calibration:
        try:
            if payload.get("format_version", 1) > FORMAT_VERSION:
                raise FinloraError(
                    f"{source} was written by a newer finlora (format_version "
                    f"{payload['format_version']}); upgrade finlora"
                )
            labels = list(payload["labels"])
            conformal = payload.get("conformal") or {}
            multi_label = bool(payload["multi_label"])
            scores = conformal.get("scores")
            if multi_label:
                platt = payload["platt"]
                if scores is not None:
                    scores = [list(scores[lab]) for lab in labels]
                return cls(
                    labels,
                    True,
                    slopes=[float(platt[lab]["slope"]) for lab in labels],
                    intercepts=[float(platt[lab]["intercept"]) for lab in labels],
                    scores=scores,
                    coverage=float(conformal.get("coverage", DEFAULT_COVERAGE)),
                    rows=int(payload.get("rows", 0)),
                )
            return cls(
                labels,
                False,
                temperature=float(payload["temperature"]),
                scores=list(scores) if scores is not None else None,
                coverage=float(conformal.get("coverage", DEFAULT_COVERAGE)),
                rows=int(payload.get("rows", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise FinloraError(
                f"{source} is not a valid {CALIBRATION} ({type(exc).__name__}: {exc}); retrain, "
                "or delete it to predict with raw scores"
            ) from None

    @property
    def has_sets(self) -> bool:
        return self.scores is not None

    def save(self, directory: str | Path) -> None:
        write_json(Path(directory) / CALIBRATION, self.to_dict())


def _finite(value: float) -> float | None:
    return None if math.isinf(value) else value


def load_calibration(model_dir: str | Path, labels: list[str]) -> Calibration | None:
    """calibration.json of a model dir, None if it has none (a model trained before it
    existed, or with --calibrate false)."""
    path = Path(model_dir) / CALIBRATION
    if not path.is_file():
        return None
    calibration = Calibration.from_dict(read_json(path), path)
    if calibration.labels != list(labels):
        raise FinloraError(
            f"{path} is for labels {calibration.labels}, the model has {list(labels)}; retrain "
            "or delete it"
        )
    return calibration


# ---------------------------------------------------------------- reports


def calibration_report(
    logits: np.ndarray, truth: np.ndarray, calibration: Calibration
) -> dict[str, float | None]:
    """`calibration` of a metrics block: ECE (15 bins) and Brier before and after, and the
    reliability-diagram bins of the raw and the calibrated scores."""
    multi_label = calibration.multi_label
    raw = sigmoid(logits) if multi_label else softmax(logits)
    calibrated = calibration.apply(logits)
    return {
        "ece_before": round(ece(raw, truth, multi_label), 6),
        "ece_after": round(ece(calibrated, truth, multi_label), 6),
        "brier_before": round(brier(raw, truth, multi_label), 6),
        "brier_after": round(brier(calibrated, truth, multi_label), 6),
        "temperature": None if multi_label else round(calibration.temperature, 6),
        "reliability": {
            "bins": ECE_BINS,
            "raw": reliability(raw, truth, multi_label),
            "calibrated": reliability(calibrated, truth, multi_label),
        },
    }


def pool_reliability(blocks: Sequence[dict]) -> dict | None:
    """`calibration` blocks of several runs (folds, seeds) as one: ECE/Brier averaged, the
    reliability bins summed (counts) and count-weighted (confidence, accuracy)."""
    blocks = [b for b in blocks if b and b.get("reliability")]
    if not blocks:
        return None
    pooled: dict = {
        key: float(np.mean([b[key] for b in blocks]))
        for key in ("ece_before", "ece_after", "brier_before", "brier_after")
    }
    first = blocks[0]["reliability"]
    pooled["reliability"] = {"bins": first["bins"]}
    for key in ("raw", "calibrated"):
        rows = []
        for i, edges in enumerate(first[key]):
            parts = [b["reliability"][key][i] for b in blocks]
            count = sum(p["count"] for p in parts)
            mean = {
                name: (
                    round(sum(p[name] * p["count"] for p in parts if p["count"]) / count, 6)
                    if count
                    else None
                )
                for name in ("confidence", "accuracy")
            }
            rows.append({"lower": edges["lower"], "upper": edges["upper"], "count": count, **mean})
        pooled["reliability"][key] = rows
    return pooled


def plot_reliability(block: dict, path: str | Path, title: str = "Reliability (test)") -> bool:
    """A reliability diagram of a `calibration` block's `reliability` (raw and calibrated
    accuracy against confidence, bin counts below) as a PNG; False when matplotlib is not
    installed or the block has no bins."""
    bins = (block or {}).get("reliability")
    if not bins:
        return False
    try:  # a bare Figure: no pyplot, so a notebook's backend is left alone
        from matplotlib.figure import Figure
    except ImportError:
        return False
    fig = Figure(figsize=(5, 5.6))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], color="#999", linestyle="--", linewidth=1, label="perfect")
    width = 1.0 / bins["bins"]
    for key, colour, offset in (("raw", "#DD8452", -0.2), ("calibrated", "#4C72B0", 0.2)):
        rows = [b for b in bins[key] if b["count"]]
        ece_key = "ece_before" if key == "raw" else "ece_after"
        label = f"{key} (ECE {block[ece_key]:.3f})" if ece_key in block else key
        top.plot(
            [b["confidence"] for b in rows], [b["accuracy"] for b in rows],
            marker="o", color=colour, label=label,
        )  # fmt: skip
        bottom.bar(
            [(b["lower"] + b["upper"]) / 2 + offset * width for b in bins[key]],
            [b["count"] for b in bins[key]], width=0.4 * width, color=colour,
        )  # fmt: skip
    top.set(xlim=(0, 1), ylim=(0, 1.02), ylabel="accuracy", title=title)
    top.legend(loc="upper left", fontsize=8)
    bottom.set(xlabel="confidence", ylabel="texts")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def conformal_report(
    probabilities: np.ndarray,
    truth: np.ndarray,
    calibration: Calibration,
    coverage: float | None = None,
) -> dict[str, float | int | None]:
    """`conformal` of a metrics block: how often the set held the truth, the share of texts
    sent to review, and the accuracy on the texts that were not.

    Multi-label: coverage is per label (the label's true status was not excluded), averaged;
    accuracy_on_accepted is the exact-match rate of the "in" labels on rows with no unsure
    label.
    """
    coverage = calibration.coverage if coverage is None else coverage
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if calibration.multi_label:
        y = np.asarray(truth) > 0.5
        status = calibration.label_status(probabilities, coverage)
        covered = np.where(y, status != OUT, status != IN)
        review = (status == UNSURE).any(axis=1)
        accepted = ~review
        exact = ((status == IN) == y).all(axis=1)
        mean_size = float(np.mean(np.where(status == UNSURE, 2, 1).sum(axis=1)))
        empirical = float(covered.mean())
    else:
        truth = np.asarray(truth, dtype=int)
        members = calibration.set_matrix(probabilities, coverage)
        empirical = float(members[np.arange(len(truth)), truth].mean())
        sizes = members.sum(axis=1)
        review = sizes != 1
        accepted = ~review
        exact = probabilities.argmax(-1) == truth
        mean_size = float(sizes.mean())
    return {
        "coverage_target": coverage,
        "coverage": round(empirical, 6),
        "review_share": round(float(review.mean()), 6),
        "accepted": int(accepted.sum()),
        "accuracy_on_accepted": round(float(exact[accepted].mean()), 6) if accepted.any() else None,
        "mean_set_size": round(mean_size, 6),
    }


def uncertainty_blocks(predictor, logits: np.ndarray, truth) -> dict:
    """The `calibration` and `conformal` blocks of a metrics block for a predictor that has a
    calibration ({} when it has none, or was loaded with calibrated=False)."""
    calibration = predictor.calibration
    if calibration is None:
        return {}
    truth = np.asarray(truth)
    blocks: dict = {"calibration": calibration_report(logits, truth, calibration)}
    if predictor.coverage is not None:
        blocks["conformal"] = conformal_report(
            calibration.apply(logits), truth, calibration, predictor.coverage
        )
    return blocks
