"""Typed training settings: defaults < YAML recipe (`--config`) < command-line flags.

Every field of `TrainConfig` is both a recipe key and a `--flag` of the same name, so the
CLI, the recipes in `config/` and the resolved config saved beside the artifacts can never
drift apart.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from finlora.errors import FinloraError

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_DATASET = "phrasebank_allagree"
LOSSES = ("auto", "ce", "weighted_ce", "focal", "bce", "weighted_bce")
PROBLEM_TYPES = ("auto", "single_label", "multi_label")
POOLINGS = ("cls", "mean")
WEIGHT_SCHEMES = ("balanced", "inverse", "sqrt", "none")
# transformers schedulers that need no extra arguments (tests check each is transformers').
SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
)
# The smallest value each numeric setting can work with (0 turns the last four off).
LOWEST_VALUES = {
    "batch_size": 1,
    "eval_batch_size": 1,
    "max_length": 1,
    "lora_r": 1,
    "lora_alpha": 1,
    "gradient_accumulation_steps": 1,
    "loraplus_lr_ratio": 0,
    "focal_gamma": 0,
    "weight_decay": 0,
    "early_stopping_patience": 0,
}
# numpy and torch seeds are unsigned 32-bit integers.
MAX_SEED = 2**32 - 1


def _opt(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, **kw})


def _list(help: str) -> Any:
    return field(default=None, metadata={"help": help})


def _choice(value: str, name: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise FinloraError(f"--{name} {value!r} is unknown; use one of {', '.join(choices)}")


class Settings:
    """Base of every settings group: a dataclass whose fields are recipe keys and `--flags`.

    Groups combine by inheritance; `validate` is cooperative, so a class made of several
    groups runs every group's checks (each group checks only its own fields).
    """

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise FinloraError(f"--{f.name} must be a finite number, got {value}")

    def _check_lowest(self, *names: str) -> None:
        for name in names:
            lowest = LOWEST_VALUES[name]
            if getattr(self, name) < lowest:
                raise FinloraError(f"--{name} must be at least {lowest}, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


@dataclass
class DataSource(Settings):
    """Which labelled rows to read (shared by train, compare and profile)."""

    dataset: str | None = _opt(
        None,
        "named dataset: phrasebank_allagree (the default when no --data is given)|"
        "phrasebank_75agree|phrasebank_66agree|phrasebank_50agree|claudette_tos",
    )
    data: str | None = _opt(
        None, "training data file: PhraseBank .txt, .csv, .tsv, .jsonl, .parquet"
    )
    data_dir: str | None = _opt(
        None, "where named datasets live (env FINLORA_DATA_DIR; default: user cache dir)"
    )
    text_column: str = _opt("text", "column holding the text")
    label_column: str = _opt("label", "column holding the label")

    def validate(self) -> None:
        super().validate()
        if self.data and self.dataset:
            raise FinloraError("give either --data FILE or --dataset NAME, not both")


@dataclass
class DataSplit(DataSource):
    """The labels and how the rows are split (what every strategy of a comparison shares)."""

    labels: list[str] | None = _list("label names in the order of class ids, comma-separated")
    problem_type: str = _opt(
        "auto",
        "auto|single_label|multi_label (auto: multi_label when labels are lists, "
        "--label_delimiter or --label_columns is given)",
    )
    label_delimiter: str | None = _opt(
        None, "multi-label: labels in one string column separated by this, e.g. '|'"
    )
    label_columns: list[str] | None = _list(
        "multi-label: one 0/1 column per label, comma-separated (replaces --label_column)"
    )
    group_column: str | None = _opt(
        None,
        "split (and fold) by this column (e.g. document) so a group never lands in two splits "
        "(claudette_tos: document)",
    )
    validation_size: float = _opt(0.1, "fraction held out for model selection (also per fold)")
    test_size: float = _opt(0.1, "fraction held out for the final test report")
    imbalance_threshold: float = _opt(
        1.5, "max/min class ratio above which the split is stratified and the loss weighted"
    )

    def validate(self) -> None:
        super().validate()
        _choice(self.problem_type, "problem_type", PROBLEM_TYPES)
        if self.label_delimiter is not None and self.label_columns:
            raise FinloraError("give either --label_delimiter or --label_columns, not both")
        for name in ("validation_size", "test_size"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise FinloraError(f"--{name} must be in [0, 1), got {value}")
        if self.validation_size + self.test_size >= 0.9:
            raise FinloraError("--validation_size + --test_size leave under 10% for training")
        if self.imbalance_threshold < 1:
            raise FinloraError(
                f"--imbalance_threshold is a max/min class ratio, at least 1; got "
                f"{self.imbalance_threshold}"
            )


@dataclass
class DataSettings(DataSplit):
    """Training data: the shared data settings, explicit split files and the dataset's preset."""

    validation_data: str | None = _opt(None, "explicit validation file (otherwise split off)")
    test_data: str | None = _opt(None, "explicit test file (otherwise split off)")
    preset: str | None = _opt(
        None,
        "recipe applied under --config and flags; set from the named dataset "
        "(phrasebank_*: phrasebank_lora, claudette_tos: claudette_multilabel); "
        "none: the generic defaults",
    )

    def validate(self) -> None:
        super().validate()
        if self.preset is not None and self.preset != "none" and self.preset not in recipes():
            raise FinloraError(
                f"--preset {self.preset!r} is unknown; use none or one of {', '.join(recipes())}"
            )


