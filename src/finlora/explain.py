"""Why a text got its label: integrated gradients on the word embeddings, merged to words.

`explain` runs captum's `LayerIntegratedGradients` on the torch model's word-embedding layer:
the path runs from a baseline (every token but [CLS]/[SEP] replaced by [PAD], or [MASK]) to the
text, and the attribution of a token is the integral of the gradient of the explained
probability along that path times the embedding difference. The attributions of all tokens sum
to p(text) - p(baseline) (completeness), up to the error of the `n_steps` Riemann sum.

Sub-token attributions are summed back to words of the original text (character offsets from
the fast tokenizer's offset mapping) and normalised so their absolute values sum to 1: a word's
`score` is its signed share of the evidence, positive for the label, negative against it.

`comprehensiveness` is ERASER's faithfulness measure (DeYoung et al., 2020): how much the
probability of the explained label drops when its top-k attributed words are deleted, against
deleting k random words.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from finlora.errors import FinloraError

N_STEPS = 32
# Rows (texts x steps) in one forward/backward pass of the path.
INTERNAL_BATCH = 128
TEXTS_PER_CALL = 8
BASELINES = ("pad", "mask")
# A word: letters/digits joined by inner . , ' ’ - (so "5.2", "1,100", "don't", "year-on-year"
# stay whole), or one other non-space character (punctuation, a currency sign).
WORD = re.compile(r"\w+(?:[.,'’\-]\w+)*|[^\w\s]")


def words_of(text: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of the words of `text`."""
    return [m.span() for m in WORD.finditer(text)]


def merge_to_words(
    text: str, offsets: Sequence[tuple[int, int]], scores: Sequence[float]
) -> list[dict]:
    """Token scores summed to the words of `text` they overlap, then L1-normalised.

    `offsets` are the tokens' character spans ((0, 0) for special tokens, skipped); a token
    spanning several words splits its score evenly among them. Words no token reached (cut off
    by truncation) score 0. Returns `[{"word", "start", "end", "score"}, ...]` in text order.
    """
    spans = words_of(text)
    owner = np.full(len(text) + 1, -1, dtype=np.int64)
    for index, (start, end) in enumerate(spans):
        owner[start:end] = index
    totals = np.zeros(len(spans), dtype=np.float64)
    for (start, end), score in zip(offsets, scores):
        if end <= start:
            continue
        hit = np.unique(owner[start:end])
        hit = hit[hit >= 0]
        if hit.size:
            totals[hit] += float(score) / hit.size
    norm = np.abs(totals).sum()
    if norm > 0:
        totals /= norm
    return [
        {"word": text[start:end], "start": start, "end": end, "score": round(float(s), 6)}
        for (start, end), s in zip(spans, totals)
    ]


