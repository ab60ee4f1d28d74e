"""ONNX export of the merged classifier, with ONNX Runtime graph fusion, optional int8
dynamic quantization, and a parity check against PyTorch that fails the export.

Layout of `<model dir>/onnx/` (written atomically: a failed export leaves no directory)::

    model.onnx                      fp32, fused by the ONNX Runtime transformer optimizer
    model.int8.onnx                 int8 weights, dynamic int8 activations (--quantize int8)
    tokenizer.json, tokenizer_config.json, config.json, labels.json
    thresholds.json                 multi-label models: the tuned per-label thresholds
    calibration.json                when trained with calibration: score map, conformal scores
    export.json                     opset, versions, max_length, sha256 of every file, parity
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import f1_score
from transformers import AutoTokenizer

from finlora.artifacts import (
    EXPORT_INFO,
    ONNX_DIR,
    ONNX_FILES,
    RESOLVED_CONFIG,
    THRESHOLDS,
    atomic_output_dir,
    require_model_dir,
    write_json,
)
from finlora.calibration import CALIBRATION
from finlora.config import resolve_config
from finlora.data.sources import file_sha256
from finlora.errors import FinloraError
from finlora.evaluation import apply_thresholds
from finlora.predictor import (
    OnnxRunner,
    Predictor,
    load_trained_classifier,
    saved_max_length,
    saved_thresholds,
)

log = logging.getLogger(__name__)

OPSET = 17
# Attention exports as scaled_dot_product_attention from opset 14; torch's TorchScript
# exporter (the one used here, see torch_export) goes up to opset 20.
OPSETS = range(14, 21)
QUANTIZE_CHOICES = ("int8",)
LABELS_FILE = "labels.json"
INPUT_NAMES = ["input_ids", "attention_mask"]
FP32_MAX_LOGIT_DIFF = 1e-3
INT8_MIN_AGREEMENT = 0.99
INT8_MAX_F1_LOSS = 0.005
MAX_SAMPLE = 2000
# Feed-forward output projections, e.g. /model/bert/encoder/layer.0/output/dense/MatMul
# (DistilBERT: ffn/lin2); kept in fp32 by the int8 export.
FFN_OUTPUT = re.compile(r"/output/dense/|/ffn/lin2/")

# Used when the training data cannot be read back (moved, or trained elsewhere): a parity
# check on real-looking sentences, one over max_length so truncation is exercised too.
BUILTIN_SAMPLE = [
    "Operating profit fell to EUR 2.1 mn from EUR 3.3 mn in the corresponding period.",
    "Net sales increased by 18.5 % to EUR 167.8 mn.",
    "The company did not disclose the price of the acquisition.",
    "Finnish Talvivaara Mining Co HEL : TLV1V said Thursday it had picked Mitsubishi.",
    "Pre-tax loss totaled EUR 0.3 mn, compared to a profit of EUR 2.2 mn in 2009.",
    "The contract includes the delivery of two paper machines.",
    "Shares rose sharply after the upbeat guidance.",
    "Layoffs are expected at the plant next year.",
    "Revenue was flat.",
    "Cash flow from operations was negative.",
    "The board proposes a dividend of EUR 0.50 per share.",
    "The new CEO starts on Monday.",
    " ".join(["The group reported steady order intake across all divisions."] * 40),
]


@dataclass
class VerificationData:
    """What the export is checked on: the validation split when it can be rebuilt."""

    source: str
    texts: list[str]
    test_texts: list[str] | None = None
    test_truth: np.ndarray | None = None  # class ids, or multi-hot rows for multi-label


class _LogitsOnly(torch.nn.Module):
    """The classifier as a function of (input_ids, attention_mask) returning only logits."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def export_onnx(
    model_dir: str | Path,
    quantize: str | None = None,
    opset: int = OPSET,
    threads: int | None = None,
) -> dict:
    """Export, optimise, optionally quantize, verify; return the `export.json` payload."""
    if quantize not in (None, *QUANTIZE_CHOICES):
        raise FinloraError(f"--quantize {quantize!r} is unknown; use one of {QUANTIZE_CHOICES}")
    if opset not in OPSETS:
        raise FinloraError(
            f"--opset {opset} cannot be exported; use {OPSETS.start}-{OPSETS.stop - 1} "
            f"(default {OPSET})"
        )
    model_dir = require_model_dir(model_dir)
    model, tokenizer = load_merged(model_dir)
    max_length = saved_max_length(model_dir, tokenizer)
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    thresholds = saved_thresholds(model_dir, labels)
    data = verification_data(model_dir, labels)
    precisions = ["fp32"] + (["int8"] if quantize else [])

    with atomic_output_dir(model_dir / ONNX_DIR) as staging, tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "model.raw.onnx"
        log.info("exporting %s to ONNX (opset %d)", model_dir, opset)
        torch_export(model, tokenizer, raw, opset)
        fused = optimize(raw, staging / ONNX_FILES["fp32"], model.config)
        fp32_path, int8_path = staging / ONNX_FILES["fp32"], staging / ONNX_FILES["int8"]
        kept_fp32: list[str] = []
        if quantize:
            log.info("quantizing to int8 (dynamic)")
            quantize_int8(fp32_path, int8_path, keep_fp32=kept_fp32)
        tokenizer.save_pretrained(staging)
        # The graph needs no Python class: a mean-pooling model's auto_map stays behind.
        config = {k: v for k, v in model.config.to_dict().items() if k != "auto_map"}
        write_json(staging / "config.json", config)
        write_json(
            staging / LABELS_FILE,
            {"labels": labels, "id2label": dict(enumerate(labels))},
        )
        for name in (THRESHOLDS, CALIBRATION):  # the export must run without its parent dir
            if (model_dir / name).is_file():
                shutil.copyfile(model_dir / name, staging / name)
        reference = torch_reference(model, tokenizer, max_length, data, thresholds)
        check = (model, tokenizer, max_length, labels, staging)
        parity, failures = verify(*check, precisions, data, threads, thresholds, reference)
        # All-int8 is fastest. Where only int8 misses the contract, the feed-forward output
        # projections (the layers int8 hurts most) go back to fp32 one layer at a time, first
        # layer first (its error passes through every later layer), until the contract holds.
        ffn_outputs = ffn_output_matmuls(fp32_path) if quantize else []
        while failures and all(f.startswith("int8") for f in failures) and ffn_outputs:
            kept_fp32.append(ffn_outputs.pop(0))
            log.info(
                "int8 misses the contract (%s); keeping %d feed-forward output projection(s) "
                "in fp32",
                "; ".join(failures),
                len(kept_fp32),
            )
            quantize_int8(fp32_path, int8_path, keep_fp32=kept_fp32)
            int8_parity, failures = verify(*check, ["int8"], data, threads, thresholds, reference)
            parity["int8"] = int8_parity["int8"]
        if failures:
            raise FinloraError(
                f"ONNX export failed verification on the {data.source} sample "
                f"(n={len(data.texts)}): " + "; ".join(failures)
            )
        info = {
            "format": "onnx",
            "opset": opset,
            "inputs": INPUT_NAMES,
            "outputs": ["logits"],
            "dynamic_axes": {"batch": 0, "sequence": 1},
            "max_length": max_length,
            "labels": labels,
            "model_type": model.config.model_type,
            "precisions": precisions,
            "optimization": {"tool": "onnxruntime.transformers.optimizer", "fused": fused},
            "quantization": (
                {
                    "method": "onnxruntime dynamic",
                    "weights": "int8 per-channel",
                    "activations": "uint8, range measured per batch",
                    "kept_fp32": kept_fp32,
                }
                if quantize
                else None
            ),
            "parity": parity,
            "source": {
                "model_dir": str(model_dir.resolve()),
                "weights_sha256": {
                    p.name: file_sha256(p) for p in sorted(model_dir.glob("*.safetensors"))
                },
            },
            "files": {
                p.name: {"sha256": file_sha256(p), "bytes": p.stat().st_size}
                for p in sorted(staging.iterdir())
                if p.is_file()
            },
            "versions": export_versions(),
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        write_json(staging / EXPORT_INFO, info)
    log.info("ONNX export written to %s", model_dir / ONNX_DIR)
    return info


def load_merged(model_dir: Path):
    """The merged transformers model (eager attention: the graph ONNX Runtime fuses)."""
    try:
        model = load_trained_classifier(model_dir, attn_implementation="eager")
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except OSError as exc:
        raise FinloraError(f"cannot load the model in {model_dir}: {exc}") from exc
    stray = [n for n, _ in model.named_parameters() if "lora_" in n]
    if stray:
        raise FinloraError(
            f"{model_dir} loads as a PEFT model ({stray[0]}); export needs the merged weights "
            "that `finlora train` saves beside config.json"
        )
    return model.to("cpu").float().eval(), tokenizer


def torch_export(model, tokenizer, path: Path, opset: int) -> None:
    """Trace with a padded two-text batch so the attention mask stays an input of the graph.

    The TorchScript exporter is used because ONNX Runtime's transformer optimizer recognises
    (and fuses) the attention pattern it emits.
    """
    sample = tokenizer(
        ["Profit rose.", "A longer second sentence, so that the first one gets padded."],
        padding=True,
        return_tensors="pt",
    )
    axes = {0: "batch", 1: "sequence"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter, not problems
        torch.onnx.export(
            _LogitsOnly(model).eval(),
            (sample["input_ids"], sample["attention_mask"]),
            str(path),
            dynamo=False,
            input_names=INPUT_NAMES,
            output_names=["logits"],
            dynamic_axes={
                "input_ids": axes,
                "attention_mask": axes,
                "logits": {0: "batch"},
            },
            opset_version=opset,
            do_constant_folding=True,
        )


def optimize(raw: Path, target: Path, config) -> dict[str, int]:
    """Fuse embeddings, attention, layer norms and GELU; returns the fused operator counts.

    Residual adds stay unfused from their layer norms: ONNX Runtime's CPU
    SkipLayerNormalization kernel took 20% of the int8 model's time at batch 32 here, and
    Add + LayerNormalization is 15-25% faster end to end (docs/serving.md). `OnnxRunner`
    keeps the session from re-fusing them at load time.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.enable_skip_layer_norm = False
    options.enable_bias_skip_layer_norm = False
    try:
        with _quiet_logging():
            optimized = optimize_model(
                str(raw),
                model_type="bert",
                num_heads=getattr(config, "num_attention_heads", 0),
                hidden_size=getattr(config, "hidden_size", 0),
                optimization_options=options,
            )
    except Exception as exc:  # an unrecognised graph: keep it unfused, ORT still optimises
        log.warning("graph fusion failed (%s); saving the unfused graph", exc)
        shutil.copyfile(raw, target)
        return {}
    with _quiet_logging():
        optimized.save_model_to_file(str(target))
    return {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}


def ffn_output_matmuls(path: Path) -> list[str]:
    """The model's feed-forward output projections, in layer order: their input (the GELU
    output) has the outlier channels that per-tensor activation quantization handles worst, so
    they are the ones to keep in fp32 when int8 loses too much (see docs/serving.md)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return [
        n.name
        for n in graph.node
        if n.op_type == "MatMul" and FFN_OUTPUT.search(n.name) and "attention" not in n.name
    ]


def quantize_int8(source: Path, target: Path, keep_fp32: list[str]) -> None:
    """Dynamic int8 with per-channel weight scales, except the MatMuls in `keep_fp32`."""
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_logging():
        quantize_dynamic(
            str(source),
            str(target),
            weight_type=QuantType.QInt8,
            per_channel=True,
            nodes_to_exclude=keep_fp32,
            # Fused ops (com.microsoft domain) defeat shape inference; their outputs are float.
            extra_options={"DefaultTensorType": TensorProto.FLOAT},
        )


@contextlib.contextmanager
def _quiet_logging():
    """ONNX Runtime's optimizer and quantizer log every step, some on the root logger."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def verification_data(model_dir: Path, labels: list[str]) -> VerificationData:
    """The run's validation and test splits, rebuilt from its saved config and data."""
    from finlora.data import prepare_data

    try:
        data = prepare_data(resolve_config({}, str(model_dir / RESOLVED_CONFIG)))
    except FinloraError as exc:
        log.warning("cannot rebuild the training splits (%s); verifying on built-in text", exc)
        return VerificationData("builtin", BUILTIN_SAMPLE)
    if data.labels != labels:
        log.warning("rebuilt labels %s differ from the model's; verifying on built-in text", labels)
        return VerificationData("builtin", BUILTIN_SAMPLE)
    source, frame = ("validation", data.validation)
    if frame.empty:
        source, frame = ("test", data.test)
    if frame.empty:
        return VerificationData("builtin", BUILTIN_SAMPLE)
    test = data.test.head(MAX_SAMPLE * 5)
    return VerificationData(
        source,
        frame["text"].head(MAX_SAMPLE).tolist(),
        test["text"].tolist() if not test.empty else None,
        np.asarray(data.targets("test")[: len(test)]).astype(int) if not test.empty else None,
    )


@dataclass
class TorchReference:
    """PyTorch's outputs on the verification data, computed once per export."""

    predictor: Predictor
    logits: np.ndarray
    test_macro_f1: float | None


def torch_reference(
    model, tokenizer, max_length: int, data: VerificationData, thresholds: list[float] | None
) -> TorchReference:
    predictor = Predictor(model, tokenizer, max_length, 32, thresholds=thresholds)
    f1 = None
    if data.test_texts:
        f1 = _macro_f1(data.test_truth, _decide(predictor, data.test_texts), predictor.labels)
    return TorchReference(predictor, predictor.logits(data.texts), f1)


def verify(
    model,
    tokenizer,
    max_length: int,
    labels: list[str],
    onnx_dir: Path,
    precisions: list[str],
    data: VerificationData,
    threads: int | None,
    thresholds: list[float] | None = None,
    reference: TorchReference | None = None,
) -> tuple[dict, list[str]]:
    """Compare every exported model with PyTorch: the parity block and the contract's failures.

    "Labels" are the argmax class, or for a multi-label model the set of labels whose score
    reaches its threshold (a text agrees only when its whole set does).
    """
    reference = reference or torch_reference(model, tokenizer, max_length, data, thresholds)
    ref_f1, ref_logits = reference.test_macro_f1, reference.logits
    parity: dict = {"sample": data.source, "size": len(data.texts)}
    failures = []
    for precision in precisions:
        runner = OnnxRunner(onnx_dir / ONNX_FILES[precision], threads, precision)
        candidate = Predictor(
            runner, tokenizer, max_length, 32, labels, thresholds, reference.predictor.multi_label
        )
        logits = candidate.logits(data.texts)
        agree = _decisions(candidate, logits) == _decisions(reference.predictor, ref_logits)
        block = {
            "max_abs_logit_diff": float(np.abs(logits - ref_logits).max()),
            "label_agreement": float(agree.reshape(len(agree), -1).all(axis=1).mean()),
        }
        if ref_f1 is not None:
            f1 = _macro_f1(data.test_truth, _decide(candidate, data.test_texts), labels)
            block.update(
                test_size=len(data.test_texts),
                test_macro_f1_torch=ref_f1,
                test_macro_f1=f1,
                test_macro_f1_loss=ref_f1 - f1,
            )
        parity[precision] = block
        log.info("parity %s vs PyTorch on %s: %s", precision, data.source, block)
        failures += parity_failures(precision, block)
    return parity, failures


def parity_failures(precision: str, block: dict) -> list[str]:
    """The thresholds of the export contract, as messages naming the numbers."""
    out = []
    if precision == "fp32":
        if block["label_agreement"] < 1.0:
            out.append(f"fp32 label agreement {block['label_agreement']:.4f} < 1")
        if block["max_abs_logit_diff"] >= FP32_MAX_LOGIT_DIFF:
            out.append(
                f"fp32 max |logit diff| {block['max_abs_logit_diff']:.2e} >= {FP32_MAX_LOGIT_DIFF}"
            )
    else:
        if block["label_agreement"] < INT8_MIN_AGREEMENT:
            out.append(
                f"int8 label agreement {block['label_agreement']:.4f} < {INT8_MIN_AGREEMENT}"
            )
        if block.get("test_macro_f1_loss", 0.0) > INT8_MAX_F1_LOSS:
            out.append(
                f"int8 test macro-F1 {block['test_macro_f1']:.4f} is "
                f"{block['test_macro_f1_loss']:.4f} below PyTorch's (max {INT8_MAX_F1_LOSS})"
            )
    return out


def _decisions(predictor: Predictor, logits: np.ndarray) -> np.ndarray:
    """Class ids, or multi-label 0/1 rows (score >= the label's threshold)."""
    if predictor.multi_label:
        return apply_thresholds(predictor.scores(logits), predictor.thresholds)
    return logits.argmax(-1)


def _decide(predictor: Predictor, texts: list[str]) -> np.ndarray:
    return _decisions(predictor, predictor.logits(texts))


def _macro_f1(truth: np.ndarray, predicted: np.ndarray, labels: list[str]) -> float:
    """Macro-F1 over classes, or over labels for multi-hot rows."""
    ids = list(range(len(labels))) if np.ndim(truth) == 1 else None
    return float(f1_score(truth, predicted, labels=ids, average="macro", zero_division=0))


def export_versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    from finlora.machine import library_versions

    return {**library_versions(), "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
