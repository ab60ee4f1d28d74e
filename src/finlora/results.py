"""`final_results.json`, typed: what a finished run (transformer or baseline) reports.

`FinalResults` is the whole file; its blocks are small dataclasses (`SingleLabelMetrics` /
`MultiLabelMetrics` for `test` and `validation`, `EpochRecord` rows of `history`, ...). Writers
build a `FinalResults` and write `to_dict()`; readers call `load_results` / `read_results`,
which check the file against the JSON Schema shipped beside this module
(`schemas/final_results.schema.json`) and return the typed object.

`schema_version` (`SCHEMA_VERSION`) goes up when a key is removed or renamed or changes its
type or meaning; a new key does not change it (readers ignore keys they do not know). Files
written before `schema_version` existed have the shape of version 1 and are read as such.
See docs/results-schema.md for what each key means.
"""

from __future__ import annotations

import functools
import json
import types
import typing
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar, Union

from finlora.artifacts import RESULTS
from finlora.errors import FinloraError

SCHEMA_VERSION = 1
SCHEMA_FILE = "final_results.schema.json"
BASELINE = "baseline"
MULTI_LABEL = "multi_label"

R = TypeVar("R", bound="Record")


def optional(key: str | None = None, **kwargs: Any) -> Any:
    """A field that is left out of the JSON while it is None (a key only some runs have)."""
    return field(default=None, metadata={"omit_none": True, "key": key}, **kwargs)


class Record:
    """A dataclass that is one JSON object of the file: `to_dict()` and `from_dict()`.

    A field named `extra` (a dict) keeps the keys this version does not declare, so a block
    that others extend (`data`) round-trips whole.
    """

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            if f.name == "extra" or f.metadata.get("internal"):
                continue
            value = getattr(self, f.name)
            if value is None and f.metadata.get("omit_none") and not self._keeps_none(f.name):
                continue
            out[json_key(f)] = encode(value)
        out.update(getattr(self, "extra", None) or {})
        return out

    def _keeps_none(self, name: str) -> bool:
        """Whether an optional field that is None is still written (as null)."""
        return False

    @classmethod
    def from_dict(cls: type[R], payload: dict[str, Any]) -> R:
        hints = typing.get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        known = set()
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        for f in fields(cls):  # type: ignore[arg-type]
            if f.name == "extra" or f.metadata.get("internal"):
                continue
            key = json_key(f)
            known.add(key)
            if key in payload:
                kwargs[f.name] = decode(hints[f.name], payload[key])
        if "extra" in names:
            kwargs["extra"] = {k: v for k, v in payload.items() if k not in known}
        return cls(**kwargs)


def json_key(f) -> str:
    return f.metadata.get("key") or f.name