@dataclass
class ModelSettings(Settings):
    """The encoder and what is trained of it."""

    model_name: str = _opt(DEFAULT_MODEL, "hub id or local directory of the encoder")
    pooling: str = _opt(
        "cls",
        "what the classification head reads: cls (the architecture's own head on the first "
        "token) or mean (the mean of the token states, what mean-pooled sentence-transformers "
        "encoders such as all-MiniLM-L6-v2 were trained to produce)",
    )
    use_lora: bool = _opt(
        True,
        "train a LoRA adapter (default); --no_lora for full fine-tuning",
        off_flag="no_lora",
        off_help="full fine-tuning instead of LoRA",
    )
    freeze_embeddings: bool = _opt(
        False,
        "full fine-tuning: keep the encoder's embedding block (token, position and type "
        "embeddings, their LayerNorm) at its pretrained values, so that words the small "
        "training set never shows keep their place next to the ones it does (LoRA freezes "
        "them anyway)",
    )

    def validate(self) -> None:
        super().validate()
        _choice(self.pooling, "pooling", POOLINGS)


@dataclass
class LoraSettings(Settings):
    """The LoRA adapter (ignored by full fine-tuning)."""

    lora_r: int = _opt(16, "LoRA rank")
    lora_alpha: int = _opt(32, "LoRA scaling numerator")
    lora_dropout: float = _opt(
        0.0, "dropout on the LoRA input (0, as in PEFT: on CPU, dropout costs 15% of a step)"
    )
    loraplus_lr_ratio: float = _opt(
        16.0,
        "LoRA+ (Hayou et al. 2024): the adapters' B matrices learn this many times faster "
        "than A, which converges in fewer epochs (0: plain LoRA)",
    )
    lora_target_modules: list[str] | None = _list(
        "modules to adapt, comma-separated, or all-linear (every linear layer but the head); "
        "default: resolved per architecture"
    )

    def validate(self) -> None:
        super().validate()
        self._check_lowest("lora_r", "lora_alpha", "loraplus_lr_ratio")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise FinloraError(f"--lora_dropout must be in [0, 1), got {self.lora_dropout}")


@dataclass
class LossSettings(Settings):
    """The training loss and its class weights."""

    loss: str = _opt(
        "auto",
        "auto|ce|weighted_ce|focal; multi-label: bce|weighted_bce|focal "
        "(auto: weighted_ce when imbalanced; weighted_bce for multi-label)",
    )
    class_weights: str = _opt(
        "balanced",
        "balanced|inverse|none|<w1,w2,...>; multi-label pos_weight: balanced (neg/pos), "
        "sqrt (its square root)|none|<w1,...>",
    )
    focal_gamma: float = _opt(2.0, "focusing parameter of the focal loss")

    def validate(self) -> None:
        super().validate()
        _choice(self.loss, "loss", LOSSES)
        self._check_lowest("focal_gamma")
        explicit_weights(self.class_weights)  # a scheme or numbers, even when the loss ignores them


