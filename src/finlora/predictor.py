"""One way to load a saved classifier and predict: used by train, evaluate and predict."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import yaml
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from finlora.artifacts import RESOLVED_CONFIG, require_model_dir
from finlora.errors import FinloraError


class Predictor:
    """Texts in, class probabilities out, with the model's own label names and max_length."""

    def __init__(self, model, tokenizer, max_length: int = 128, batch_size: int = 64) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        id2label = model.config.id2label
        self.labels = [id2label[i] for i in range(len(id2label))]

    @classmethod
    def load(cls, model_dir: str | Path, batch_size: int = 64) -> Predictor:
        """Load the merged model of an output dir with plain transformers (no PEFT needed)."""
        model_dir = require_model_dir(model_dir)
        try:
            model = AutoModelForSequenceClassification.from_pretrained(model_dir)
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
        except OSError as exc:
            raise FinloraError(f"cannot load the model in {model_dir}: {exc}") from exc
        return cls(model, tokenizer, saved_max_length(model_dir, tokenizer), batch_size)

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
        return torch.softmax(torch.from_numpy(self.logits(texts)), dim=-1).numpy()

    def predict(self, texts: Sequence[str]) -> list[dict]:
        """One `{"label", "probabilities"}` record per text."""
        probs = self.probabilities(texts)
        return [
            {
                "label": self.labels[int(row.argmax())],
                "probabilities": {lab: round(float(p), 6) for lab, p in zip(self.labels, row)},
            }
            for row in probs
        ]

    def predict_ids(self, texts: Sequence[str]) -> list[int]:
        return self.logits(texts).argmax(-1).tolist()


def saved_max_length(model_dir: Path, tokenizer) -> int:
    config_file = model_dir / RESOLVED_CONFIG
    if config_file.is_file():
        saved = yaml.safe_load(config_file.read_text()) or {}
        if saved.get("max_length"):
            return int(saved["max_length"])
    return min(int(getattr(tokenizer, "model_max_length", 512)), 512)
