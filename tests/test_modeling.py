"""LoRA details on a tiny BERT: stray parameters, the mean-pooling head, targets, LoRA+.

What trains, saves and merges per architecture is tests/test_architectures.py's table."""

from __future__ import annotations

import pytest
import torch

from finlora.errors import FinloraError
from finlora.modeling import (
    apply_lora,
    check_only_adapters_train,
    input_token_limit,
    load_classifier,
    load_tokenizer,
    lora_targets,
    parameter_counts,
)

LABELS = ["negative", "neutral", "positive"]
TEXTS = ["Profit rose sharply .", "Sales fell 10 % .", "The meeting is on Monday ."]


@pytest.fixture(params=["cls", "mean"])
def lora_model(request, tiny_model_dir):
    torch.manual_seed(0)
    base = load_classifier(str(tiny_model_dir), LABELS, pooling=request.param)
    model = apply_lora(base, 4, 8, 0.0)
    # LoRA B starts at zero; perturb it so merging has something to fold in.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    return model


def test_trainable_fraction_is_small_and_stray_parameters_refused(lora_model):
    trainable, total = parameter_counts(lora_model)
    base = sum(p.numel() for n, p in lora_model.named_parameters() if "lora_" not in n)
    assert trainable < total < base
    next(p for n, p in lora_model.named_parameters() if "embeddings" in n).requires_grad_(True)
    with pytest.raises(FinloraError, match="would also train"):
        check_only_adapters_train(lora_model)


def test_mean_pooling_head_reads_the_mean_of_the_unpadded_tokens(tiny_model_dir):
    """Padding must not move a text's logits, and the head must see the token mean."""
    torch.manual_seed(0)
    model = load_classifier(str(tiny_model_dir), LABELS, pooling="mean").eval()
    tokenizer = load_tokenizer(str(tiny_model_dir))
    alone = tokenizer(TEXTS[:1], return_tensors="pt")
    padded = tokenizer(TEXTS[:1], padding="max_length", max_length=24, return_tensors="pt")
    with torch.no_grad():
        states = model.encoder(**alone).last_hidden_state
        by_hand = model.classifier(states.mean(dim=1))
        assert torch.allclose(model(**alone).logits, by_hand, atol=1e-6)
        assert torch.allclose(model(**padded).logits, by_hand, atol=1e-5)
    assert model.encoder.pooler is None  # the [CLS] pooler would never get a gradient
    assert lora_targets(model, None) == ["query", "value"]


def test_wrong_targets_and_unloadable_model_are_clear_errors(tiny_model_dir, tmp_path):
    with pytest.raises(FinloraError, match="--lora_target_modules"):
        apply_lora(load_classifier(str(tiny_model_dir), LABELS), 2, 4, 0.0, ["q_lin"])
    with pytest.raises(FinloraError, match="cannot load model 'nobody/no-such-model'"):
        load_classifier("nobody/no-such-model", LABELS)


def test_all_linear_adapts_every_encoder_linear_and_trains_only_adapters_and_head(tiny_model_dir):
    from finlora.cli import _flags, build_parser
    from finlora.config import resolve_config

    args = build_parser().parse_args(["train", "--lora_target_modules", "all-linear"])
    config = resolve_config(_flags(args))
    model = load_classifier(str(tiny_model_dir), LABELS)
    encoder_linears = {
        name for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not name.startswith("classifier")
    }  # fmt: skip
    wrapped = apply_lora(model, 2, 4, 0.0, config.lora_target_modules)
    adapted = {
        name.removeprefix("base_model.model.").removesuffix(".lora_A.default.weight")
        for name, _ in wrapped.named_parameters()
        if name.endswith(".lora_A.default.weight")
    }
    assert len(encoder_linears) == 13  # q, k, v, attention out, intermediate, out x2 + pooler
    assert adapted == encoder_linears
    check_only_adapters_train(wrapped)
    head = [n for n, p in wrapped.named_parameters() if p.requires_grad and "lora_" not in n]
    assert head and all("classifier.modules_to_save" in n for n in head)
    with pytest.raises(FinloraError, match="all-linear"):
        apply_lora(load_classifier(str(tiny_model_dir), LABELS), 2, 4, 0.0, ["all-linear", "query"])


def test_loraplus_gives_the_b_matrices_a_larger_learning_rate(lora_model):
    from finlora.config import TrainConfig
    from finlora.training import loraplus_optimizer

    plain = TrainConfig(learning_rate=1e-3, loraplus_lr_ratio=0)
    assert loraplus_optimizer(lora_model, plain) is None
    optimizer = loraplus_optimizer(
        lora_model, TrainConfig(learning_rate=1e-3, loraplus_lr_ratio=16)
    )
    rate = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    named = {name: rate[id(p)] for name, p in lora_model.named_parameters() if p.requires_grad}
    assert len(named) == len(rate), "every trainable parameter is optimised exactly once"
    b_rates = [lr for name, lr in named.items() if "lora_B" in name]
    a_rates = [lr for name, lr in named.items() if "lora_A" in name]
    assert b_rates and b_rates == pytest.approx([16e-3] * len(b_rates))
    assert a_rates and a_rates == pytest.approx([1e-3] * len(a_rates))


def test_input_token_limit_per_architecture():
    from transformers import BertConfig, DebertaV2Config, MPNetConfig, RobertaConfig

    assert input_token_limit(BertConfig(max_position_embeddings=512)) == 512
    # RoBERTa numbers positions from pad_token_id + 1: 514 embeddings, 512 tokens
    assert input_token_limit(RobertaConfig(max_position_embeddings=514, pad_token_id=1)) == 512
    assert input_token_limit(MPNetConfig(max_position_embeddings=514, pad_token_id=1)) == 512
    assert input_token_limit(DebertaV2Config(position_biased_input=False)) is None
