"""Whole documents: read .txt/.xml/.pdf, cut into sentences or token windows, flag clauses.

A Terms of Service runs to thousands of tokens, far over a model's `max_length`, and the
clauses that matter are single sentences. So a document is cut into sentences (and a
sentence longer than the window into overlapping token windows), every piece is classified,
and the pieces that carry a label come back with their character offsets in the document
text, so a reader can highlight them. `classify_document` is what `finlora predict
--document` and the service's `POST /v1/classify-document` call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from finlora.errors import FinloraError
from finlora.evaluation import apply_thresholds
from finlora.predictor import Predictor

DOCUMENT_SUFFIXES = (".txt", ".xml", ".html", ".pdf")
SEGMENTS = ("sentences", "windows")

_TAG = re.compile(r"<(/?)([A-Za-z][\w.:-]*)[^<>]*?(/?)>")
# A sentence ends at . ! or ? (plus closing quotes/brackets) before whitespace and a
# character that is not a lower-case letter; line breaks always end a piece.
_SENTENCE_END = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*(?=\s+[^\sa-z])")
_ABBREVIATIONS = {"e.g", "i.e", "etc", "inc", "ltd", "co", "corp", "no", "u.s", "vs", "mr", "mrs",
                  "ms", "dr", "st", "art", "sec", "para", "p", "pp", "cf"}  # fmt: skip
_ROMAN = {"ii", "iii", "iv", "vi", "vii", "viii", "ix", "xi", "xii"}


@dataclass(frozen=True)
class TaggedSpan:
    """A tagged stretch of a marked-up document, in offsets of the tag-free text."""

    tag: str
    start: int
    end: int


def strip_tags(markup: str) -> tuple[str, list[TaggedSpan]]:
    """Remove `<tag>` markup; return the plain text and where each tagged stretch lies in it.

    Tolerates the crossed nesting of the CLAUDETTE files (`<a><b>..</a></b>`): a closing tag
    closes the latest open tag of the same name.
    """
    pieces: list[str] = []
    spans: list[TaggedSpan] = []
    open_tags: dict[str, list[int]] = {}
    length = cursor = 0
    for match in _TAG.finditer(markup):
        pieces.append(markup[cursor : match.start()])
        length += match.start() - cursor
        cursor = match.end()
        closing, name, self_closing = match.group(1), match.group(2).lower(), match.group(3)
        if self_closing:
            continue
        if not closing:
            open_tags.setdefault(name, []).append(length)
        elif open_tags.get(name):
            spans.append(TaggedSpan(name, open_tags[name].pop(), length))
    pieces.append(markup[cursor:])
    return "".join(pieces), sorted(spans, key=lambda s: (s.start, s.end, s.tag))


def read_pdf(path: Path) -> str:
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError
    except ImportError as exc:
        raise FinloraError("reading PDF needs pypdf: pip install 'finlora[pdf]'") from exc
    try:
        reader = PdfReader(path)
        return "\n\n".join((page.extract_text() or "").strip() for page in reader.pages)
    except (PdfReadError, OSError, ValueError) as exc:
        raise FinloraError(f"cannot read {path} as PDF: {exc}".splitlines()[0]) from exc


def read_document(path: str | Path) -> str:
    """The text of a .txt, .xml/.html (tags removed) or .pdf document."""
    path = Path(path)
    if not path.is_file():
        raise FinloraError(f"document {path} does not exist; check the path")
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        return read_pdf(path)
    if suffix not in DOCUMENT_SUFFIXES:
        raise FinloraError(
            f"document {path} has unsupported type {suffix or '(none)'}; "
            f"use one of {', '.join(DOCUMENT_SUFFIXES)}"
        )
    text = path.read_text(encoding="utf-8", errors="replace")
    return strip_tags(text)[0] if suffix in (".xml", ".html") else text


def _trimmed(text: str, start: int, end: int) -> tuple[int, int] | None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if start < end else None


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of the sentences of `text`, whitespace trimmed."""
    spans = []
    for line in re.finditer(r"[^\n]+", text):
        start = line.start()
        for end in _SENTENCE_END.finditer(text, line.start(), line.end()):
            words = text[start : end.start()].split()
            last = words[-1].lower().rstrip(".") if words else ""
            # "e.g.", "Inc." and list numbering ("1.", "a.", "iv.") do not end a sentence.
            if last in _ABBREVIATIONS or last.isdigit() or len(last) == 1 or last in _ROMAN:
                continue
            if span := _trimmed(text, start, end.end()):
                spans.append(span)
            start = end.end()
        if span := _trimmed(text, start, line.end()):
            spans.append(span)
    return spans