@dataclass
class OptimSettings(Settings):
    """The training loop: epochs, batches, learning rate and its schedule, precision."""

    epochs: float | None = _opt(
        None, "training epochs (default: 5 with LoRA, 4 for full fine-tuning)"
    )
    batch_size: int = _opt(16, "per-device training batch size")
    eval_batch_size: int = _opt(64, "per-device evaluation batch size")
    learning_rate: float | None = _opt(
        None,
        "peak learning rate (default: 5e-4 with LoRA, its B matrices x loraplus_lr_ratio; "
        "1e-4 for full fine-tuning)",
    )
    max_length: int = _opt(
        64, "tokens per text; longer texts are truncated (training warns when that is over 5%)"
    )
    group_by_length: bool = _opt(
        True, "batch texts of similar length together (less padding, faster epochs)"
    )
    warmup_ratio: float = _opt(0.1, "fraction of steps with linear warm-up")
    weight_decay: float = _opt(0.01, "AdamW weight decay")
    gradient_accumulation_steps: int = _opt(1, "batches per optimizer step")
    lr_scheduler_type: str = _opt("linear", "learning-rate schedule: " + "|".join(SCHEDULERS))
    early_stopping_patience: int = _opt(0, "stop after N epochs without improvement (0: off)")
    refit: bool = _opt(
        False,
        "after choosing the epoch count (and multi-label thresholds) on validation, train a "
        "new model that many epochs on training + validation rows and ship that one (about "
        "twice the training time; the validation figures reported stay the selected model's)",
    )
    calibrate: bool = _opt(
        True,
        "fit temperature scaling (multi-label: per-label Platt scaling) and conformal "
        "prediction sets on validation, saved as calibration.json (not with --refit)",
    )
    seed: int = _opt(42, "seed for split, initialisation and data order")
    fp16: bool = _opt(False, "fp16 mixed precision (CUDA); without CUDA falls back to bf16/fp32")
    bf16: bool = _opt(True, "bf16 mixed precision where supported (AVX-512 BF16 CPU, GPU)")

    def validate(self) -> None:
        super().validate()
        _choice(self.lr_scheduler_type, "lr_scheduler_type", SCHEDULERS)
        self._check_lowest(
            "batch_size",
            "eval_batch_size",
            "max_length",
            "gradient_accumulation_steps",
            "weight_decay",
            "early_stopping_patience",
        )
        if not 0.0 <= self.warmup_ratio <= 1.0:
            raise FinloraError(f"--warmup_ratio must be in [0, 1], got {self.warmup_ratio}")
        if not 0 <= self.seed <= MAX_SEED:
            raise FinloraError(f"--seed must be in [0, {MAX_SEED}], got {self.seed}")
        if self.epochs is not None and self.epochs <= 0:
            raise FinloraError(f"--epochs must be positive, got {self.epochs}")
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise FinloraError(f"--learning_rate must be positive, got {self.learning_rate}")


@dataclass
class OutputSettings(Settings):
    """Where the artifacts and the resumable checkpoints go."""

    output_dir: str = _opt("outputs/finlora", "where the artifacts are written (atomically)")
    checkpoint_dir: str | None = _opt(
        None,
        "keep per-epoch checkpoints (with optimizer state) here, local or s3://; rerunning "
        "resumes from the latest complete one (default on SageMaker: /opt/ml/checkpoints)",
    )

    def validate(self) -> None:
        super().validate()
        if not self.output_dir.strip():
            raise FinloraError("--output_dir is empty; name the directory for the artifacts")


@dataclass
class CloudSettings(Settings):
    """S3 locations (any path setting may also be an s3://bucket/key URI)."""

    use_s3: bool = _opt(
        False,
        "resolve relative --data/--*_data/--output_dir/--checkpoint_dir under s3://BUCKET/KEY/",
    )
    s3_bucket: str | None = _opt(None, "S3 bucket for --use_s3")
    s3_key: str | None = _opt(None, "key prefix in the bucket for --use_s3")
    s3_endpoint_url: str | None = _opt(
        None, "S3-compatible endpoint (MinIO, LocalStack, ...); env AWS_ENDPOINT_URL also works"
    )

    def validate(self) -> None:
        super().validate()
        if self.use_s3 != bool(self.s3_bucket):
            raise FinloraError("--use_s3 True and --s3_bucket BUCKET go together; give both")