class Explainer:
    """Integrated gradients for a torch-backed `Predictor` (the merged model, no PEFT)."""

    def __init__(
        self,
        predictor,
        n_steps: int = N_STEPS,
        baseline: str = "pad",
        internal_batch_size: int = INTERNAL_BATCH,
    ) -> None:
        if predictor.model is None:
            raise FinloraError(
                "explanations need the torch model (integrated gradients take gradients); "
                "load it with --backend torch"
            )
        if baseline not in BASELINES:
            raise FinloraError(f"baseline {baseline!r} is unknown; use one of {BASELINES}")
        if n_steps < 2:
            raise FinloraError(f"n_steps must be at least 2, got {n_steps}")
        try:
            from captum.attr import LayerIntegratedGradients
        except ImportError:
            raise FinloraError("explanations need captum: pip install 'finlora[explain]'") from None

        self.predictor = predictor
        self.model = predictor.model
        self.tokenizer = predictor.tokenizer
        if not getattr(self.tokenizer, "is_fast", False):
            raise FinloraError("explanations need a fast tokenizer (character offsets)")
        self.n_steps = n_steps
        self.internal_batch_size = internal_batch_size
        token = self.tokenizer.mask_token_id if baseline == "mask" else predictor.pad_id
        if token is None:
            raise FinloraError(f"the tokenizer has no {baseline} token; use the other baseline")
        self.baseline_id = int(token)
        self.device = next(self.model.parameters()).device
        self.lig = LayerIntegratedGradients(self._forward, self.model.get_input_embeddings())

    def _forward(self, input_ids, attention_mask):
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
        return torch.sigmoid(logits) if self.predictor.multi_label else logits.softmax(-1)

    def encode(self, texts: Sequence[str]) -> dict:
        return self.tokenizer(
            list(texts),
            truncation=True,
            max_length=self.predictor.max_length,
            padding=True,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
            return_tensors="pt",
        )

    def token_attributions(
        self, texts: Sequence[str], targets: Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray, dict]:
        """Raw attributions (texts, tokens), the convergence deltas (texts) and the encoding.

        Each row sums to p(target | text) - p(target | baseline) minus its delta.
        """
        encoded = self.encode(texts)
        input_ids = encoded["input_ids"].to(self.device)
        attention_mask = encoded["attention_mask"].to(self.device)
        special = encoded["special_tokens_mask"].bool().to(self.device)
        keep = special | (attention_mask == 0)  # [CLS], [SEP] and padding stay as they are
        baseline = torch.where(keep, input_ids, torch.full_like(input_ids, self.baseline_id))
        self.model.eval()
        with torch.enable_grad():
            attributions, delta = self.lig.attribute(
                inputs=input_ids,
                baselines=baseline,
                additional_forward_args=(attention_mask,),
                target=[int(t) for t in targets],
                n_steps=self.n_steps,
                internal_batch_size=self.internal_batch_size,
                return_convergence_delta=True,
            )
        per_token = attributions.sum(-1) * attention_mask
        return per_token.detach().cpu().numpy(), delta.detach().cpu().numpy(), encoded

    def explain(self, texts: Sequence[str]) -> list[dict]:
        """Per text: single-label `{"label", "probability", "truncated", "attributions"}` for
        the predicted class; multi-label `{"labels", "truncated", "explanations": [{"label",
        "probability", "attributions"}, ...]}`, one per predicted label.

        `probability` is the predictor's (calibrated when it is); each attribution is
        `{"word", "start", "end", "score"}` with the scores' absolute values summing to 1.
        """
        texts = [str(t) for t in texts]
        logits, truncated = self.predictor.logits_and_truncation(texts)
        scores = self.predictor.scores(logits)
        if self.predictor.multi_label:
            from finlora.evaluation import apply_thresholds

            hits = apply_thresholds(scores, self.predictor.thresholds)
            jobs = [(i, j) for i in range(len(texts)) for j in np.flatnonzero(hits[i])]
        else:
            jobs = [(i, int(row.argmax())) for i, row in enumerate(scores)]
        words: dict[tuple[int, int], list[dict]] = {}
        for start in range(0, len(jobs), TEXTS_PER_CALL):
            chunk = jobs[start : start + TEXTS_PER_CALL]
            raw, _, encoded = self.token_attributions(
                [texts[i] for i, _ in chunk], [j for _, j in chunk]
            )
            offsets = encoded["offset_mapping"].tolist()
            for row, (i, j) in enumerate(chunk):
                words[i, j] = merge_to_words(texts[i], offsets[row], raw[row])
        labels = self.predictor.labels
        out = []
        for i in range(len(texts)):
            if self.predictor.multi_label:
                explained = [
                    {
                        "label": labels[j],
                        "probability": round(float(scores[i, j]), 6),
                        "attributions": words[i, j],
                    }
                    for (k, j) in jobs
                    if k == i
                ]
                out.append(
                    {
                        "labels": [e["label"] for e in explained],
                        "truncated": truncated[i],
                        "explanations": explained,
                    }
                )
            else:
                j = jobs[i][1]
                out.append(
                    {
                        "label": labels[j],
                        "probability": round(float(scores[i, j]), 6),
                        "truncated": truncated[i],
                        "attributions": words[i, j],
                    }
                )
        return out


def explained_labels(record: dict) -> list[dict]:
    """The `{"label", "probability", "attributions"}` parts of one `explain` record."""
    return record.get("explanations", [record])


def remove_words(text: str, spans: Sequence[tuple[int, int]]) -> str:
    """`text` without the characters of `spans`, whitespace runs collapsed."""
    pieces, last = [], 0
    for start, end in sorted(spans):
        pieces.append(text[last:start])
        last = max(last, end)
    pieces.append(text[last:])
    return " ".join("".join(pieces).split())


