"""One way to load a saved classifier and predict: used by train, evaluate, predict and serve.

Two backends run the same merged model behind one interface: `torch` (the safetensors weights)
and `onnx` (the ONNX Runtime export in `<model dir>/onnx/`, fp32 or int8). Tokenization,
batching and the label map are shared, so both backends see identical inputs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import yaml
from transformers import AutoTokenizer

from finlora.artifacts import (
    BACKENDS,
    EXPORT_INFO,
    ONNX_DIR,
    ONNX_FILES,
    PRECISIONS,
    RESOLVED_CONFIG,
    THRESHOLDS,
    read_json,
    require_model_dir,
)
from finlora.calibration import Calibration, check_coverage, load_calibration
from finlora.errors import FinloraError
from finlora.evaluation import DEFAULT_THRESHOLD, apply_thresholds, sigmoid
from finlora.mean_pooling import load_finetuned


def default_threads() -> int:
    """Cores this process may use: intra-op threads beyond them only contend."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class TorchRunner:
    """PyTorch eager forward pass: int64 arrays in, float32 logits out."""

    backend = "torch"
    precision = "fp32"

    def __init__(self, model, threads: int | None = None) -> None:
        self.model = model.eval()
        self.device = next(model.parameters()).device
        if threads:
            torch.set_num_threads(threads)

    @torch.inference_mode()
    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        logits = self.model(
            input_ids=torch.from_numpy(input_ids).to(self.device),
            attention_mask=torch.from_numpy(attention_mask).to(self.device),
        ).logits
        return logits.float().cpu().numpy()