@dataclass
class TrackingSettings(Settings):
    """MLflow experiment tracking and model registry."""

    mlflow: bool = _opt(False, "track the run in MLflow (same as --report_to mlflow)")
    report_to: list[str] | None = _list("integrations to report to: mlflow or none")
    tracking_uri: str | None = _opt(
        None, "MLflow tracking URI (env MLFLOW_TRACKING_URI; default sqlite:///mlruns.db)"
    )
    experiment_name: str = _opt("finlora", "MLflow experiment")
    run_name: str | None = _opt(None, "MLflow run name (default: generated)")
    register_model: str | None = _opt(
        None, "register the trained model under this name in the MLflow Model Registry"
    )

    def validate(self) -> None:
        super().validate()
        unknown = sorted(set(self.report_to or []) - {"mlflow", "none"})
        if unknown:
            raise FinloraError(f"--report_to {','.join(unknown)} is unknown; use mlflow or none")
        if self.register_model and not self.tracks_mlflow:
            raise FinloraError("--register_model needs MLflow tracking: add --mlflow")

    @property
    def tracks_mlflow(self) -> bool:
        return self.mlflow or "mlflow" in (self.report_to or [])


# The groups of a training run, in the order of `finlora train --help` and of the saved
# `finlora_config.yaml`: name -> (group, title of its block of flags).
GROUPS: dict[str, tuple[type[Settings], str]] = {
    "data": (DataSettings, "data and split"),
    "model": (ModelSettings, "model"),
    "lora": (LoraSettings, "LoRA adapter"),
    "loss": (LossSettings, "loss"),
    "optim": (OptimSettings, "training loop"),
    "output": (OutputSettings, "output and checkpoints"),
    "cloud": (CloudSettings, "cloud: S3"),
    "tracking": (TrackingSettings, "experiment tracking (MLflow)"),
}


# The title of each settings class's block of flags in `--help`.
GROUP_TITLES: dict[type, str] = {
    DataSource: GROUPS["data"][1],
    DataSplit: GROUPS["data"][1],
    **{cls: title for cls, title in GROUPS.values()},
}


@dataclass
class TrainConfig(
    TrackingSettings,
    CloudSettings,
    OutputSettings,
    OptimSettings,
    LossSettings,
    LoraSettings,
    ModelSettings,
    DataSettings,
):
    """Everything one training run needs; saved as `finlora_config.yaml` with its artifacts.

    Composed of the groups in `GROUPS` (data, model, LoRA, loss, training loop, output,
    cloud, tracking): construct it and read it flat (`TrainConfig(dataset=...).learning_rate`),
    or one group at a time with `group(name)`. Every field is a recipe key and a `--flag`.
    """

    def __post_init__(self) -> None:
        # LoRA's zero-initialised matrices need a higher learning rate than full fine-tuning
        # (5x here, and LoRA+ moves the B matrices loraplus_lr_ratio times faster still).
        if self.learning_rate is None:
            self.learning_rate = 5e-4 if self.use_lora else 1e-4
        if self.epochs is None:
            self.epochs = 5.0 if self.use_lora else 4.0
        self.validate()

    def validate(self) -> None:
        """Reject settings that cannot work, with the fix in the message."""
        super().validate()
        self.validate_class_weights()

    def validate_class_weights(self) -> None:
        """A scheme name or positive numbers, checked now even when the loss ignores them."""
        explicit_weights(self.class_weights)
        if self.class_weights == "sqrt" and self.problem_type == "single_label":
            raise FinloraError(SQRT_IS_MULTI_LABEL)

    def group(self, name: str) -> Settings:
        """One group of the settings (`"data"`, `"model"`, ... as in `GROUPS`)."""
        cls = GROUPS[name][0]
        return cls(**{f.name: getattr(self, f.name) for f in fields(cls)})

    def groups(self) -> dict[str, dict[str, Any]]:
        """The settings by group: {"data": {...}, "model": {...}, ...}."""
        return {
            name: {f.name: getattr(self, f.name) for f in fields(cls)}
            for name, (cls, _) in GROUPS.items()
        }

    @classmethod
    def resolve(cls, config: str | Path | None = None, **settings: Any) -> TrainConfig:
        """Settings the way `finlora train` resolves them.

        Args:
            config: a YAML recipe (path, or the name of a packaged recipe such as
                `claudette_multilabel`), like `--config`.
            **settings: settings that win over the recipe, like flags; strings are converted.

        Returns:
            defaults < the named dataset's preset < the recipe < `settings`.
        """
        return resolve_config(settings, str(config) if config else None, cls)


