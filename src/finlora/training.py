"""Training: the Trainer subclass (it only overrides `compute_loss`) and `train(config)`."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import math
import platform
import resource
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from peft.optimizers import create_loraplus_optimizer
from torch import nn
from torch.utils.data import Dataset
from transformers import (
    DataCollatorWithPadding,
    EarlyStoppingCallback,
    PrinterCallback,
    ProgressCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging as hf_logging

from finlora import __version__
from finlora.artifacts import (
    ADAPTER_DIR,
    RESOLVED_CONFIG,
    RESULTS,
    THRESHOLDS,
    TRAINING_ARGS,
    atomic_output_dir,
    check_output_dir,
    write_json,
    write_model_card,
)
from finlora.config import TrainConfig, save_config
from finlora.data import PreparedData, prepare_data
from finlora.data.lengths import TRUNCATION_WARNING_SHARE, length_stats, token_lengths
from finlora.distributed import (
    batch_layout,
    check_same_data_on_all_ranks,
    ddp_backend,
    is_main_process,
)
from finlora.errors import FinloraError
from finlora.evaluation import (
    apply_thresholds,
    classification_report,
    format_multilabel_report,
    format_report,
    macro_f1_metrics,
    multilabel_metrics,
    multilabel_report,
    tune_thresholds,
)
from finlora.losses import build_loss, class_weights, pos_weights, resolve_loss_name
from finlora.modeling import (
    apply_lora,
    check_max_length,
    check_only_adapters_train,
    freeze_embeddings,
    input_token_limit,
    load_classifier,
    load_tokenizer,
    log_parameter_report,
    merge_adapter,
    to_cpu_fp32,
)
from finlora.predictor import Predictor

log = logging.getLogger(__name__)


class WeightedLossTrainer(Trainer):
    """A `Trainer` whose loss is a module passed in (weighted CE, focal, ...)."""

    # Our losses are per-batch means, so Trainer must divide them by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, loss_fn: nn.Module, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.loss_fn = loss_fn.to(self.args.device)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = self.loss_fn(outputs.logits, labels)
        return (loss, outputs) if return_outputs else loss


class EncodedTexts(Dataset):
    """Tokenized texts (unpadded; the collator pads each batch) with their targets.

    A target is a class id, or a multi-hot row of floats for multi-label.
    """

    def __init__(self, tokenizer, texts: Sequence[str], targets: Sequence, max_length: int):
        self.encodings = tokenizer(list(texts), truncation=True, max_length=max_length)
        self.targets = list(targets)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> dict:
        item = {key: values[i] for key, values in self.encodings.items()}
        item["labels"] = self.targets[i]
        return item


class EpochSummary(TrainerCallback):
    """One readable line per epoch: train loss and the validation metrics."""

    def __init__(self) -> None:
        self.train_loss: float | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.train_loss = logs["loss"]
            if args.eval_strategy == "no":  # nothing to evaluate: the loss is the line
                log.info(
                    "epoch %.0f/%.0f: train loss %.4f",
                    state.epoch or 0,
                    args.num_train_epochs,
                    self.train_loss,
                )

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        metrics = metrics or {}
        second = "micro_f1" if "eval_micro_f1" in metrics else "accuracy"
        log.info(
            "epoch %.0f/%.0f: train loss %s | validation macro-F1 %.4f, %s %.4f",
            state.epoch or 0,
            args.num_train_epochs,
            f"{self.train_loss:.4f}" if self.train_loss is not None else "-",
            metrics.get("eval_macro_f1", float("nan")),
            second.replace("_f1", "-F1"),
            metrics.get(f"eval_{second}", float("nan")),
        )


class ProgressBar(ProgressCallback):
    """The Trainer's progress bars (tqdm, on stderr) without its log dicts, which it writes to
    stdout: that carries only the command's JSON. EpochSummary logs each epoch instead."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass


def cpu_supports_bf16() -> bool:
    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(check and check())


def precision_policy(fp16: bool, bf16: bool) -> str:
    """Map the user's wishes to what this machine can do: 'fp16', 'bf16' or 'fp32'."""
    cuda = torch.cuda.is_available()
    if fp16:
        if cuda:
            return "fp16"
        fallback = "bf16" if cpu_supports_bf16() else "fp32"
        log.warning("--fp16 needs a CUDA GPU and none is available; using %s instead", fallback)
        return fallback
    if bf16:
        if (cuda and torch.cuda.is_bf16_supported()) or (not cuda and cpu_supports_bf16()):
            return "bf16"
        log.warning("--bf16 is not supported on this device; training in fp32")
    return "fp32"


