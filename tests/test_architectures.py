"""Every supported architecture through the same checks, as a table (PEFT's style).

Tiny random encoders (hidden size 32, 2 layers) of each architecture, built once per module
and saved with the packaged MiniLM's tokenizer, go through: one training step changes only
what it should (LoRA: the adapters and the head; full fine-tuning with frozen embeddings:
everything else), save -> load reproduces the logits, the merged model equals the adapter,
and the ONNX export matches PyTorch.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from finlora.errors import FinloraError
from finlora.mean_pooling import load_finetuned
from finlora.modeling import (
    LORA_TARGETS,
    apply_lora,
    check_only_adapters_train,
    freeze_embeddings,
    load_classifier,
    load_tokenizer,
    lora_targets,
    mean_pooled,
    merge_adapter,
    parameter_counts,
)

LABELS = ["negative", "neutral", "positive"]
TEXTS = ["Profit rose sharply .", "Sales fell 10 % .", "The meeting is on Monday ."]
TINY = {
    "vocab_size": 30522,  # the packaged MiniLM tokenizer's
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
    "pad_token_id": 0,  # the tokenizer's padding id, so RoBERTa-style positions skip padding
}
# model_type -> config overrides on TINY.
ARCHITECTURES: dict[str, dict] = {
    "bert": {},
    "roberta": {},
    # DeBERTa-v3's layout: relative positions only, no absolute position embeddings.
    "deberta-v2": {
        "relative_attention": True,
        "position_buckets": 16,
        "pos_att_type": ["p2c", "c2p"],
        "position_biased_input": False,
        "type_vocab_size": 0,
    },
    "distilbert": {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64},
    "electra": {"embedding_size": 16},  # ELECTRA-small's projection from embeddings
    "mpnet": {},
    "modernbert": {
        "bos_token_id": 101,
        "eos_token_id": 102,
        "cls_token_id": 101,
        "sep_token_id": 102,
    },
}
# What the architecture's own tokenizer feeds the model (no token types but for BERT/ELECTRA).
TOKEN_TYPES = {"bert", "electra"}
CASES = [
    pytest.param(arch, pooling, id=f"{arch}-{pooling}")
    for arch in ARCHITECTURES
    for pooling in ("cls", "mean")
]


@pytest.fixture(scope="module")
def encoder_dirs(tmp_path_factory, packaged_model_dir: Path) -> dict[str, Path]:
    """model_type -> a saved tiny random encoder with a tokenizer."""
    out = {}
    for arch, overrides in ARCHITECTURES.items():
        torch.manual_seed(0)
        config = AutoConfig.for_model(arch, **{**TINY, **overrides})
        path = tmp_path_factory.mktemp(f"tiny-{arch}")
        # ModernBERT checkpoints are masked-LM models: their head's dense layer is pretrained.
        auto = AutoModelForMaskedLM if arch == "modernbert" else AutoModel
        auto.from_config(config).save_pretrained(path)
        names = ["input_ids", "attention_mask"] + (
            ["token_type_ids"] if arch in TOKEN_TYPES else []
        )
        tokenizer = AutoTokenizer.from_pretrained(packaged_model_dir, model_input_names=names)
        tokenizer.save_pretrained(path)
        out[arch] = path
    return out


@pytest.fixture(scope="module")
def inputs(encoder_dirs) -> dict[str, dict[str, torch.Tensor]]:
    """model_type -> a padded batch of TEXTS as its tokenizer encodes it."""
    return {
        arch: dict(load_tokenizer(str(path))(TEXTS, padding=True, return_tensors="pt"))
        for arch, path in encoder_dirs.items()
    }


def build(encoder_dirs, arch: str, pooling: str, lora: bool):
    torch.manual_seed(0)
    model = load_classifier(str(encoder_dirs[arch]), LABELS, pooling=pooling)
    assert model.config.model_type == arch and mean_pooled(model) == (pooling == "mean")
    if not lora:
        return model
    model = apply_lora(model, 4, 8, 0.0)
    # LoRA B starts at zero; perturb it so that merging and saving have something to carry.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    return model


def one_step(model, batch) -> set[str]:
    """Names of the parameters one optimizer step moved (no weight decay: only gradients)."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=0.1, weight_decay=0.0)
    model.train()
    model(**batch, labels=torch.tensor([0, 1, 2])).loss.backward()
    optimizer.step()
    return {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}