STRATEGIES = ("full", "lora", "baseline")
# Fewer resamples than this leave the 2.5% and 97.5% percentiles resting on one or two values.
MIN_BOOTSTRAP = 100
# Settings of a comparison that every strategy must share (the data and its split).
SHARED_KEYS = tuple(f.name for f in fields(DataSplit))


@dataclass
class CompareConfig(DataSplit):
    """What to compare, on which data; each field is a `finlora compare --flag`."""

    strategies: list[str] | None = _opt(None, "comma-separated subset of full,lora,baseline")
    lora_config: str = _opt("config/phrasebank_lora.yaml", "recipe of the LoRA runs")
    full_config: str = _opt("config/phrasebank_full.yaml", "recipe of the full fine-tuning runs")
    model_name: str | None = _opt(None, "encoder for both transformer runs (default: recipes')")
    train_overrides: list[str] | None = _opt(
        None, "KEY=VALUE,... applied to both transformer recipes, e.g. epochs=2,max_length=64"
    )
    folds: int = _opt(
        0, "stratified K-fold cross-validation with K folds (0: one split); by group if grouped"
    )
    seeds: int = _opt(
        1, "training seeds per split/fold: seed, seed+1, ... (the deterministic baseline: once)"
    )
    seed: int = _opt(42, "seed of the split/folds and first training seed")
    bootstrap: int = _opt(1000, "bootstrap resamples for the 95% interval of test macro-F1")
    output_dir: str = _opt("reports/compare", "where runs, report and plots are written")

    def validate(self) -> None:
        self.strategies = list(self.strategies or STRATEGIES)
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown or len(set(self.strategies)) != len(self.strategies):
            raise FinloraError(
                f"--strategies {','.join(self.strategies)} is invalid; "
                f"use a comma-separated subset of {','.join(STRATEGIES)}"
            )
        if self.folds == 1 or self.folds < 0:
            raise FinloraError(f"--folds must be 0 (one split) or at least 2, got {self.folds}")
        if self.seeds < 1:
            raise FinloraError(f"--seeds must be at least 1, got {self.seeds}")
        if self.bootstrap < MIN_BOOTSTRAP:
            raise FinloraError(
                f"--bootstrap must be at least {MIN_BOOTSTRAP} resamples for a 95% interval, "
                f"got {self.bootstrap}"
            )
        if self.folds == 0 and self.test_size <= 0:
            raise FinloraError("--test_size must be positive: the comparison is on the test set")
        super().validate()  # the shared data settings
        self.data_config()

    def data_config(self) -> TrainConfig:
        """The data and split settings as a TrainConfig (what `prepare_data` reads)."""
        return TrainConfig(**{key: getattr(self, key) for key in SHARED_KEYS}, seed=self.seed)

    @property
    def seed_list(self) -> list[int]:
        return [self.seed + i for i in range(self.seeds)]


@dataclass
class ProfileConfig(DataSource):
    """What `finlora profile` describes; each field is a `finlora profile --flag`."""

    model_name: str = _opt(DEFAULT_MODEL, "tokenizer used to count tokens")
    max_length: int = _opt(
        OptimSettings.max_length, "the training max_length: longer texts get truncated"
    )
    top_tokens: int = _opt(15, "most frequent words listed per class")
    output_dir: str = _opt("reports/profile", "where profile.md, profile.json and plots go")

    def validate(self) -> None:
        super().validate()
        if self.max_length < 1 or self.top_tokens < 1:
            raise FinloraError("--max_length and --top_tokens must be at least 1")

    def data_config(self) -> TrainConfig:
        """The data settings as a TrainConfig (what the data loaders read)."""
        return TrainConfig(**{f.name: getattr(self, f.name) for f in fields(DataSource)})