def encode(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    return value


def decode(hint: Any, value: Any) -> Any:
    """A JSON value as the type `hint` says: records, lists and dicts of them, or as is."""
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        records = [a for a in options if isinstance(a, type) and issubclass(a, Record)]
        if records and isinstance(value, dict):
            return pick_record(records, value).from_dict(value)
        return decode(options[0], value) if len(options) == 1 else value
    if origin is list:
        (item,) = typing.get_args(hint)
        return [decode(item, v) for v in value]
    if origin is dict:
        _, item = typing.get_args(hint)
        return {k: decode(item, v) for k, v in value.items()}
    if isinstance(hint, type) and issubclass(hint, Record):
        return hint.from_dict(value)
    return value


def pick_record(options: list[type[Record]], value: dict) -> type[Record]:
    """The first record type whose required keys `value` all has (e.g. single- vs multi-label)."""
    for option in options:
        required = {json_key(f) for f in fields(option) if is_required(f)}  # type: ignore[arg-type]
        if required <= set(value):
            return option
    return options[0]


def is_required(f) -> bool:
    from dataclasses import MISSING

    return f.default is MISSING and f.default_factory is MISSING


record = dataclass(kw_only=True)


# ---------------------------------------------------------------- metric blocks


@record
class ClassScores(Record):
    """One class (single-label) or one label (multi-label) of a split."""

    precision: float
    recall: float
    f1: float
    support: int


@record
class ReliabilityBin(Record):
    """One equal-width confidence bin (lower, upper]: its texts, their mean confidence and
    accuracy (null when empty)."""

    lower: float
    upper: float
    count: int
    confidence: float | None = None
    accuracy: float | None = None


@record
class Reliability(Record):
    """The reliability diagram of a split: the ECE bins of the raw and calibrated scores
    (single-label: top-class probability; multi-label: every label's score, pooled)."""

    bins: int
    raw: list[ReliabilityBin]
    calibrated: list[ReliabilityBin]


@record
class CalibrationScores(Record):
    """`calibration` of a split (`finlora.calibration.calibration_report`): expected
    calibration error (15 equal-width bins) and Brier score of the raw and the calibrated
    probabilities; `temperature` is the fitted T (null for multi-label, per-label Platt)."""

    ece_before: float
    ece_after: float
    brier_before: float
    brier_after: float
    temperature: float | None = None
    reliability: Reliability | None = optional()  # runs since the reliability diagram


@record
class ConformalScores(Record):
    """`conformal` of a split (`finlora.calibration.conformal_report`): the prediction sets
    at `coverage_target`, how often they held the truth, and the texts sent to review."""

    coverage_target: float
    coverage: float
    review_share: float
    accepted: int
    accuracy_on_accepted: float | None = None
    mean_set_size: float


@record
class SingleLabelMetrics(Record):
    """`test` / `validation` of a single-label run (`finlora.evaluation.classification_report`)."""

    size: int
    macro_f1: float
    accuracy: float
    weighted_f1: float
    per_class: dict[str, ClassScores]
    confusion_matrix: list[list[int]]  # rows: true class, columns: predicted, in label order
    prediction_distribution: dict[str, int]
    never_predicted: list[str]
    calibration: CalibrationScores | None = optional()  # models with calibration.json
    conformal: ConformalScores | None = optional()


@record
class LexGlueScores(Record):
    """F1 with LexGLUE's extra "no label" column, for comparison with published numbers."""

    micro_f1: float
    macro_f1: float


@record
class RowsWithoutLabel(Record):
    true: int
    predicted: int


@record
class MultiLabelMetrics(Record):
    """`test` / `validation` of a multi-label run (`finlora.evaluation.multilabel_report`)."""

    size: int
    micro_f1: float
    macro_f1: float
    samples_f1: float
    subset_accuracy: float
    lexglue: LexGlueScores
    per_label: dict[str, ClassScores]
    prediction_distribution: dict[str, int]
    rows_without_label: RowsWithoutLabel
    never_predicted: list[str]
    thresholds: dict[str, float] | None = optional()  # on the raw (uncalibrated) scores
    calibration: CalibrationScores | None = optional()  # models with calibration.json
    conformal: ConformalScores | None = optional()

    @property
    def accuracy(self) -> float:
        """Exact match (every label of a row right), as `compare` reports accuracy."""
        return self.subset_accuracy


SplitMetrics = Union[SingleLabelMetrics, MultiLabelMetrics]  # noqa: UP007 (resolved at runtime)


# ---------------------------------------------------------------- run facts


@record
class EpochRecord(Record):
    """One row of `history`: the training loss and the validation metrics of an epoch."""

    epoch: float
    train_loss: float | None = optional()
    validation_loss: float | None = optional()
    macro_f1: float
    accuracy: float | None = optional()  # single-label
    micro_f1: float | None = optional()  # multi-label
    # multi-label, at 0.5 thresholds; its JSON key is no Python name
    macro_f1_at_half: float | None = optional("macro_f1_at_0.5")


@record
class Distributed(Record):
    """How the batch was laid out over processes (`finlora.distributed.batch_layout`)."""

    world_size: int
    backend: str | None
    per_device_batch_size: int
    gradient_accumulation_steps: int
    global_batch_size: int


@record
class LossReport(Record):
    """The loss trained with and its weights: class weights (single-label) or per-label
    `pos_weight` (multi-label); the JSON key says which."""

    name: str
    weights: list[float] | None = None
    focal_gamma: float
    multi_label: bool = field(default=False, metadata={"internal": True})

    @property
    def weights_key(self) -> str:
        return "pos_weight" if self.multi_label else "class_weights"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, self.weights_key: self.weights, "focal_gamma": self.focal_gamma}

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> LossReport:
        multi_label = "pos_weight" in payload
        return cls(
            name=payload["name"],
            weights=payload["pos_weight" if multi_label else "class_weights"],
            focal_gamma=payload["focal_gamma"],
            multi_label=multi_label,
        )


@record
class TokenLengths(Record):
    """Token lengths of the training texts (`finlora.data.lengths.length_stats`)."""

    min: int
    mean: float
    p50: float
    p90: float
    p95: float
    p99: float
    max: int
    max_length: int
    truncated: int
    truncated_share: float


@record
class FileReport(Record):
    """One input file and what cleaning removed from it (`finlora.data.validate`)."""

    path: str
    sha256: str
    rows_read: int
    empty_texts_dropped: int
    missing_labels_dropped: int
    duplicates_dropped: int
    conflicting_texts_dropped: int
    conflicting_examples: list[str]
    rows_kept: int


@record
class DataReport(Record):
    """`data`: where the data came from, what cleaning dropped, and the split
    (`PreparedData.info`). Keys added by callers (e.g. a training fraction) are in `extra`."""

    source: str
    dataset: str | None
    problem_type: str
    files: dict[str, FileReport]
    duplicates_dropped: int
    conflicting_texts_dropped: int
    empty_texts_dropped: int
    leaked_rows_dropped: int
    class_counts: dict[str, int]
    imbalance_ratio: float
    imbalanced: bool
    split_strategy: str
    fold: int | None = optional()  # cross-validation (`compare --folds`) only
    folds: int | None = optional()
    group_column: str | None = optional()  # grouped data only
    sizes: dict[str, int]
    split_sha256: dict[str, str]
    split_class_counts: dict[str, dict[str, int]]
    rows_without_label: dict[str, int] | None = optional()  # multi-label only
    groups: dict[str, list[str | int]] | None = optional()  # grouped data only
    extra: dict[str, Any] = field(default_factory=dict)


