"""ONNX export: layout, checksums, dynamic axes, parity with PyTorch, and the predictor backends."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import onnx
import pytest
import yaml
from transformers import AutoTokenizer

from finlora.data.sources import file_sha256
from finlora.errors import FinloraError
from finlora.export import onnx as onnx_export
from finlora.export.onnx import (
    BUILTIN_SAMPLE,
    VerificationData,
    export_onnx,
    parity_failures,
    verify,
)
from finlora.modeling import load_classifier
from finlora.predictor import OnnxRunner, Predictor

TEXTS = [
    "Operating profit fell to EUR 2.1 mn from EUR 3.3 mn.",
    "Net sales rose.",
    "x",
    " ".join(["Revenue grew in every region of the group this quarter."] * 30),  # > max_length
]


def export_info(model_dir):
    return json.loads((model_dir / "onnx" / "export.json").read_text())


def test_export_writes_model_tokenizer_labels_and_checksums(exported_dir):
    onnx_dir = exported_dir / "onnx"
    info = export_info(exported_dir)
    assert {"model.onnx", "model.int8.onnx", "tokenizer.json", "labels.json", "config.json"} <= set(
        info["files"]
    )
    for name, entry in info["files"].items():
        assert file_sha256(onnx_dir / name) == entry["sha256"], name
        assert (onnx_dir / name).stat().st_size == entry["bytes"]
    assert info["opset"] == 17
    assert info["max_length"] == 48
    assert info["labels"] == ["negative", "neutral", "positive"]
    assert json.loads((onnx_dir / "labels.json").read_text())["labels"] == info["labels"]
    assert {"torch", "transformers", "onnx", "onnxruntime"} <= set(info["versions"])
    assert info["optimization"]["fused"].get("Attention") == 2  # both layers fused
    kept = info["quantization"]["kept_fp32"]  # all int8, or some FFN output projections fp32
    assert all("/output/dense/" in name for name in kept)
    assert not list(exported_dir.glob(".onnx.tmp-*"))


def test_exported_graphs_have_dynamic_batch_and_sequence_axes(exported_dir):
    for name in ("model.onnx", "model.int8.onnx"):
        graph = onnx.load(exported_dir / "onnx" / name).graph
        for tensor in graph.input:
            dims = tensor.type.tensor_type.shape.dim
            assert [d.dim_param for d in dims] == ["batch", "sequence"], (name, tensor.name)
        assert [i.name for i in graph.input] == ["input_ids", "attention_mask"]


def test_export_records_parity_within_the_contract(exported_dir):
    parity = export_info(exported_dir)["parity"]
    assert parity["sample"] == "validation" and parity["size"] == 30
    assert parity["fp32"]["label_agreement"] == 1.0
    assert parity["fp32"]["max_abs_logit_diff"] < 1e-3
    assert parity["int8"]["label_agreement"] >= 0.99
    assert parity["int8"]["test_macro_f1_loss"] <= 0.005
    assert parity["int8"]["test_size"] == 30


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_onnx_predictor_matches_torch_on_any_batch_shape(exported_dir, precision):
    torch_predictor = Predictor.load(exported_dir, backend="torch")
    onnx_predictor = Predictor.load(exported_dir, backend="onnx", precision=precision)
    assert (onnx_predictor.backend, onnx_predictor.precision) == ("onnx", precision)
    assert onnx_predictor.labels == torch_predictor.labels
    expected = torch_predictor.logits(TEXTS)
    # int8: within 5% of the logit scale (the tiny model's logits are small)
    tolerance = 1e-4 if precision == "fp32" else 0.05 * float(np.abs(expected).max())
    np.testing.assert_allclose(onnx_predictor.logits(TEXTS), expected, atol=tolerance)
    one_by_one = np.vstack([onnx_predictor.logits([t]) for t in TEXTS])  # batch 1, own lengths
    np.testing.assert_allclose(one_by_one, expected, atol=tolerance)


def test_predictions_flag_truncated_texts_like_the_tokenizer(exported_dir):
    predictor = Predictor.load(exported_dir, backend="onnx")
    tokenizer = AutoTokenizer.from_pretrained(exported_dir)
    records = predictor.predict(TEXTS)
    expected = [len(tokenizer(t)["input_ids"]) > 48 for t in TEXTS]
    assert [r["truncated"] for r in records] == expected == [False, False, False, True]
    for record in records:
        assert abs(sum(record["probabilities"].values()) - 1) < 1e-4
        assert record["label"] == max(record["probabilities"], key=record["probabilities"].get)


def test_fast_tokenization_equals_the_transformers_tokenizer(exported_dir):
    predictor = Predictor.load(exported_dir, backend="onnx")
    tokenizer = AutoTokenizer.from_pretrained(exported_dir)
    ids, mask, _ = predictor.encode(TEXTS)
    reference = tokenizer(TEXTS, truncation=True, max_length=48, padding=True, return_tensors="np")
    np.testing.assert_array_equal(ids, reference["input_ids"])
    np.testing.assert_array_equal(mask, reference["attention_mask"])
    assert ids.shape[1] == 48  # padded to the longest text, which is truncated to max_length
    short_ids, _, _ = predictor.encode(["Net sales rose."])
    assert short_ids.shape[1] < 48  # never padded to max_length


def test_backend_auto_prefers_the_export_and_onnx_without_export_is_an_error(
    exported_dir, trained_dir, tmp_path
):
    assert Predictor.load(exported_dir).backend == "torch"  # load() defaults to torch
    assert Predictor.load(exported_dir, backend="auto").precision == "int8"
    bare = tmp_path / "bare"
    shutil.copytree(trained_dir, bare, ignore=shutil.ignore_patterns("onnx"))
    assert Predictor.load(bare, backend="auto").backend == "torch"
    with pytest.raises(FinloraError, match="finlora export --model"):
        Predictor.load(bare, backend="onnx")
    with pytest.raises(FinloraError, match="needs --backend onnx"):
        Predictor.load(bare, backend="torch", precision="int8")


def test_verification_fails_with_the_numbers_when_onnx_is_not_the_model(
    exported_dir, tiny_model_dir
):
    """A different PyTorch model (untrained head) against the exported graph must fail."""
    labels = ["negative", "neutral", "positive"]
    other = load_classifier(str(tiny_model_dir), labels).eval()
    tokenizer = AutoTokenizer.from_pretrained(exported_dir)
    data = VerificationData("builtin", BUILTIN_SAMPLE)
    _, failures = verify(other, tokenizer, 48, labels, exported_dir / "onnx", ["fp32"], data, 1)
    assert any(re.match(r"fp32 max \|logit diff\| \d", f) for f in failures)


def test_int8_keeps_ffn_outputs_fp32_layer_by_layer_until_the_contract_holds(
    trained_dir, tmp_path, monkeypatch
):
    """The first two int8 verifications are made to fail: the export must requantize with the
    first, then the first two feed-forward output projections in fp32, and record them."""
    model_dir = tmp_path / "model"
    shutil.copytree(trained_dir, model_dir, ignore=shutil.ignore_patterns("onnx"))
    real = onnx_export.parity_failures
    int8_checks = []

    def first_int8_check_fails(precision, block):
        if precision == "int8":
            int8_checks.append(block)
            if len(int8_checks) <= 2:
                return ["int8 label agreement 0.5000 < 0.99"]
        return real(precision, block)

    monkeypatch.setattr(onnx_export, "parity_failures", first_int8_check_fails)
    info = export_onnx(model_dir, quantize="int8")
    assert len(int8_checks) == 3
    kept = info["quantization"]["kept_fp32"]
    assert [name.split("/")[4] for name in kept] == ["layer.0", "layer.1"]
    assert all("/output/dense/" in name for name in kept)
    graph = onnx.load(model_dir / "onnx" / "model.int8.onnx").graph
    float_matmuls = {n.name for n in graph.node if n.op_type == "MatMul"}
    assert set(kept) <= float_matmuls


def test_export_fails_with_the_numbers_when_int8_cannot_meet_the_contract(
    trained_dir, tmp_path, monkeypatch
):
    model_dir = tmp_path / "model"
    shutil.copytree(trained_dir, model_dir, ignore=shutil.ignore_patterns("onnx"))
    monkeypatch.setattr(onnx_export, "INT8_MIN_AGREEMENT", 1.01)
    with pytest.raises(FinloraError, match=r"int8 label agreement \d\.\d+ < 1.01"):
        export_onnx(model_dir, quantize="int8")
    assert not (model_dir / "onnx").exists()


def test_parity_contract_thresholds():
    ok = {"max_abs_logit_diff": 9e-4, "label_agreement": 1.0}
    assert parity_failures("fp32", ok) == []
    assert parity_failures("fp32", {**ok, "label_agreement": 0.999})
    assert parity_failures("fp32", {**ok, "max_abs_logit_diff": 1e-3})
    int8 = {"max_abs_logit_diff": 0.2, "label_agreement": 0.99, "test_macro_f1_loss": 0.005}
    assert parity_failures("int8", {**int8, "test_macro_f1": 0.8}) == []
    failures = parity_failures("int8", {**int8, "label_agreement": 0.98, "test_macro_f1": 0.79,
                                        "test_macro_f1_loss": 0.006})  # fmt: skip
    assert len(failures) == 2 and "0.9800" in failures[0] and "0.0060" in failures[1]


def test_export_without_readable_training_data_verifies_on_builtin_text(trained_dir, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(trained_dir, moved, ignore=shutil.ignore_patterns("onnx"))
    config_file = moved / "finlora_config.yaml"
    config = yaml.safe_load(config_file.read_text())
    config["data"] = str(tmp_path / "gone.txt")
    config_file.write_text(yaml.safe_dump(config))
    info = export_onnx(moved, threads=1)
    assert info["parity"]["sample"] == "builtin"
    assert info["parity"]["size"] == len(BUILTIN_SAMPLE)
    assert "test_macro_f1" not in info["parity"]["fp32"]
    assert "model.int8.onnx" not in info["files"]


def test_export_of_a_directory_without_a_model_is_a_user_error(tmp_path):
    with pytest.raises(FinloraError, match="no config.json"):
        export_onnx(tmp_path)


def test_onnx_runner_rejects_a_broken_file(tmp_path):
    broken = tmp_path / "model.onnx"
    broken.write_bytes(b"not an onnx model")
    with pytest.raises(FinloraError, match="re-run `finlora export`"):
        OnnxRunner(broken)


def test_multilabel_export_carries_its_thresholds(multilabel_exported, tmp_path):
    """The export dir alone (copied away from its parent) decides labels like the torch model."""
    saved = json.loads((multilabel_exported / "thresholds.json").read_text())
    assert len(set(saved["thresholds"].values())) > 1  # tuned, not all the 0.5 default
    assert json.loads((multilabel_exported / "onnx" / "thresholds.json").read_text()) == saved
    info = export_info(multilabel_exported)
    assert "thresholds.json" in info["files"]
    parity = info["parity"]  # checked on label sets at the tuned thresholds, with test F1
    assert parity["sample"] == "validation" and parity["fp32"]["label_agreement"] == 1.0
    assert parity["fp32"]["test_macro_f1"] == pytest.approx(parity["fp32"]["test_macro_f1_torch"])
    # a mean-pooling model (the multi-label fixture's): the graph needs no Python class
    assert "auto_map" in json.loads((multilabel_exported / "config.json").read_text())
    assert "auto_map" not in json.loads((multilabel_exported / "onnx" / "config.json").read_text())
    alone = tmp_path / "onnx"
    shutil.copytree(multilabel_exported / "onnx", alone)
    torch_predictor = Predictor.load(multilabel_exported, backend="torch")
    onnx_predictor = Predictor.load(alone, backend="onnx")
    assert onnx_predictor.multi_label
    assert onnx_predictor.thresholds == torch_predictor.thresholds
    texts = [
        "we may terminate your account at any time without notice .",
        "these terms are governed by the laws of the state of california .",
        "you agree to resolve any dispute by binding arbitration .",
        "welcome .",
    ]
    expected = torch_predictor.predict(texts)
    got = onnx_predictor.predict(texts)
    assert [r["labels"] for r in got] == [r["labels"] for r in expected]
    for g, e in zip(got, expected):
        for label, score in e["scores"].items():
            assert abs(g["scores"][label] - score) < 1e-4
    (alone / "thresholds.json").unlink()
    with pytest.raises(FinloraError, match="no thresholds.json; re-run `finlora export`"):
        Predictor.load(alone, backend="onnx")