class OnnxRunner:
    """An ONNX Runtime CPU session tuned for small batches: a fixed number of intra-op
    threads, one inter-op thread, all graph optimisations but SkipLayerNorm fusion (its CPU
    kernel is slower than the Add + LayerNormalization it replaces; see `export.onnx`)."""

    backend = "onnx"

    def __init__(self, path: str | Path, threads: int | None = None, precision: str = "fp32"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(path),
                options,
                providers=["CPUExecutionProvider"],
                disabled_optimizers=["SkipLayerNormFusion"],
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise FinloraError(
                f"cannot load ONNX model {path}: {str(exc).splitlines()[0][:200]}; "
                "re-run `finlora export`"
            ) from exc
        self.path = Path(path)
        self.precision = precision
        self.threads = options.intra_op_num_threads
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        return self.session.run(None, {k: feed[k] for k in self.inputs})[0]


class Predictor:
    """Texts in, class probabilities out, with the model's own label names and max_length.

    `model` is a transformers model (torch backend) or an `OnnxRunner` with `labels` given.
    A multi-label model (config `problem_type` "multi_label_classification") gives one
    sigmoid score per label, and a label is predicted when its score reaches that label's
    threshold (tuned on validation by `finlora train`, read from thresholds.json).

    With a `calibration` (calibration.json, `finlora.calibration`), `scores`/`probabilities`
    are calibrated (temperature or per-label Platt scaling; labels unchanged), `thresholds`
    are mapped into that space (`raw_thresholds` keeps the saved ones), and each `predict`
    record carries a conformal `prediction_set` at `coverage` and `needs_review`.
    """

    def __init__(
        self,
        model,
        tokenizer,
        max_length: int = 128,
        batch_size: int = 64,
        labels: list[str] | None = None,
        thresholds: Sequence[float] | None = None,
        multi_label: bool | None = None,
        calibration: Calibration | None = None,
        coverage: float | None = None,
    ) -> None:
        if isinstance(model, OnnxRunner):
            if labels is None:
                raise ValueError("an ONNX predictor needs its labels")
            self.model = None
            self.runner = model
        else:
            self.model = model.eval()
            self.runner = TorchRunner(model)
            id2label = model.config.id2label
            labels = labels or [id2label[i] for i in range(len(id2label))]
        self.labels = list(labels)
        if multi_label is None:
            problem_type = getattr(getattr(model, "config", None), "problem_type", None)
            multi_label = problem_type == "multi_label_classification"
        self.multi_label = multi_label
        self.calibration = calibration
        self.coverage = coverage
        # As saved (thresholds.json): on the uncalibrated sigmoid scores.
        self.raw_thresholds = [float(t) for t in thresholds or [DEFAULT_THRESHOLD] * len(labels)]
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._fast = _fast_tokenizer(tokenizer, max_length)

    @property
    def thresholds(self) -> list[float]:
        """Per-label decision thresholds in the space of `scores` (calibrated if it is)."""
        if self.multi_label and self.calibration is not None:
            return self.calibration.map_thresholds(self.raw_thresholds)
        return self.raw_thresholds

    @thresholds.setter
    def thresholds(self, values: Sequence[float]) -> None:
        if self.multi_label and self.calibration is not None:
            values = self.calibration.unmap_thresholds(values)
        self.raw_thresholds = [float(v) for v in values]

    @property
    def coverage(self) -> float | None:
        """The conformal coverage of `prediction_set`s (None: no sets)."""
        if self.calibration is None or not self.calibration.has_sets:
            return None
        return self._coverage if self._coverage is not None else self.calibration.coverage

    @coverage.setter
    def coverage(self, value: float | None) -> None:
        if value is not None:
            check_coverage(value)
        self._coverage = value

    @property
    def backend(self) -> str:
        return self.runner.backend

    @property
    def precision(self) -> str:
        return self.runner.precision

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        batch_size: int = 64,
        backend: str = "torch",
        precision: str = "auto",
        threads: int | None = None,
        calibrated: bool = True,
        coverage: float | None = None,
    ) -> Predictor:
        """Load an output dir with the torch backend (plain transformers, no PEFT needed) or
        its ONNX export.

        Args:
            model_dir: the output directory of `finlora train` (or its `onnx/` export).
            batch_size: texts per inference batch.
            backend: "torch", "onnx", or "auto" (the export when there is one).
            precision: ONNX model: "fp32", "int8" or "auto" (int8 when exported).
            threads: inference threads (default: all cores).
            calibrated: apply calibration.json when the model has one (False: raw scores, no
                prediction sets).
            coverage: the prediction sets' coverage (default: the one saved, 0.9).

        Returns:
            A Predictor with the model's labels, max_length, tuned thresholds and calibration.
        """
        if batch_size < 1:
            raise FinloraError(f"--batch_size must be at least 1, got {batch_size}")
        if threads is not None and threads < 1:
            raise FinloraError(f"--threads must be at least 1, got {threads}")
        if backend not in BACKENDS:
            raise FinloraError(f"--backend {backend!r} is unknown; use one of {BACKENDS}")
        if precision not in PRECISIONS:
            raise FinloraError(f"--precision {precision!r} is unknown; use one of {PRECISIONS}")
        if coverage is not None:  # before the (slow) model load
            check_coverage(coverage)
        onnx_dir = find_onnx_dir(model_dir)
        if backend == "auto":
            backend = "onnx" if onnx_dir else "torch"
        if backend == "onnx":
            if onnx_dir is None:
                raise FinloraError(
                    f"{model_dir} has no ONNX export; run `finlora export --model {model_dir} "
                    "--format onnx` first, or use --backend torch"
                )
            predictor = cls._load_onnx(onnx_dir, batch_size, precision, threads)
            return predictor.with_calibration(onnx_dir, calibrated, coverage)
        if precision == "int8":
            raise FinloraError("--precision int8 needs --backend onnx (torch runs fp32)")
        model_dir = require_model_dir(model_dir)
        try:
            model = load_trained_classifier(model_dir)
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
        except OSError as exc:
            raise FinloraError(f"cannot load the model in {model_dir}: {exc}") from exc
        if threads:
            torch.set_num_threads(threads)
        labels = [model.config.id2label[i] for i in range(len(model.config.id2label))]
        predictor = cls(
            model,
            tokenizer,
            saved_max_length(model_dir, tokenizer),
            batch_size,
            thresholds=saved_thresholds(model_dir, labels),
        )
        return predictor.with_calibration(model_dir, calibrated, coverage)

    def with_calibration(
        self, model_dir: str | Path, calibrated: bool = True, coverage: float | None = None
    ) -> Predictor:
        """Apply `model_dir`'s calibration.json, if it has one and `calibrated`."""
        self.coverage = coverage  # checked even when unused: a typo should not pass silently
        if calibrated:
            self.calibration = load_calibration(model_dir, self.labels)
        return self

    @classmethod
    def _load_onnx(
        cls, onnx_dir: Path, batch_size: int, precision: str, threads: int | None
    ) -> Predictor:
        info = read_json(onnx_dir / EXPORT_INFO)
        exported = [p for p in ("int8", "fp32") if ONNX_FILES[p] in info["files"]]
        chosen = exported[0] if precision == "auto" else precision
        if chosen not in exported:
            raise FinloraError(
                f"{onnx_dir} has no {chosen} model (exported: {', '.join(exported)}); "
                f"re-export with `finlora export --quantize int8` or pick --precision fp32"
            )
        try:
            tokenizer = AutoTokenizer.from_pretrained(onnx_dir)
        except OSError as exc:
            raise FinloraError(f"cannot load the tokenizer in {onnx_dir}: {exc}") from exc
        runner = OnnxRunner(onnx_dir / ONNX_FILES[chosen], threads, chosen)
        thresholds = saved_thresholds(onnx_dir, info["labels"])
        problem_type = read_json(onnx_dir / "config.json").get("problem_type")
        multi_label = problem_type == "multi_label_classification"
        if multi_label and thresholds is None:
            raise FinloraError(
                f"{onnx_dir} holds a multi-label model but no {THRESHOLDS}; re-run "
                "`finlora export` on the `finlora train` output dir (it copies them in)"
            )
        return cls(
            runner,
            tokenizer,
            int(info["max_length"]),
            batch_size,
            info["labels"],
            thresholds=thresholds,
            multi_label=multi_label,
        )

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[bool]]:
        """input_ids, attention_mask (padded to the longest text, not to max_length) and
        whether each text was truncated."""
        if self._fast is not None:
            encodings = (
                [self._fast.encode(texts[0])]
                if len(texts) == 1
                else self._fast.encode_batch(list(texts))
            )
            rows = [e.ids for e in encodings]
            truncated = [bool(e.overflowing) for e in encodings]
        else:
            full = self.tokenizer(list(texts), truncation=False)["input_ids"]
            truncated = [len(ids) > self.max_length for ids in full]
            rows = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)[
                "input_ids"
            ]
        width = max(len(r) for r in rows)
        input_ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = row
            attention_mask[i, : len(row)] = 1
        return input_ids, attention_mask, truncated

    def logits_and_truncation(self, texts: Sequence[str]) -> tuple[np.ndarray, list[bool]]:
        """Logits in input order; batches are formed from length-sorted texts to pad less."""
        texts = [str(t) for t in texts]
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        truncated = [False] * len(texts)
        order = list(range(len(texts)))
        if len(texts) > self.batch_size:
            order.sort(key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            input_ids, attention_mask, cut = self.encode([texts[i] for i in index])
            out[index] = self.runner(input_ids, attention_mask)
            for i, flag in zip(index, cut):
                truncated[i] = flag
        return out, truncated

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        return self.logits_and_truncation(texts)[0]

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        """Softmax over classes; for a multi-label model, one sigmoid score per label."""
        return self.scores(self.logits(texts))

    def scores(self, logits: np.ndarray) -> np.ndarray:
        """Softmax / sigmoid of the logits, calibrated when the predictor has a calibration."""
        if self.calibration is not None:
            return self.calibration.apply(logits)
        return sigmoid(logits) if self.multi_label else softmax(logits)

    def prediction_sets(self, scores: np.ndarray) -> dict[str, list] | None:
        """Conformal sets of calibrated `scores` at `coverage`: `prediction_set` (labels;
        multi-label: those surely present), `unsure` (multi-label: labels the set cannot
        decide) and `needs_review` per row; None when the model has no calibration."""
        if self.coverage is None:
            return None
        sets, unsure, review = self.calibration.prediction_sets(scores, self.coverage)
        out = {"prediction_set": sets, "needs_review": review}
        if self.multi_label:
            out["unsure"] = unsure
        return out

    def predict(self, texts: Sequence[str]) -> list[dict]:
        """Classify texts.

        Args:
            texts: the texts.

        Returns:
            One `{"label", "probabilities", "truncated"}` record per text; multi-label:
            `{"labels", "scores", "truncated"}`; with a calibration also `prediction_set` and
            `needs_review` (multi-label: and `unsure`).
        """
        logits, truncated = self.logits_and_truncation(texts)
        scores = self.scores(logits)
        if self.multi_label:
            records = [
                {
                    "labels": [lab for lab, hit in zip(self.labels, row) if hit],
                    "scores": {lab: round(float(p), 6) for lab, p in zip(self.labels, values)},
                    "truncated": cut,
                }
                for row, values, cut in zip(
                    apply_thresholds(scores, self.thresholds), scores, truncated
                )
            ]
        else:
            records = [
                {
                    "label": self.labels[int(row.argmax())],
                    "probabilities": {lab: round(float(p), 6) for lab, p in zip(self.labels, row)},
                    "truncated": cut,
                }
                for row, cut in zip(scores, truncated)
            ]
        sets = self.prediction_sets(scores)
        if sets:
            for i, record in enumerate(records):
                record.update({key: values[i] for key, values in sets.items()})
        return records

    def predict_ids(self, texts: Sequence[str]) -> list[int]:
        return self.logits(texts).argmax(-1).tolist()

    def predict_label_matrix(self, texts: Sequence[str]) -> np.ndarray:
        """Multi-label decisions, shape (texts, labels), 1 where a score reaches its threshold."""
        return apply_thresholds(self.probabilities(texts), self.thresholds)


def load_trained_classifier(model_dir: Path, **kwargs):
    """The saved classifier, refusing a directory without the head's weights (a base
    encoder, say), which transformers would fill with random values that predict noise."""
    model, loading = load_finetuned(model_dir, output_loading_info=True, **kwargs)
    if loading["missing_keys"]:
        raise FinloraError(
            f"{model_dir} is not a trained classifier (it has no weights for "
            f"{', '.join(sorted(loading['missing_keys'])[:3])}); pass the --output_dir of a "
            "`finlora train` run"
        )
    return model


def saved_thresholds(model_dir: Path, labels: list[str]) -> list[float] | None:
    """Per-label thresholds from thresholds.json, in the model's label order."""
    path = Path(model_dir) / THRESHOLDS
    if not path.is_file():
        return None
    saved = read_json(path)["thresholds"]
    missing = [lab for lab in labels if lab not in saved]
    if missing:
        raise FinloraError(
            f"{path} has no threshold for label(s) {', '.join(missing)}; retrain or fix the file"
        )
    return [float(saved[lab]) for lab in labels]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _fast_tokenizer(tokenizer, max_length: int):
    """A private copy of the Rust tokenizer truncating to max_length and never padding.

    Calling it directly skips the transformers wrapper (half the batch-1 tokenization time)
    and undoes a padding-to-max_length setting some saved tokenizers carry.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    from tokenizers import Tokenizer

    fast = Tokenizer.from_str(backend.to_str())
    fast.enable_truncation(max_length)
    fast.no_padding()
    return fast


def find_onnx_dir(model_dir: str | Path) -> Path | None:
    """`<dir>/onnx` of a training output dir, or the export dir itself; None if absent."""
    model_dir = Path(model_dir)
    for candidate in (model_dir / ONNX_DIR, model_dir):
        if (candidate / EXPORT_INFO).is_file():
            return candidate
    return None


def saved_max_length(model_dir: Path, tokenizer) -> int:
    config_file = model_dir / RESOLVED_CONFIG
    if config_file.is_file():
        saved = yaml.safe_load(config_file.read_text()) or {}
        if saved.get("max_length"):
            return int(saved["max_length"])
    return min(int(getattr(tokenizer, "model_max_length", 512)), 512)
