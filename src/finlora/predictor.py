"""One way to load a saved classifier and predict: used by train, evaluate and predict."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import yaml
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from finlora.artifacts import RESOLVED_CONFIG, THRESHOLDS, read_json, require_model_dir
from finlora.errors import FinloraError
from finlora.evaluation import DEFAULT_THRESHOLD, apply_thresholds


class Predictor:
    """Texts in, class probabilities out, with the model's own label names and max_length.

    A multi-label model (config `problem_type` "multi_label_classification") gives one
    sigmoid score per label, and a label is predicted when its score reaches that label's
    threshold (tuned on validation by `finlora train`, read from thresholds.json).
    """

    def __init__(
        self,
        model,
        tokenizer,
        max_length: int = 128,
        batch_size: int = 64,
        thresholds: Sequence[float] | None = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        id2label = model.config.id2label
        self.labels = [id2label[i] for i in range(len(id2label))]
        self.multi_label = model.config.problem_type == "multi_label_classification"
        self.thresholds = list(thresholds or [DEFAULT_THRESHOLD] * len(self.labels))

    @classmethod
    def load(cls, model_dir: str | Path, batch_size: int = 64) -> Predictor:
        """Load the merged model of an output dir with plain transformers (no PEFT needed)."""
        model_dir = require_model_dir(model_dir)
        try:
            model = AutoModelForSequenceClassification.from_pretrained(model_dir)
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
        except OSError as exc:
            raise FinloraError(f"cannot load the model in {model_dir}: {exc}") from exc
        labels = [model.config.id2label[i] for i in range(len(model.config.id2label))]
        return cls(
            model,
            tokenizer,
            saved_max_length(model_dir, tokenizer),
            batch_size,
            saved_thresholds(model_dir, labels),
        )

    @torch.inference_mode()
    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """Logits in input order; batches are formed from length-sorted texts to pad less."""
        texts = [str(t) for t in texts]
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        device = next(self.model.parameters()).device
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            batch = self.tokenizer(
                [texts[i] for i in index],
                truncation=True,
                max_length=self.max_length,
                padding=True,
                return_tensors="pt",
            ).to(device)
            out[index] = self.model(**batch).logits.float().cpu().numpy()
        return out

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        """Softmax over classes; for a multi-label model, one sigmoid score per label."""
        logits = torch.from_numpy(self.logits(texts))
        if self.multi_label:
            return torch.sigmoid(logits).numpy()
        return torch.softmax(logits, dim=-1).numpy()

    def predict(self, texts: Sequence[str]) -> list[dict]:
        """One `{"label", "probabilities"}` record per text; multi-label: `{"labels", "scores"}`."""
        probs = self.probabilities(texts)
        if self.multi_label:
            return [
                {
                    "labels": [lab for lab, hit in zip(self.labels, row) if hit],
                    "scores": {lab: round(float(p), 6) for lab, p in zip(self.labels, scores)},
                }
                for row, scores in zip(apply_thresholds(probs, self.thresholds), probs)
            ]
        return [
            {
                "label": self.labels[int(row.argmax())],
                "probabilities": {lab: round(float(p), 6) for lab, p in zip(self.labels, row)},
            }
            for row in probs
        ]

    def predict_ids(self, texts: Sequence[str]) -> list[int]:
        return self.logits(texts).argmax(-1).tolist()

    def predict_label_matrix(self, texts: Sequence[str]) -> np.ndarray:
        """Multi-label decisions, shape (texts, labels), 1 where a score reaches its threshold."""
        return apply_thresholds(self.probabilities(texts), self.thresholds)


def saved_thresholds(model_dir: Path, labels: list[str]) -> list[float] | None:
    """Per-label thresholds from thresholds.json, in the model's label order."""
    path = model_dir / THRESHOLDS
    if not path.is_file():
        return None
    saved = read_json(path)["thresholds"]
    missing = [lab for lab in labels if lab not in saved]
    if missing:
        raise FinloraError(
            f"{path} has no threshold for label(s) {', '.join(missing)}; retrain or fix the file"
        )
    return [float(saved[lab]) for lab in labels]


def saved_max_length(model_dir: Path, tokenizer) -> int:
    config_file = model_dir / RESOLVED_CONFIG
    if config_file.is_file():
        saved = yaml.safe_load(config_file.read_text()) or {}
        if saved.get("max_length"):
            return int(saved["max_length"])
    return min(int(getattr(tokenizer, "model_max_length", 512)), 512)