SQRT_IS_MULTI_LABEL = (
    "--class_weights sqrt is a multi-label pos_weight scheme; for single-label use balanced, "
    "inverse, none or one positive number per class"
)


def explicit_weights(scheme: str) -> list[float] | None:
    """`--class_weights` given as numbers (`1,2.5,1`), None for a scheme name."""
    if scheme in WEIGHT_SCHEMES:
        return None
    try:
        weights = [float(w) for w in scheme.split(",")]
    except ValueError:
        weights = []
    if not weights or not all(0 < w < math.inf for w in weights):
        raise FinloraError(
            f"--class_weights {scheme!r}: use {', '.join(WEIGHT_SCHEMES)} or positive numbers, "
            "one per class, like 1,2.5,1"
        )
    return weights


def field_types(cls: type = TrainConfig) -> dict[str, type]:
    """Field name -> the plain type a flag's value converts to (`str | None` -> str)."""
    hints = typing.get_type_hints(cls)
    out: dict[str, type] = {}
    for name, hint in hints.items():
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if _is_union(hint):
            hint = args[0]
        out[name] = list if typing.get_origin(hint) is list else hint
    return out


def nullable_fields(cls: type = TrainConfig) -> set[str]:
    """Fields that may be None (`str | None`): the others need a value."""
    return {
        name
        for name, hint in typing.get_type_hints(cls).items()
        if _is_union(hint) and type(None) in typing.get_args(hint)
    }


def _is_union(hint: Any) -> bool:
    return isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "y", "on"}:
        return True
    if text in {"0", "false", "no", "n", "off"}:
        return False
    raise FinloraError(f"expected true or false, got {value!r}")


def coerce(name: str, value: Any, cls: type = TrainConfig) -> Any:
    """Convert a flag string or YAML value to the field's type, or explain why not."""
    kind = field_types(cls)[name]
    if value is None:
        if name in nullable_fields(cls):
            return None
        raise FinloraError(f"{name} has no value; give one or leave the setting out")
    try:
        if kind is bool:
            return parse_bool(value)
        if kind is list:
            items = value if isinstance(value, list) else str(value).split(",")
            return [str(v).strip() for v in items if str(v).strip()]
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return kind(value)
    except (TypeError, ValueError) as exc:
        raise FinloraError(f"{name}: cannot read {value!r} as {kind.__name__}") from exc


RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
# The recipes each named dataset trains with unless --config or flags say otherwise:
# (with LoRA, with full fine-tuning). PhraseBank's are the defaults, spelled out.
DATASET_PRESETS = {
    "phrasebank_allagree": ("phrasebank_lora", "phrasebank_full"),
    "phrasebank_75agree": ("phrasebank_lora", "phrasebank_full"),
    "phrasebank_66agree": ("phrasebank_lora", "phrasebank_full"),
    "phrasebank_50agree": ("phrasebank_lora", "phrasebank_full"),
    "claudette_tos": ("claudette_multilabel", "claudette_multilabel"),
}
# A preset says how to train, not on what nor where: these recipe keys stay the user's (and
# LoRA targets are resolved per architecture, so a preset works with any --model_name).
PRESET_SKIPS = frozenset({"dataset", "data", "data_dir", "output_dir", "lora_target_modules"})
# Settings that belong to the preset's strategy: another strategy keeps its own defaults.
STRATEGY_KEYS = frozenset({"use_lora", "learning_rate", "epochs"})


