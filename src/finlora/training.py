"""Training: the Trainer subclass (it only overrides `compute_loss`), the LoRA+ optimizer,
`fit()` (one Trainer run) and `train(config)` (select, optionally refit, write).

Machine and precision probes live in `finlora.machine`, checkpoint resume in
`finlora.checkpoints`, and what a finished run writes in `finlora.run_artifacts`.
"""

from __future__ import annotations

import gc
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

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
from transformers.utils import logging as hf_logging

from finlora.artifacts import atomic_output_dir, check_output_dir
from finlora.checkpoints import (
    MarkCheckpointComplete,
    checkpoint_space,
    resume_point,
    run_fingerprint,
)
from finlora.config import TrainConfig
from finlora.data import PreparedData, prepare_data
from finlora.data.lengths import TRUNCATION_WARNING_SHARE, length_stats, token_lengths
from finlora.distributed import (
    batch_layout,
    check_same_data_on_all_ranks,
    ddp_backend,
    is_main_process,
)
from finlora.evaluation import macro_f1_metrics, multilabel_metrics
from finlora.losses import build_loss, class_weights, pos_weights, resolve_loss_name
from finlora.machine import device_name, precision_policy
from finlora.modeling import (
    apply_lora,
    check_max_length,
    check_only_adapters_train,
    freeze_embeddings,
    input_token_limit,
    load_classifier,
    load_tokenizer,
    log_parameter_report,
)
from finlora.results import FinalResults
from finlora.run_artifacts import assess_selected, cpu_predictor, write_artifacts

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


def best_epoch(history: list[dict], best_metric: float | None) -> float | None:
    """The epoch whose validation macro-F1 (the Trainer's `best_metric`) was kept."""
    return next((r["epoch"] for r in history if r["macro_f1"] == best_metric), None)


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
) -> FinalResults | None:
    """Train, select on validation macro-F1, test, and write the artifacts atomically.

    With `config.refit`, the selected run only chooses the number of epochs (and the
    multi-label thresholds); a second model then trains that many epochs on training plus
    validation rows, and that model is tested and saved.

    Returns what `final_results.json` holds, typed; under a distributed launcher only rank 0
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