def token_windows(
    tokenizer, text: str, window: int, stride: int, offset: int = 0
) -> list[tuple[int, int]]:
    """Character spans of overlapping windows of `window` tokens, starts `stride` tokens apart.

    Every token lies in at least one window; the last window ends at the last token. Offsets
    are shifted by `offset` (the position of `text` in its document).
    """
    if not 1 <= stride <= window:
        raise FinloraError(f"--stride must be between 1 and --window ({window}), got {stride}")
    tokens = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    marks = [(a, b) for a, b in tokens["offset_mapping"] if b > a]
    if not marks:
        return []
    spans, first = [], 0
    while True:
        last = min(first + window, len(marks)) - 1
        spans.append((offset + marks[first][0], offset + marks[last][1]))
        if last == len(marks) - 1:
            return spans
        first += stride


def window_size(predictor: Predictor, window: int | None) -> int:
    """Tokens per piece: the model's max_length minus its special tokens, unless given."""
    room = predictor.max_length - predictor.tokenizer.num_special_tokens_to_add()
    if window is None:
        return room
    if not 1 <= window <= room:
        raise FinloraError(
            f"--window must be between 1 and {room} (the model's max_length {predictor.max_length}"
            f" minus special tokens), got {window}"
        )
    return window


def segment(
    text: str,
    tokenizer,
    window: int,
    stride: int,
    unit: str = "sentences",
) -> list[tuple[int, int]]:
    """Pieces to classify: sentences (an over-long one in token windows), or token windows."""
    if unit not in SEGMENTS:
        raise FinloraError(f"--segment {unit!r} is unknown; use one of {', '.join(SEGMENTS)}")
    if unit == "windows":
        return token_windows(tokenizer, text, window, stride)
    pieces = []
    for start, end in sentence_spans(text):
        sentence = text[start:end]
        if len(tokenizer(sentence, add_special_tokens=False)["input_ids"]) <= window:
            pieces.append((start, end))
        else:
            pieces.extend(token_windows(tokenizer, sentence, window, stride, start))
    return pieces


def classify_document(
    predictor: Predictor,
    text: str,
    *,
    segment_by: str = "sentences",
    window: int | None = None,
    stride: int | None = None,
) -> dict:
    """Classify every piece of a document; return the labelled spans and a summary.

    Multi-label models: a span is returned when at least one label's score reaches its
    threshold (`labels` lists them). Single-label models: every piece with its class. With a
    calibration (calibration.json), each span also carries its `prediction_set` and
    `needs_review` (multi-label: `unsure`), and the summary counts `needs_review` over all
    pieces (a multi-label piece with no label but an unsure one counts there, not in spans).
    Offsets index `text` (for .xml/.pdf, the text `read_document` returns).
    """
    window = window_size(predictor, window)
    stride = stride or max(1, window // 2)
    pieces = segment(text, predictor.tokenizer, window, stride, segment_by)
    scores = predictor.probabilities([text[a:b] for a, b in pieces]) if pieces else None
    if scores is None:
        decisions = np.zeros((0, len(predictor.labels)), dtype=int)
    elif predictor.multi_label:
        decisions = apply_thresholds(scores, predictor.thresholds)
    else:
        decisions = np.eye(len(predictor.labels), dtype=int)[scores.argmax(-1)]
    sets = predictor.prediction_sets(scores) if scores is not None else None
    spans = []
    review = 0
    for i, ((start, end), row, hits) in enumerate(
        zip(pieces, scores if scores is not None else [], decisions)
    ):
        review += bool(sets and sets["needs_review"][i])
        if not hits.any():
            continue
        span = {
            "start": start,
            "end": end,
            "text": text[start:end],
            "labels": [lab for lab, hit in zip(predictor.labels, hits) if hit],
            "scores": {lab: round(float(s), 6) for lab, s in zip(predictor.labels, row)},
        }
        if sets:
            span.update({key: values[i] for key, values in sets.items()})
        spans.append(span)
    per_label = {}
    for j, name in enumerate(predictor.labels):
        hit = decisions[:, j].astype(bool)
        per_label[name] = {
            "count": int(hit.sum()),
            "max_score": round(float(scores[:, j].max()), 6) if scores is not None else 0.0,
        }
    return {
        "characters": len(text),
        "segment": segment_by,
        "window": window,
        "stride": stride,
        "pieces": len(pieces),
        "labels": predictor.labels,
        "multi_label": predictor.multi_label,
        "thresholds": dict(zip(predictor.labels, predictor.thresholds))
        if predictor.multi_label
        else None,
        "spans": spans,
        "coverage": predictor.coverage,
        "summary": {
            "labelled_pieces": len(spans),
            "per_label": per_label,
            **({"needs_review": review} if sets else {}),
        },
    }