def device_name() -> str:
    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def peak_memory_mb() -> float:
    """Peak GPU memory allocated on CUDA; otherwise the process's peak resident set size."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def library_versions() -> dict[str, str]:
    import peft
    import sklearn
    import transformers

    return {
        "finlora": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "scikit-learn": sklearn.__version__,
    }


def epoch_history(log_history: list[dict]) -> list[dict]:
    """Per-epoch train loss and validation metrics from the Trainer's log."""
    epochs: dict[float, dict] = {}
    for entry in log_history:
        if "epoch" not in entry:
            continue
        row = epochs.setdefault(round(entry["epoch"], 4), {"epoch": round(entry["epoch"], 4)})
        if "loss" in entry:
            row["train_loss"] = entry["loss"]
        for key, name in (
            ("eval_loss", "validation_loss"),
            ("eval_macro_f1", "macro_f1"),
            ("eval_accuracy", "accuracy"),
            ("eval_micro_f1", "micro_f1"),
            ("eval_macro_f1_at_0.5", "macro_f1_at_0.5"),
        ):
            if key in entry:
                row[name] = entry[key]
    return [row for _, row in sorted(epochs.items()) if "macro_f1" in row]


def report_truncation(
    tokenizer, texts: Sequence[str], max_length: int, model_limit: int | None
) -> dict:
    """Token-length statistics of the training texts; a warning naming a better `max_length`
    when it cuts many of them (the default, 64, suits short sentences, not clauses or filings)."""
    stats = length_stats(token_lengths(tokenizer, list(texts)), max_length)
    log.info(
        "max_length %d truncates %d of %d training texts (%.1f%%); 99th percentile %.0f tokens",
        max_length,
        stats["truncated"],
        len(texts),
        100 * stats["truncated_share"],
        stats["p99"],
    )
    if stats["truncated_share"] > TRUNCATION_WARNING_SHARE:
        covering = min(8 * math.ceil(stats["p99"] / 8), model_limit or math.inf)
        log.warning(
            "max_length %d cuts %.0f%% of the training texts short; --max_length %d keeps 99%% "
            "of them whole (slower per epoch)",
            max_length,
            100 * stats["truncated_share"],
            covering,
        )
    return stats


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


def loraplus_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer | None:
    """LoRA+ (Hayou et al. 2024): AdamW with the B matrices (and biases) at `loraplus_lr_ratio`
    times the learning rate; None lets the Trainer build its usual AdamW."""
    if not (config.use_lora and config.loraplus_lr_ratio > 0):
        return None
    return create_loraplus_optimizer(
        model,
        torch.optim.AdamW,
        lr=config.learning_rate,
        loraplus_lr_ratio=config.loraplus_lr_ratio,
        weight_decay=config.weight_decay,
        loraplus_weight_decay=config.weight_decay,
    )


def resolve_loss(config: TrainConfig, data: PreparedData) -> tuple[str, list[float] | None]:
    """The loss name and its weights: class weights, or per-label pos_weight for multi-label."""
    loss_name = resolve_loss_name(config.loss, data.imbalanced, data.multi_label)
    if loss_name in ("weighted_bce", "focal") and data.multi_label:
        counts = data.class_counts("train")
        return loss_name, pos_weights(counts, len(data.train), config.class_weights)
    if loss_name in ("weighted_ce", "focal"):
        return loss_name, class_weights(data.class_counts("train"), config.class_weights)
    return loss_name, None


def training_arguments(
    config: TrainConfig,
    precision: str,
    checkpoint_dir: str,
    resumable: bool = False,
    select: bool = True,
) -> TrainingArguments:
    """Hugging Face settings; `resumable` keeps optimizer, scheduler and RNG state per epoch;
    `select` evaluates every epoch and loads the best one back at the end."""
    return TrainingArguments(
        output_dir=checkpoint_dir,
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.eval_batch_size,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_ratio,
        weight_decay=config.weight_decay,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        lr_scheduler_type=config.lr_scheduler_type,
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        eval_strategy="epoch" if select else "no",
        save_strategy="epoch" if select or resumable else "no",
        logging_strategy="epoch",
        save_total_limit=1,
        save_only_model=not resumable,
        load_best_model_at_end=select,
        metric_for_best_model="macro_f1" if select else None,
        greater_is_better=True,
        fp16=precision == "fp16",
        bf16=precision == "bf16",
        use_cpu=not torch.cuda.is_available(),
        ddp_backend=ddp_backend(),
        seed=config.seed,
        data_seed=config.seed,
        report_to=[],
        label_names=["labels"],
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )


CHECKPOINT_COMPLETE = "finlora_checkpoint_complete"
CHECKPOINT_RUN = "finlora_run.json"
# Settings that say where things live or are reported, not what is trained.
NOT_TRAINING_SETTINGS = {
    "data", "validation_data", "test_data", "data_dir", "output_dir", "checkpoint_dir",
    "use_s3", "s3_bucket", "s3_key", "s3_endpoint_url", "mlflow", "report_to", "tracking_uri",
    "experiment_name", "run_name", "register_model",
}  # fmt: skip


class MarkCheckpointComplete(TrainerCallback):
    """Mark a checkpoint complete once the Trainer has written all of it (and rotated)."""

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if folder.is_dir():
            (folder / CHECKPOINT_COMPLETE).write_text(f"{state.global_step}\n")


def run_fingerprint(config: TrainConfig, data: PreparedData) -> str:
    """What makes checkpoints reusable: the training settings and the data's content."""
    settings = {k: v for k, v in config.to_dict().items() if k not in NOT_TRAINING_SETTINGS}
    hashes = {split: f.get("sha256") for split, f in data.info.get("files", {}).items()}
    payload = json.dumps({"settings": settings, "data": hashes}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def checkpoint_step(path: Path) -> int:
    return int(path.name.rsplit("-", 1)[1])


def resume_point(checkpoint_dir: Path, fingerprint: str, tidy: bool = True) -> Path | None:
    """The latest complete checkpoint of this same run, after removing half-written ones.

    Only one process may `tidy` (delete, record, re-point); the other ranks of a distributed
    run just read.
    """
    run_file = checkpoint_dir / CHECKPOINT_RUN
    if run_file.is_file() and json.loads(run_file.read_text())["fingerprint"] != fingerprint:
        raise FinloraError(
            f"--checkpoint_dir {checkpoint_dir} holds checkpoints of a different run (other "
            "settings or data); use an empty --checkpoint_dir or delete that one"
        )
    if tidy:
        run_file.write_text(json.dumps({"fingerprint": fingerprint}) + "\n")
    complete = []
    for folder in checkpoint_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        if (folder / CHECKPOINT_COMPLETE).is_file():
            complete.append(folder)
        elif tidy:
            log.warning("removing half-written checkpoint %s", folder)
            shutil.rmtree(folder, ignore_errors=True)
    if not complete:
        return None
    latest = max(complete, key=checkpoint_step)
    # The best checkpoint is recorded as an absolute path; the directory may have moved
    # (downloaded from S3, restored by SageMaker), so point it at this copy.
    state_file = latest / "trainer_state.json"
    state = json.loads(state_file.read_text())
    if tidy and state.get("best_model_checkpoint"):
        state["best_model_checkpoint"] = str(
            checkpoint_dir / Path(state["best_model_checkpoint"]).name
        )
        state_file.write_text(json.dumps(state, indent=2))
    log.info("resuming from %s (step %d)", latest, checkpoint_step(latest))
    return latest


@contextlib.contextmanager
def checkpoint_space(checkpoint_dir: str | Path | None) -> Iterator[Path]:
    """The given checkpoint directory (kept), or a temporary one for a non-resumable run."""
    if checkpoint_dir is None:
        with tempfile.TemporaryDirectory(prefix="finlora-checkpoints-") as tmp:
            yield Path(tmp)
        return
    path = Path(checkpoint_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    yield path


@dataclass
class Fit:
    """One Trainer run: the model it kept and the facts about it that the results report.

    It holds no Trainer, so the optimizer state and the training data go once a run ends.
    """

    model: nn.Module | None
    args: TrainingArguments
    train_rows: int
    history: list[dict]
    best_epoch: float | None
    params: dict
    loss_name: str
    weights: list[float] | None
    layout: dict
    train_token_lengths: dict
    seconds: float


def fit(
    config: TrainConfig,
    data: PreparedData,
    tokenizer,
    precision: str,
    checkpoints: Path,
    *,
    resumable: bool,
    select: bool = True,
    callbacks: Sequence[TrainerCallback] = (),
) -> Fit:
    """Build the model and train it on `data.train`.

    With `select`, it is evaluated on validation every epoch and the best epoch's weights
    (validation macro-F1) are kept; without, it trains `config.epochs` and keeps the last.
    """
    set_seed(config.seed)
    model = load_classifier(config.model_name, data.labels, data.problem_type, config.pooling)
    check_max_length(config.max_length, model.config, config.model_name)
    if config.use_lora:
        model = apply_lora(
            model, config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_target_modules
        )
        check_only_adapters_train(model)
    elif config.freeze_embeddings:
        log.info("embedding block frozen: %s parameters", f"{freeze_embeddings(model):,}")
    params = log_parameter_report(model)

    loss_name, weights = resolve_loss(config, data)
    loss_fn = build_loss(loss_name, weights, config.focal_gamma, data.multi_label)
    log.info(
        "loss: %s%s",
        loss_name,
        f" with {'pos_weight' if data.multi_label else 'class weights'} "
        f"{dict(zip(data.labels, (round(w, 3) for w in weights)))}"
        if weights
        else "",
    )
    lengths = report_truncation(
        tokenizer, data.train["text"], config.max_length, input_token_limit(model.config)
    )
    train_set = EncodedTexts(
        tokenizer, data.train["text"], data.targets("train"), config.max_length
    )
    validation_set = None
    trainer_callbacks: list[TrainerCallback] = [EpochSummary(), MarkCheckpointComplete()]
    if select:
        validation_set = EncodedTexts(
            tokenizer, data.validation["text"], data.targets("validation"), config.max_length
        )
        if config.early_stopping_patience > 0:
            trainer_callbacks.append(EarlyStoppingCallback(config.early_stopping_patience))
    trainer_callbacks += callbacks

    # Each rank has its own checkpoint dir; only rank 0 saves into its own and loads the best
    # checkpoint back at the end, and only rank 0's model is written out.
    resume = None
    if resumable:
        checkpoints.mkdir(parents=True, exist_ok=True)
        resume = resume_point(checkpoints, run_fingerprint(config, data), is_main_process())
    trainer = WeightedLossTrainer(
        model=model,
        args=training_arguments(config, precision, str(checkpoints), resumable, select),
        optimizers=(loraplus_optimizer(model, config), None),
        train_dataset=train_set,
        eval_dataset=validation_set,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=multilabel_metrics if data.multi_label else macro_f1_metrics,
        callbacks=trainer_callbacks,
        loss_fn=loss_fn,
    )
    # The Trainer always adds one of these two, and both print to stdout.
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if hf_logging.is_progress_bar_enabled():  # off with -q
        trainer.add_callback(ProgressBar)
    layout = batch_layout(config.batch_size, config.gradient_accumulation_steps)
    check_same_data_on_all_ranks(data, weights)
    log.info(
        "training %s on %d examples: %s epochs, batch %d per device x %d accumulation x "
        "%d process(es) = %d per step, lr %g, %s, %s",
        "LoRA" if config.use_lora else "all parameters",
        len(train_set),
        config.epochs,
        config.batch_size,
        config.gradient_accumulation_steps,
        layout["world_size"],
        layout["global_batch_size"],
        config.learning_rate,
        precision,
        device_name(),
    )
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - started
    history = epoch_history(trainer.state.log_history)
    return Fit(
        model=trainer.model,
        args=trainer.args,
        train_rows=len(train_set),
        history=history,
        best_epoch=best_epoch(history, trainer.state.best_metric) if select else None,
        params=params,
        loss_name=loss_name,
        weights=weights,
        layout=layout,
        train_token_lengths=lengths,
        seconds=seconds,
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


def best_epoch(history: list[dict], best_metric: float | None) -> float | None:
    """The epoch whose validation macro-F1 (the Trainer's `best_metric`) was kept."""
    return next((r["epoch"] for r in history if r["macro_f1"] == best_metric), None)


def cpu_predictor(model: nn.Module, tokenizer, config: TrainConfig) -> Predictor:
    """The trained model, adapter merged, in fp32 on the CPU: what is saved and evaluated."""
    return Predictor(
        to_cpu_fp32(merge_adapter(model)), tokenizer, config.max_length, config.eval_batch_size
    )


def refit_data(data: PreparedData) -> PreparedData:
    """Training rows plus validation rows: what the refit trains on. Test stays held out."""
    train = pd.concat([data.train, data.validation], ignore_index=True)
    return data.with_train(train)


def train(
    config: TrainConfig,
    data: PreparedData | None = None,
    *,
    output_dir: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    callbacks: Sequence[TrainerCallback] = (),
) -> dict | None:
    """Train, select on validation macro-F1, test, and write the artifacts atomically.

    With `config.refit`, the selected run only chooses the number of epochs (and the
    multi-label thresholds); a second model then trains that many epochs on training plus
    validation rows, and that model is tested and saved.

    Returns the `final_results.json` payload; under a distributed launcher only rank 0
    writes artifacts and gets it, the other ranks return None. `output_dir` and
    `checkpoint_dir` (local paths) override the config's, for callers that stage remote
    locations locally; `callbacks` are added to the Trainer's (e.g. tracking).
    """
    output_dir = output_dir or config.output_dir
    checkpoint_dir = checkpoint_dir or config.checkpoint_dir
    main_process = is_main_process()
    if main_process:
        check_output_dir(output_dir)  # fail before training, not after it
    data = data or prepare_data(config)
    tokenizer = load_tokenizer(config.model_name)
    precision = precision_policy(config.fp16, config.bf16)
    resumable = checkpoint_dir is not None
    with checkpoint_space(checkpoint_dir) as checkpoints:
        selected = fit(
            config, data, tokenizer, precision, checkpoints,
            resumable=resumable, callbacks=callbacks,
        )  # fmt: skip
        refit = selection = None
        if config.refit:
            if main_process:
                selection = assess_selected(
                    cpu_predictor(selected.model, tokenizer, config), data, test=True
                )
            # Only one model in memory at a time: the selected one has given all it is kept for.
            selected = replace(selected, model=None)
            gc.collect()
            epochs = selected.best_epoch or config.epochs
            log.info(
                "refit: training a new model for %g epochs (the selected epoch) on the "
                "training and validation rows",
                epochs,
            )
            refit = fit(
                replace(config, epochs=epochs), refit_data(data), tokenizer, precision,
                checkpoints / "refit", resumable=resumable, select=False,
            )  # fmt: skip
        if not main_process:
            return None

        # The staging dir exists only while writing, so a rank killed during training
        # leaves nothing behind next to the output dir.
        with atomic_output_dir(output_dir) as staging:
            results = write_artifacts(
                staging, tokenizer, config, data, precision, selected, refit, selection
            )
    log.info("artifacts written to %s", output_dir)
    return results


def write_artifacts(
    staging: Path,
    tokenizer,
    config: TrainConfig,
    data: PreparedData,
    precision: str,
    selected: Fit,
    refit: Fit | None = None,
    selection: Selection | None = None,
) -> dict:
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
    test = split_report(predictor, data, "test")
    if test:
        log.info("\n%s", (format_multilabel_report if data.multi_label else format_report)(test))
    warning = None if data.multi_label else single_class_warning(selection.validation, config)
    if warning:
        log.warning(warning)
    results = {
        "task": data.problem_type,
        "labels": data.labels,
        "base_model": config.model_name,
        "strategy": "lora" if config.use_lora else "full",
        "pooling": config.pooling,
        "test": test,
        "validation": selection.validation,
        "best_epoch": selected.best_epoch,
        "history": selected.history,
        **final.params,
        "train_seconds": round(selected.seconds + (refit.seconds if refit else 0.0), 2),
        "peak_memory_mb": round(peak_memory_mb(), 1),
        "device": device_name(),
        "distributed": final.layout,
        "precision": precision,
        "seed": config.seed,
        "loss": {
            "name": final.loss_name,
            "pos_weight" if data.multi_label else "class_weights": final.weights,
            "focal_gamma": config.focal_gamma,
        },
        "data": data.info,
        "train_token_lengths": final.train_token_lengths,
        "warnings": [warning] if warning else [],
        "versions": library_versions(),
    }
    if refit:
        results["refit"] = {
            "epochs": refit.args.num_train_epochs,
            "train_rows": refit.train_rows,
            "train_seconds": round(refit.seconds, 2),
            # The choice to refit was made before either model was tested.
            "selected_model_test": selection.test,
        }
    write_json(staging / RESULTS, results)
    write_model_card(staging, results)
    return results


def split_report(
    predictor: Predictor, data: PreparedData, split: str, scores: np.ndarray | None = None
) -> dict | None:
    """The metrics block of one split (None for an empty test split); multi-label `scores`
    already computed for it are reused."""
    frame = getattr(data, split)
    if frame.empty:
        return None
    if data.multi_label:
        if scores is None:
            scores = predictor.probabilities(frame["text"])
        return multilabel_report(
            data.label_matrix(split), apply_thresholds(scores, predictor.thresholds),
            data.labels, predictor.thresholds,
        )  # fmt: skip
    return classification_report(
        data.label_ids(split), predictor.predict_ids(frame["text"]), data.labels
    )


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
