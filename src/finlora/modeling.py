"""Loading the encoder, wrapping it with LoRA, reporting and checking what trains, merging."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
)

from finlora.base_models import known, local_path
from finlora.errors import FinloraError
from finlora.mean_pooling import (
    MeanPoolingForSequenceClassification,
    load_finetuned,
    saved_pooling,
)

log = logging.getLogger(__name__)

# Attention query/value projections per architecture (model_type in the HF config): the
# placement of the original LoRA paper, which keeps the adapter well under 1% of an encoder.
LORA_TARGETS: dict[str, list[str]] = {
    # BERT: also the pooler, which feeds the head and was never trained in sentence-embedding
    # BERTs such as MiniLM (+6k parameters).
    "bert": ["query", "value", "pooler.dense"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "camembert": ["query", "value"],
    "electra": ["query", "value"],
    "albert": ["query", "value"],
    "deberta": ["in_proj"],
    "deberta-v2": ["query_proj", "value_proj"],
    "distilbert": ["q_lin", "v_lin"],
    # MPNet: also its head's dense layer, the same [CLS] dense + tanh as BERT's pooler, started
    # from the checkpoint's pooler and adapted like BERT's (+25k parameters) instead of trained
    # fully (590k, which took the all-mpnet-base-v2 recipe to 1.08% trainable).
    "mpnet": ["q", "v", "classifier.dense"],
    # ModernBERT: q, k and v are one fused projection; the head's dense layer (the masked-LM
    # head's, in its checkpoints) is adapted like BERT's pooler.
    "modernbert": ["Wqkv", "head.dense"],
}
# Targets inside a [CLS] head, which a mean-pooling model does not have.
CLS_HEAD_PREFIXES = ("pooler.", "classifier.", "head.")
# PEFT's shorthand for every linear layer except the output head.
ALL_LINEAR = "all-linear"
# The task head trained next to the adapters (and, in LoRA mode, nothing else).
HEAD_MODULES: dict[str, list[str]] = {
    "bert": ["classifier"],
    "roberta": ["classifier"],
    "xlm-roberta": ["classifier"],
    "camembert": ["classifier"],
    "electra": ["classifier"],
    "albert": ["classifier"],
    "deberta": ["pooler", "classifier"],
    "deberta-v2": ["pooler", "classifier"],
    "distilbert": ["pre_classifier", "classifier"],
    "mpnet": ["classifier"],
    "modernbert": ["head", "classifier"],
}
# Head layers LoRA adapts instead of training them (when they are targets and their weights
# come from the checkpoint, so that the base model gives them back to a saved adapter), and
# the part of the head then trained fully.
ADAPTED_HEADS: dict[str, tuple[str, list[str]]] = {
    "mpnet": ("classifier.dense", ["classifier.out_proj"]),
    "modernbert": ("head.dense", ["classifier"]),
}


def resolve_model_path(name: str) -> str:
    """A local directory as is; a known base model (`finlora.base_models`: the packaged
    MiniLM, all-mpnet-base-v2) from the folder it has offline, assembled the first time;
    any other name for transformers to find in the hub cache or download."""
    if Path(name).is_dir():
        return name
    path = local_path(name)
    return str(path) if path is not None else name


def _load(loader, name: str, **kwargs):
    path = resolve_model_path(name)
    try:
        return loader(path, **kwargs)
    except OSError as exc:
        model = known(name)
        fix = f"install it with `{model.install}`" if model else "pass a local model directory"
        raise FinloraError(
            f"cannot load model {name!r}: not a local directory and not downloadable here "
            f"({str(exc).splitlines()[0][:160]}); {fix} or go online once to cache it"
        ) from exc


def load_tokenizer(name: str):
    return _load(AutoTokenizer.from_pretrained, name)


def load_classifier(
    name: str, labels: list[str], problem_type: str = "single_label", pooling: str = "cls"
) -> PreTrainedModel:
    """A classifier with a fresh head for `labels` on the encoder `name`.

    `pooling="cls"` is the architecture's own `AutoModelForSequenceClassification`;
    `"mean"` puts the head on the mean of the token states (`MeanPoolingForSequenceClassification`).
    `problem_type` (`single_label` or `multi_label`) is saved in config.json, so any loader
    knows whether to softmax or sigmoid the logits.
    """
    labels = list(labels)
    head = {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {lab: i for i, lab in enumerate(labels)},
        "problem_type": f"{problem_type}_classification",
    }
    config = _load(AutoConfig.from_pretrained, name, **head)
    # A finlora mean-pooling run as the starting point: its weights sit under `encoder.`,
    # which AutoModel would not find (it would start from random weights).
    from_mean_pooled_run = saved_pooling(config) == "mean"
    if from_mean_pooled_run and pooling != "mean":
        raise FinloraError(
            f"{name} is a finlora model with a mean-pooling head; train on it with --pooling mean"
        )
    if pooling == "cls":
        model, info = _load(
            AutoModelForSequenceClassification.from_pretrained,
            name,
            config=config,
            output_loading_info=True,
        )
        fresh = {key.rsplit(".", 1)[0] for key in info["missing_keys"]}
        mpnet_head = model.config.model_type == "mpnet" and "classifier.dense" in fresh
        if mpnet_head and _head_dense_from_pooler(model, resolve_model_path(name)):
            fresh.discard("classifier.dense")
        model.finlora_fresh_modules = fresh  # what the checkpoint did not hold (lora_targets)
        return model
    if from_mean_pooled_run:
        encoder = _load(load_finetuned, name).encoder
    else:
        encoder = _load(AutoModel.from_pretrained, name)
    return MeanPoolingForSequenceClassification(config, encoder=encoder)


def _head_dense_from_pooler(model: PreTrainedModel, path: str) -> bool:
    """Start MPNet's head dense layer from the checkpoint's [CLS] pooler (the same dense + tanh
    on the first token, which MPNetForSequenceClassification leaves unused), as BERT's head
    starts from its pooler; False when the checkpoint has none."""
    weights = Path(path) / "model.safetensors"
    if not weights.is_file():
        return False
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as checkpoint:
        keys = set(checkpoint.keys())
        for prefix in ("pooler.dense.", "mpnet.pooler.dense."):
            if {f"{prefix}weight", f"{prefix}bias"} <= keys:
                dense = model.classifier.dense
                with torch.no_grad():
                    dense.weight.copy_(checkpoint.get_tensor(f"{prefix}weight"))
                    dense.bias.copy_(checkpoint.get_tensor(f"{prefix}bias"))
                return True
    return False


def freeze_embeddings(model: PreTrainedModel) -> int:
    """Stop gradients into the embedding block; returns how many parameters it froze.

    The block is the module holding the input word embeddings (BertEmbeddings,
    DistilBERT's Embeddings, ...), so position and type embeddings and their LayerNorm
    freeze with it; an architecture that keeps the word embeddings directly in its base
    model freezes only them.
    """
    words = model.get_input_embeddings()
    block = next(
        (module for module in model.modules() if any(c is words for c in module.children())),
        words,
    )
    if block is model or block is model.base_model:
        block = words
    frozen = 0
    for param in block.parameters():
        if param.requires_grad:
            param.requires_grad_(False)
            frozen += param.numel()
    return frozen


def mean_pooled(model: nn.Module) -> bool:
    if isinstance(model, PeftModel):
        model = model.get_base_model()
    return isinstance(model, MeanPoolingForSequenceClassification)


# Architectures whose position ids start after padding_idx (RoBERTa's scheme).
PADDING_OFFSET_POSITIONS = {
    "roberta",
    "xlm-roberta",
    "xlm-roberta-xl",
    "roberta-prelayernorm",
    "camembert",
    "longformer",
    "mpnet",
    "data2vec-text",
}


def input_token_limit(model_config) -> int | None:
    """The longest input (special tokens included) the encoder's position embeddings cover.

    RoBERTa-style models number positions from `pad_token_id + 1`, so 514 embeddings hold 512
    tokens; models without absolute positions (DeBERTa-v2/v3) have no hard limit (None).
    """
    if getattr(model_config, "position_biased_input", True) is False:
        return None
    limit = getattr(model_config, "max_position_embeddings", None)
    if limit is None:
        return None
    if model_config.model_type in PADDING_OFFSET_POSITIONS:
        limit -= (model_config.pad_token_id or 0) + 1
    return int(limit)


def check_max_length(max_length: int, model_config, name: str) -> None:
    limit = input_token_limit(model_config)
    if limit is not None and max_length > limit:
        raise FinloraError(
            f"--max_length {max_length} is longer than {name} can read ({limit} tokens): use "
            f"--max_length {limit} or less; for longer documents, `finlora predict --document` "
            "classifies them piece by piece"
        )


def lora_targets(model: PreTrainedModel, requested: list[str] | None) -> list[str] | str:
    """The modules to adapt: as requested, the architecture's default for `auto`/none, or
    PEFT's own "all-linear" shorthand (every linear layer but the head), which PEFT only
    recognises as a plain string, never inside a list."""
    if requested and [name.lower() for name in requested] == [ALL_LINEAR]:
        return ALL_LINEAR
    if requested and ALL_LINEAR in (name.lower() for name in requested):
        raise FinloraError(
            f"--lora_target_modules {','.join(requested)}: all-linear already adapts every "
            "linear layer; pass it alone or name the modules"
        )
    if requested and requested != ["auto"]:
        return requested
    model_type = model.config.model_type
    if model_type not in LORA_TARGETS:
        raise FinloraError(
            f"no default LoRA targets for architecture {model_type!r}; pass "
            "--lora_target_modules (e.g. query,value) naming its attention projections"
        )
    targets = LORA_TARGETS[model_type]
    if mean_pooled(model):  # no [CLS] pooler or head layer to adapt
        return [name for name in targets if not name.startswith(CLS_HEAD_PREFIXES)]
    # A head layer the checkpoint lacks starts random: trained fully, not adapted (a frozen
    # random layer would not come back when the adapter is loaded onto the base model again).
    adapted = ADAPTED_HEADS.get(model_type, ("",))[0]
    if adapted in getattr(model, "finlora_fresh_modules", ()):
        return [name for name in targets if name != adapted]
    return targets


def head_modules(model: PreTrainedModel, targets: list[str] | str | None = None) -> list[str]:
    """The head modules trained fully; a head layer among the LoRA `targets` is left out."""
    if mean_pooled(model):
        return ["classifier"]
    model_type = model.config.model_type
    adapted = ADAPTED_HEADS.get(model_type)
    if adapted and isinstance(targets, list) and adapted[0] in targets:
        return list(adapted[1])
    return HEAD_MODULES.get(model_type, ["classifier"])


def apply_lora(
    model: PreTrainedModel,
    r: int,
    alpha: int,
    dropout: float,
    target_modules: list[str] | None = None,
) -> PeftModel:
    """Wrap with a LoRA adapter; the classification head stays fully trainable (but for a
    head layer that is itself a LoRA target, e.g. MPNet's `classifier.dense`)."""
    targets = lora_targets(model, target_modules)
    head = head_modules(model, targets)
    config = LoraConfig(
        # PEFT's sequence-classification wrapper trains all of `classifier`, so a head that is
        # partly adapted takes the plain wrapper (the same forward, save and merge).
        task_type=TaskType.SEQ_CLS if "classifier" in head else None,
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        modules_to_save=head,
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise FinloraError(
            f"LoRA targets {targets} do not match modules of this model "
            f"({str(exc).splitlines()[0][:120]}); set --lora_target_modules"
        ) from exc


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters, counting LoRA's frozen base copies once."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    if isinstance(model, PeftModel):
        # modules_to_save keeps a frozen original of the head next to the trainable copy.
        total -= sum(p.numel() for n, p in model.named_parameters() if ".original_module." in n)
        total -= sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    return trainable, total


def trainable_parameter_table(model: nn.Module) -> list[tuple[str, int]]:
    return [(n, p.numel()) for n, p in model.named_parameters() if p.requires_grad]


def check_only_adapters_train(model: PeftModel) -> None:
    """Refuse to train if anything but LoRA matrices and the head would be updated."""
    allowed = ("lora_", "modules_to_save")
    stray = [n for n, _ in trainable_parameter_table(model) if not any(a in n for a in allowed)]
    if stray:
        raise FinloraError(
            f"LoRA mode would also train {len(stray)} base parameter(s), e.g. {stray[0]}; "
            "check --lora_target_modules or use --no_lora for full fine-tuning"
        )


def log_parameter_report(model: nn.Module) -> dict[str, float]:
    trainable, total = parameter_counts(model)
    table = trainable_parameter_table(model)
    lines = [f"  {name:<90} {count:>10,}" for name, count in table[:40]]
    if len(table) > 40:
        lines.append(f"  ... and {len(table) - 40} more tensors")
    log.info(
        "trainable parameters (%d tensors):\n%s\n  trainable %s of %s (%.3f%%)",
        len(table),
        "\n".join(lines),
        f"{trainable:,}",
        f"{total:,}",
        100.0 * trainable / total,
    )
    return {
        "trainable_params": trainable,
        "total_params": total,
        "trainable_fraction": trainable / total,
    }


def merge_adapter(model: nn.Module) -> PreTrainedModel:
    """A plain transformers model with the adapter folded into the base weights."""
    if isinstance(model, PeftModel):
        return model.merge_and_unload()
    return model


def to_cpu_fp32(model: nn.Module) -> nn.Module:
    return model.to(device="cpu", dtype=torch.float32)