def logits(model, batch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize(("arch", "pooling"), CASES)
def test_lora_step_moves_only_adapters_and_head(arch, pooling, encoder_dirs, inputs):
    model = build(encoder_dirs, arch, pooling, lora=True)
    check_only_adapters_train(model)
    targets = lora_targets(model.get_base_model(), None)
    assert targets == [
        t
        for t in LORA_TARGETS[arch]
        if pooling == "cls" or not t.startswith(("pooler.", "classifier.", "head."))
    ]
    adapted = {n.split(".lora_A.")[0] for n, _ in model.named_parameters() if ".lora_A." in n}
    assert adapted and all(any(a.endswith("." + t) for t in targets) for a in adapted)
    assert {t for t in targets if any(a.endswith("." + t) for a in adapted)} == set(targets)

    changed = one_step(model, inputs[arch])
    assert changed and all("lora_" in n or "modules_to_save" in n for n in changed)
    assert any("lora_" in n for n in changed) and any("modules_to_save" in n for n in changed)
    trainable, total = parameter_counts(model)
    assert trainable == sum(p.numel() for p in model.parameters() if p.requires_grad) < total


@pytest.mark.parametrize(("arch", "pooling"), CASES)
def test_full_step_moves_everything_but_frozen_embeddings(arch, pooling, encoder_dirs, inputs):
    model = build(encoder_dirs, arch, pooling, lora=False)
    block = {n: p.numel() for n, p in model.named_parameters() if ".embeddings." in n}
    assert any("word_embeddings" in n or "tok_embeddings" in n for n in block)
    assert freeze_embeddings(model) == sum(block.values())
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == set(block)  # position and type embeddings and their norm too
    changed = one_step(model, inputs[arch])
    assert not changed & frozen
    assert changed == {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(("arch", "pooling"), CASES)
def test_lora_save_load_and_merge_reproduce_logits(arch, pooling, encoder_dirs, inputs, tmp_path):
    batch = inputs[arch]
    model = build(encoder_dirs, arch, pooling, lora=True)
    expected = logits(model, batch)
    model.save_pretrained(tmp_path / "adapter")
    base = load_classifier(str(encoder_dirs[arch]), LABELS, pooling=pooling)
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter")
    torch.testing.assert_close(logits(reloaded, batch), expected, atol=1e-5, rtol=1e-4)

    merged = merge_adapter(model)
    assert not isinstance(merged, PeftModel)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    merged.save_pretrained(tmp_path / "merged")
    ours = load_finetuned(tmp_path / "merged")
    # plain transformers: a mean-pooling head runs the class file saved beside the weights
    plain = AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "merged", trust_remote_code=pooling == "mean"
    )
    assert plain.config.id2label == dict(enumerate(LABELS))
    for loaded in (ours, plain):
        torch.testing.assert_close(logits(loaded, batch), expected, atol=1e-5, rtol=1e-4)
    if pooling == "mean":  # a later run starting from this one keeps its encoder
        onward = load_classifier(str(tmp_path / "merged"), ["a", "b"], pooling="mean")
        assert torch.equal(onward.get_input_embeddings().weight, ours.get_input_embeddings().weight)
        with pytest.raises(FinloraError, match="--pooling mean"):
            load_classifier(str(tmp_path / "merged"), ["a", "b"])


@pytest.mark.parametrize(("arch", "pooling"), CASES)
def test_full_save_load_reproduces_logits(arch, pooling, encoder_dirs, inputs, tmp_path):
    model = build(encoder_dirs, arch, pooling, lora=False)
    one_step(model, inputs[arch])
    expected = logits(model, inputs[arch])
    model.save_pretrained(tmp_path / "run")
    torch.testing.assert_close(
        logits(load_finetuned(tmp_path / "run"), inputs[arch]), expected, atol=1e-5, rtol=1e-4
    )


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "pooling"), CASES)
def test_onnx_export_matches_pytorch(arch, pooling, encoder_dirs, tmp_path):
    """The merged adapter model through export/onnx.py's own steps: trace, fuse, int8."""
    pytest.importorskip("onnxruntime")
    from finlora.export.onnx import (
        FP32_MAX_LOGIT_DIFF,
        OPSET,
        load_merged,
        optimize,
        quantize_int8,
        torch_export,
    )
    from finlora.predictor import OnnxRunner

    model = build(encoder_dirs, arch, pooling, lora=True)
    merge_adapter(model).save_pretrained(tmp_path / "merged")
    load_tokenizer(str(encoder_dirs[arch])).save_pretrained(tmp_path / "merged")
    merged, tokenizer = load_merged(tmp_path / "merged")
    torch_export(merged, tokenizer, tmp_path / "raw.onnx", OPSET)
    optimize(tmp_path / "raw.onnx", tmp_path / "model.onnx", merged.config)
    quantize_int8(tmp_path / "model.onnx", tmp_path / "model.int8.onnx", keep_fp32=[])
    texts = [*TEXTS, "A longer sentence, so that the others in the batch are padded here ."]
    batch = tokenizer(texts, padding=True, return_tensors="np")
    feed = {k: batch[k].astype("int64") for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        expected = merged(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
    fp32 = OnnxRunner(tmp_path / "model.onnx", 1, "fp32")(**feed)
    int8 = OnnxRunner(tmp_path / "model.int8.onnx", 1, "int8")(**feed)
    assert abs(fp32 - expected).max() < FP32_MAX_LOGIT_DIFF
    assert abs(int8 - expected).max() < 0.1 * max(1.0, abs(expected).max())


@pytest.mark.parametrize("arch", ["mpnet", "modernbert"])
def test_a_head_layer_the_checkpoint_lacks_is_trained_not_adapted(arch, encoder_dirs, tmp_path):
    """A frozen random layer would not come back when the adapter is loaded onto the base
    model again: MPNet without its [CLS] pooler, ModernBERT without its masked-LM head."""
    from transformers import MPNetModel

    config = AutoConfig.from_pretrained(encoder_dirs[arch])
    torch.manual_seed(0)
    encoder = MPNetModel(config, add_pooling_layer=False) if arch == "mpnet" else None
    (encoder or AutoModel.from_config(config)).save_pretrained(tmp_path / "encoder")
    load_tokenizer(str(encoder_dirs[arch])).save_pretrained(tmp_path / "encoder")
    head_layer = {"mpnet": "classifier.dense", "modernbert": "head.dense"}[arch]
    model = apply_lora(load_classifier(str(tmp_path / "encoder"), LABELS), 4, 8, 0.0)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert not any(f"{head_layer}.lora_" in n for n in names)
    parent, layer = head_layer.split(".")
    assert f"base_model.model.{parent}.modules_to_save.default.{layer}.weight" in names
    check_only_adapters_train(model)


@pytest.mark.slow
def test_mpnet_trains_exports_serves_and_reads_documents(encoder_dirs, phrasebank_slice, tmp_path):
    """A tiny MPNet through the user's path: train (LoRA, [CLS] head) -> export int8 with the
    parity check -> predict --document -> the HTTP service."""
    import json

    from fastapi.testclient import TestClient

    from finlora.cli import main
    from finlora.serve.app import create_app
    from finlora.serve.settings import ServeSettings

    out = tmp_path / "run"
    assert main([
        "-q", "train", "--data", str(phrasebank_slice), "--model_name", str(encoder_dirs["mpnet"]),
        "--epochs", "1", "--batch_size", "32", "--learning_rate", "0.005", "--max_length", "40",
        "--output_dir", str(out),
    ]) == 0  # fmt: skip
    results = json.loads((out / "final_results.json").read_text())
    assert results["trainable_params"] < results["total_params"]
    assert main(["-q", "export", "--model", str(out), "--quantize", "int8"]) == 0
    export = json.loads((out / "onnx" / "export.json").read_text())
    assert export["model_type"] == "mpnet" and set(export["parity"]) >= {"fp32", "int8"}

    document = tmp_path / "report.txt"
    document.write_text("Net sales rose 12 % to EUR 80 mn. The company expects losses. " * 8)
    answer = tmp_path / "spans.json"
    assert main(["-q", "predict", "--model", str(out), "--document", str(document),
                 "--output", str(answer)]) == 0  # fmt: skip
    spans = json.loads(answer.read_text())["spans"]
    assert spans and all(s["labels"] for s in spans)

    settings = ServeSettings(model_dir=out, precision="int8", threads=1)
    with TestClient(create_app(settings)) as client:
        response = client.post("/v1/predict", json={"texts": ["Profit rose.", "Sales fell."]})
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 2
