"""Trainable parameters of the LoRA recipe per architecture, at each model's real size.

    HF_HUB_OFFLINE=1 python bench/trainable_fractions.py [--lora_r 16]

Prints a Markdown table (docs/models.md): for each architecture, with the [CLS] head
(`--pooling cls`, the default) and the mean-pooling head (`--pooling mean`), the parameters
`finlora train` trains with LoRA (adapters + the head), the model's total and the fraction.
The two offline base models load their real checkpoints; the others are built from their
published configuration on the meta device (shapes only: the same counts, no download, no
memory). A fraction depends on the number of labels only through the last layer: 3 here.
"""

from __future__ import annotations

import argparse
import logging

import torch
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

from finlora.base_models import MINILM, MPNET, availability
from finlora.config import TrainConfig
from finlora.mean_pooling import MeanPoolingForSequenceClassification
from finlora.modeling import apply_lora, load_classifier, lora_targets, parameter_counts

LABELS = ["negative", "neutral", "positive"]
# BERT-base's shape, for the configs whose defaults are another size (DeBERTa-v2: xlarge).
BASE = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
}
# name -> (model_type, config overrides): the published base-size configurations.
CONFIGS = {
    "bert-base-uncased": ("bert", {}),
    "roberta-base": (
        "roberta",
        {"vocab_size": 50265, "max_position_embeddings": 514, "type_vocab_size": 1},
    ),
    "microsoft/deberta-v3-base": (
        "deberta-v2",
        {
            **BASE,
            "vocab_size": 128100,
            "relative_attention": True,
            "position_buckets": 256,
            "max_relative_positions": -1,
            "pos_att_type": ["p2c", "c2p"],
            "position_biased_input": False,
            "type_vocab_size": 0,
            "norm_rel_ebd": "layer_norm",
            "share_att_key": True,
        },
    ),
    "distilbert-base-uncased": ("distilbert", {}),
    "google/electra-base-discriminator": ("electra", {**BASE, "embedding_size": 768}),
    "answerdotai/ModernBERT-base": ("modernbert", {}),
}


def build(name: str, pooling: str) -> torch.nn.Module:
    known = {m.hub_id: m for m in (MINILM, MPNET)}
    if name in known:
        return load_classifier(name, LABELS, pooling=pooling)
    model_type, overrides = CONFIGS[name]
    head = {"num_labels": len(LABELS)}
    config = AutoConfig.for_model(model_type, **overrides, **head)
    with torch.device("meta"):  # shapes only: no memory, no random initialisation
        if pooling == "mean":
            encoder = AutoModel.from_config(config)
            return MeanPoolingForSequenceClassification(config, encoder=encoder)
        return AutoModelForSequenceClassification.from_config(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lora_r", type=int, default=TrainConfig().lora_r)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    names = [MINILM.hub_id]
    if availability(MPNET).state != "missing":
        names.append(MPNET.hub_id)
    names += list(CONFIGS)
    print(f"LoRA r={args.lora_r}, {len(LABELS)} labels\n")
    print("| model | pooling | LoRA targets | trainable | total | trainable % |")
    print("|---|---|---|---:|---:|---:|")
    for name in names:
        for pooling in ("cls", "mean"):
            torch.manual_seed(0)
            base = build(name, pooling)
            targets = lora_targets(base, None)
            model = apply_lora(base, args.lora_r, 2 * args.lora_r, 0.0)
            trainable, total = parameter_counts(model)
            print(
                f"| {name} | {pooling} | {','.join(targets)} | {trainable:,} | {total:,} "
                f"| {100 * trainable / total:.3f} |"
            )


if __name__ == "__main__":
    main()