def recipes() -> list[str]:
    """Names of the recipes shipped in the package (`finlora/recipes/NAME.yaml`)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def recipe_file(path: str | Path) -> Path:
    """A recipe path as given; else a packaged recipe of that name (`config/NAME.yaml`,
    `NAME.yaml` or `NAME`), so the documented paths work from any directory."""
    path = Path(path)
    if path.is_file() or path.is_absolute():
        return path
    packaged = RECIPES_DIR / (path.name if path.suffix == ".yaml" else f"{path.name}.yaml")
    if path.parent in (Path("."), Path("config")) and packaged.is_file():
        return packaged
    return path


def load_recipe(path: str | Path, cls: type = TrainConfig) -> dict[str, Any]:
    """Read a YAML recipe; unknown keys are an error, never silently ignored.

    Keys are flat (`learning_rate: 1e-4`) or nested by group (`optim: {learning_rate: 1e-4}`,
    the layout of a saved `finlora_config.yaml` is flat with a comment per group).
    """
    path = recipe_file(path)
    if not path.is_file():
        raise FinloraError(f"config file {path} does not exist; see config/ for recipes")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise FinloraError(f"config file {path} is not UTF-8 text; save it as UTF-8") from exc
    except yaml.YAMLError as exc:
        raise FinloraError(f"config file {path} is not valid YAML: {exc}".splitlines()[0]) from exc
    if not isinstance(raw, dict):
        raise FinloraError(f"config file {path} must be a mapping of setting: value")
    known = {f.name for f in fields(cls)}
    raw = _flatten_groups(raw, known, path) if cls is TrainConfig else raw
    unknown = sorted(str(key) for key in raw if key not in known)
    if unknown:
        raise FinloraError(
            f"config file {path}: unknown key(s) {', '.join(unknown)}; "
            f"valid keys are the `finlora train` flags (see `finlora train --help`)"
        )
    try:
        return {k: coerce(k, v, cls) for k, v in raw.items()}
    except FinloraError as exc:
        raise FinloraError(f"config file {path}: {exc}") from exc


def _flatten_groups(raw: dict, known: set[str], path: Path) -> dict:
    """`{group: {key: value}}` blocks (named as in GROUPS) become flat keys."""
    flat: dict = {}
    for key, value in raw.items():
        if key in GROUPS and key not in known and isinstance(value, dict):
            group_keys = {f.name for f in fields(GROUPS[key][0])}
            stray = sorted(str(k) for k in value if k not in group_keys)
            if stray:
                raise FinloraError(
                    f"config file {path}: {', '.join(stray)} not in group {key} "
                    f"(its keys: {', '.join(sorted(group_keys))})"
                )
            items = value.items()
        else:
            items = [(key, value)]
        for name, item in items:
            if name in flat:
                raise FinloraError(f"config file {path}: {name} is given twice")
            flat[name] = item
    return flat


def preset_values(values: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The preset that applies under these recipe + flag `values` and the settings it gives.

    An explicit `preset` (a packaged recipe's name, or `none`) wins over the dataset's; a
    preset of the other strategy than `use_lora` asks for gives neither its strategy, nor its
    learning rate, nor its epochs.
    """
    name = values.get("preset")
    dataset = values.get("dataset") or (None if values.get("data") else DEFAULT_DATASET)
    if name is None:
        if dataset not in DATASET_PRESETS:
            return None, {}
        with_lora, without = DATASET_PRESETS[dataset]
        name = without if values.get("use_lora") is False else with_lora
    if name == "none":
        return name, {}
    if name not in recipes():
        raise FinloraError(
            f"--preset {name!r} is unknown; use none or one of {', '.join(recipes())}"
        )
    preset = load_recipe(RECIPES_DIR / f"{name}.yaml")
    skips = set(PRESET_SKIPS)
    if "use_lora" in values and values["use_lora"] != preset.get("use_lora", True):
        skips |= STRATEGY_KEYS
    return name, {k: v for k, v in preset.items() if k not in skips}


def resolve_config(
    overrides: dict[str, Any], config_path: str | None = None, cls: type = TrainConfig
) -> Any:
    """Defaults < the named dataset's preset (training) < recipe file < explicit overrides
    (flags the user actually typed)."""
    values: dict[str, Any] = {}
    if config_path:
        values.update(load_recipe(config_path, cls))
    values.update({k: coerce(k, v, cls) for k, v in overrides.items()})
    if cls is TrainConfig:
        name, preset = preset_values(values)
        values = {**preset, **values, "preset": name}
    return cls(**values)


def save_config(config: Any, path: str | Path) -> None:
    """Write the resolved settings as flat YAML keys, one commented block per group."""
    values = dataclasses.asdict(config)
    if not isinstance(config, TrainConfig):
        Path(path).write_text(yaml.safe_dump(values, sort_keys=False))
        return
    blocks = []
    for name, (group, title) in GROUPS.items():
        block = {f.name: values[f.name] for f in fields(group)}
        blocks.append(f"# --- {name}: {title} ---\n" + yaml.safe_dump(block, sort_keys=False))
    Path(path).write_text("".join(blocks))
