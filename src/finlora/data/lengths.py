"""Token lengths: they decide `max_length` and how much text truncation throws away."""

from __future__ import annotations

import numpy as np

PERCENTILES = (50, 90, 95, 99)
# Above this share of truncated training texts, training warns and names a better max_length.
TRUNCATION_WARNING_SHARE = 0.05


def token_lengths(tokenizer, texts: list[str]) -> np.ndarray:
    """Tokens per text as the model sees it (special tokens included), without truncation."""
    encoded = tokenizer(list(texts), truncation=False, add_special_tokens=True, verbose=False)
    return np.asarray([len(ids) for ids in encoded["input_ids"]])


def length_stats(lengths: np.ndarray, max_length: int) -> dict:
    return {
        "min": int(lengths.min()),
        "mean": round(float(lengths.mean()), 2),
        **{f"p{p}": float(np.percentile(lengths, p)) for p in PERCENTILES},
        "max": int(lengths.max()),
        "max_length": max_length,
        "truncated": int((lengths > max_length).sum()),
        "truncated_share": round(float((lengths > max_length).mean()), 4),
    }