@record
class Refit(Record):
    """`refit`: the second model, trained on training + validation rows (`--refit`)."""

    epochs: float
    train_rows: int
    train_seconds: float
    selected_model_test: SplitMetrics | None  # the selected model's test block, before the refit


@record
class BaselineChoice(Record):
    """One regularisation strength the baseline tried, with its validation macro-F1."""

    C: float
    macro_f1: float


# ---------------------------------------------------------------- the file


@record
class FinalResults(Record):
    """Everything `final_results.json` holds.

    Transformer runs (`strategy` lora / full) have `pooling`, `best_epoch`, `distributed`,
    `precision`, `loss`, `train_token_lengths`, `warnings` and, with `--refit`, `refit`;
    baseline runs (`strategy` baseline) have `selection`, `C` and `features` instead.
    """

    schema_version: int = SCHEMA_VERSION
    task: str  # "single_label" or "multi_label"
    labels: list[str]
    base_model: str
    strategy: str  # "lora", "full" or "baseline"
    pooling: str | None = optional()
    test: SplitMetrics | None  # None when the test split is empty
    validation: SplitMetrics
    selection: list[BaselineChoice] | None = optional()
    C: float | None = optional()
    features: int | None = optional()
    best_epoch: float | None = optional()  # written (maybe null) by every transformer run
    history: list[EpochRecord]
    trainable_params: int
    total_params: int
    trainable_fraction: float
    train_seconds: float
    peak_memory_mb: float
    device: str
    distributed: Distributed | None = optional()
    precision: str | None = optional()
    seed: int
    loss: LossReport | None = optional()
    data: DataReport
    train_token_lengths: TokenLengths | None = optional()
    warnings: list[str] | None = optional()
    versions: dict[str, str]
    refit: Refit | None = optional()

    def _keeps_none(self, name: str) -> bool:
        return name == "best_epoch" and not self.is_baseline

    @property
    def multi_label(self) -> bool:
        return self.task == MULTI_LABEL

    @property
    def is_baseline(self) -> bool:
        return self.strategy == BASELINE


# ---------------------------------------------------------------- reading and checking


@functools.cache
def results_schema() -> dict[str, Any]:
    """The JSON Schema of `final_results.json` (shipped as package data)."""
    text = resources.files("finlora").joinpath("schemas", SCHEMA_FILE).read_text("utf-8")
    return json.loads(text)


def validation_errors(payload: Any) -> list[str]:
    """What is wrong with `payload` as a `final_results.json`, one line per problem ([] if
    nothing), the most relevant first."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(results_schema())
    errors = sorted(validator.iter_errors(payload), key=jsonschema.exceptions.relevance)
    return [describe_error(error) for error in errors]


def describe_error(error) -> str:
    """`test.macro_f1: 'high' is not of type 'number'`: where, then what (for a failed
    oneOf/anyOf, the branch that came closest)."""
    from jsonschema.exceptions import best_match

    while error.context:
        error = best_match(error.context)
    where = ".".join(str(part) for part in error.absolute_path) or "(top level)"
    return f"{where}: {error.message}"


def validate_results(payload: Any, source: str | Path = RESULTS) -> None:
    """Raise a one-line FinloraError naming the first problems if `payload` does not match
    the schema; files without `schema_version` are checked as version 1."""
    if isinstance(payload, dict) and "schema_version" not in payload:
        payload = {"schema_version": 1, **payload}  # files from before versioning
    version = payload.get("schema_version") if isinstance(payload, dict) else None
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise FinloraError(
            f"{source} has schema_version {version}, written by a newer finlora; this one reads "
            f"up to {SCHEMA_VERSION}: upgrade finlora"
        )
    problems = validation_errors(payload)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise FinloraError(f"{source} is not a valid {RESULTS}: " + "; ".join(problems[:3]) + more)


def parse_results(payload: dict[str, Any], source: str | Path = RESULTS) -> FinalResults:
    """Check `payload` against the schema and return it typed."""
    payload = {"schema_version": 1, **payload}  # a file's own version wins; none: version 1
    validate_results(payload, source)
    return FinalResults.from_dict(payload)


def load_results(path: str | Path) -> FinalResults:
    """Read, check and type one `final_results.json` (or the one inside a run directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FinloraError(f"{path} does not exist; pass a finished run's directory") from None
    except json.JSONDecodeError as exc:
        raise FinloraError(f"{path} is not JSON ({exc.msg}, line {exc.lineno})") from None
    return parse_results(payload, path)


def read_results(model_dir: str | Path) -> FinalResults | None:
    """A run directory's results, None if it has no `final_results.json` (yet)."""
    path = Path(model_dir) / RESULTS
    return load_results(path) if path.is_file() else None