def comprehensiveness(
    predictor,
    texts: Sequence[str],
    records: Sequence[dict],
    k: int = 3,
    random_draws: int = 5,
    seed: int = 0,
) -> dict:
    """ERASER comprehensiveness of `records` (from `Explainer.explain` on `texts`).

    For each explained label: p(label | text) - p(label | text without its k highest-scoring
    words), and the same with k words drawn at random (mean of `random_draws` seeded draws).
    Texts of at most k words lose all of them. Returns the means over explained labels
    (`comprehensiveness`, `random`), their `ratio` and the per-label values.
    """
    if k < 1:
        raise FinloraError(f"k must be at least 1, got {k}")
    rng = np.random.default_rng(seed)
    index = {label: j for j, label in enumerate(predictor.labels)}
    variants: list[str] = []
    plan = []  # (text index, label index, number of random variants)
    for i, (text, record) in enumerate(zip(texts, records)):
        for part in explained_labels(record):
            words = [w for w in part["attributions"]]
            spans = [(w["start"], w["end"]) for w in words]
            top = sorted(range(len(words)), key=lambda w: -words[w]["score"])[:k]
            variants.append(text)
            variants.append(remove_words(text, [spans[w] for w in top]))
            take = min(k, len(words))
            for _ in range(random_draws):
                drawn = rng.choice(len(words), size=take, replace=False) if take else []
                variants.append(remove_words(text, [spans[w] for w in drawn]))
            plan.append((i, index[part["label"]]))
    scores = predictor.probabilities(variants) if variants else np.zeros((0, 0))
    per_label = []
    row = 0
    for i, j in plan:
        full, top = float(scores[row, j]), float(scores[row + 1, j])
        randoms = scores[row + 2 : row + 2 + random_draws, j]
        row += 2 + random_draws
        per_label.append(
            {
                "text": i,
                "label": predictor.labels[j],
                "full": full,
                "top_k": full - top,
                "random": float(full - randoms.mean()),
            }
        )
    top_mean = float(np.mean([p["top_k"] for p in per_label])) if per_label else 0.0
    random_mean = float(np.mean([p["random"] for p in per_label])) if per_label else 0.0
    return {
        "k": k,
        "random_draws": random_draws,
        "explained": len(per_label),
        "comprehensiveness": top_mean,
        "random": random_mean,
        "ratio": top_mean / random_mean if random_mean > 0 else None,
        "per_label": per_label,
    }


def _colour(score: float, peak: float) -> str:
    """Green for the label, red against it, opacity by |score| relative to the largest."""
    alpha = 0.0 if peak <= 0 else min(1.0, abs(score) / peak)
    rgb = "22,163,74" if score >= 0 else "220,38,38"
    return f"rgba({rgb},{0.08 + 0.72 * alpha:.3f})" if score else "transparent"


def highlight(text: str, attributions: Sequence[dict]) -> str:
    """`text` as HTML, each word in a span coloured by its score (title: the score)."""
    peak = max((abs(a["score"]) for a in attributions), default=0.0)
    out, last = [], 0
    for a in attributions:
        out.append(html.escape(text[last : a["start"]]))
        title = html.escape(f"{a['score']:+.4f}", quote=True)
        out.append(
            f'<span class="w" style="background:{_colour(a["score"], peak)}" '
            f'title="{title}">{html.escape(text[a["start"] : a["end"]])}</span>'
        )
        last = a["end"]
    out.append(html.escape(text[last:]))
    return "".join(out)


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font: 15px/1.6 system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; color: #111; }}
.text {{ padding: .6rem .8rem; border: 1px solid #ddd; border-radius: 6px;
  margin: .3rem 0 1.2rem; }}
.w {{ border-radius: 3px; padding: 0 1px; }}
.meta {{ color: #555; font-size: 13px; }}
.legend span {{ padding: 0 .4rem; border-radius: 3px; }}
</style></head><body>
<h1>{title}</h1>
<p class="legend"><span style="background:rgba(22,163,74,.6)">supports the label</span>
<span style="background:rgba(220,38,38,.6)">speaks against it</span>
 &mdash; colour strength: share of the evidence; hover a word for its score.</p>
{body}
</body></html>
"""


def html_page(texts: Sequence[str], records: Sequence[dict], title: str = "finlora explanations"):
    """A self-contained HTML page (inline CSS, no scripts or external assets)."""
    blocks = []
    for text, record in zip(texts, records):
        parts = explained_labels(record)
        if not parts:
            blocks.append(
                f'<p class="meta">no label predicted</p><div class="text">{html.escape(text)}</div>'
            )
        for part in parts:
            cut = " &middot; truncated: words past max_length score 0"
            cut = cut if record["truncated"] else ""
            blocks.append(
                f'<p class="meta"><b>{html.escape(part["label"])}</b> '
                f"p = {part['probability']:.3f}{cut}</p>"
                f'<div class="text">{highlight(text, part["attributions"])}</div>'
            )
    return PAGE.format(title=html.escape(title), body="\n".join(blocks))


def write_html(path: str | Path, texts: Sequence[str], records: Sequence[dict]) -> Path:
    from finlora.artifacts import write_text

    path = Path(path)
    write_text(path, html_page(texts, records))
    return path
