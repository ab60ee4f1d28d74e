"""Long documents: reading, tag stripping, sentences, token windows, and flagged clauses."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from transformers import AutoTokenizer, PretrainedConfig

from finlora.documents import (
    classify_document,
    read_document,
    sentence_spans,
    strip_tags,
    token_windows,
)
from finlora.errors import FinloraError
from finlora.predictor import Predictor


@pytest.fixture(scope="module")
def tokenizer(packaged_model_dir):
    return AutoTokenizer.from_pretrained(packaged_model_dir)


def test_strip_tags_maps_crossed_tags_onto_the_plain_text():
    markup = "Intro. <ter3><ch2>We may stop.</ch2></ter3> <ch2><ltd2>No liability.</ch2></ltd2> End"
    text, spans = strip_tags(markup)
    assert text == "Intro. We may stop. No liability. End"
    found = {(s.tag, text[s.start : s.end]) for s in spans}
    assert found == {("ter3", "We may stop."), ("ch2", "We may stop."),
                     ("ch2", "No liability."), ("ltd2", "No liability.")}  # fmt: skip


def test_sentences_keep_offsets_and_skip_abbreviations():
    text = "* 1. Access\nWe may, e.g. at any time, end it. You agree!  Fees (see Sec. 4) apply.\n"
    spans = sentence_spans(text)
    assert [text[a:b] for a, b in spans] == [
        "* 1. Access",
        "We may, e.g. at any time, end it.",
        "You agree!",
        "Fees (see Sec. 4) apply.",
    ]


@pytest.mark.parametrize(("window", "stride"), [(16, 8), (16, 16), (7, 3), (500, 250)])
def test_windows_cover_every_token_and_map_back_to_the_text(tokenizer, window, stride):
    text = (
        "Terms of Service.\n  We MAY suspend or terminate your account at any time, for any "
        "reason, without notice (including “inactivity”) — and we are not liable for any "
        "loss of data, profits or goodwill arising therefrom. Disputes go to arbitration."
    )
    offset = 100
    spans = token_windows(tokenizer, text, window, stride, offset)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    marks = [tuple(m) for m in encoded["offset_mapping"]]
    covered = set()
    for start, end in spans:
        piece = text[start - offset : end - offset]
        assert piece == piece.strip() and piece  # starts and ends on a token
        inside = [i for i, (a, b) in enumerate(marks) if a >= start - offset and b <= end - offset]
        assert len(inside) <= window
        covered.update(inside)
    assert covered == set(range(len(marks)))
    assert spans[-1][1] - offset == marks[-1][1]
    if len(marks) > window:
        assert len(spans) == 1 + -(-(len(marks) - window) // stride)
    with pytest.raises(FinloraError, match="--stride"):
        token_windows(tokenizer, text, 8, 9)


def test_read_pdf(tmp_path):
    """A one-page PDF written by hand (pypdf reads; it does not lay out text)."""
    content = b"BT /F1 12 Tf 72 720 Td (We may terminate your account at any time.) Tj ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    path = tmp_path / "tos.pdf"
    path.write_bytes(bytes(out))
    assert read_document(path).strip() == "We may terminate your account at any time."
    (tmp_path / "bad.pdf").write_bytes(b"not a pdf")
    with pytest.raises(FinloraError, match="cannot read"):
        read_document(tmp_path / "bad.pdf")
    (tmp_path / "tos.docx").write_text("x")
    with pytest.raises(FinloraError, match="unsupported type"):
        read_document(tmp_path / "tos.docx")


class BagOfWords(nn.Module):
    """A linear model over token counts with a transformers-like interface.

    Its weights come from logistic regressions fitted on real CLAUDETTE sentences, so it is a
    genuinely trained clause detector that runs in milliseconds: the flagged-span test below
    is about the document pipeline, not about the encoder.
    """

    def __init__(self, weights: np.ndarray, bias: np.ndarray, labels: list[str]) -> None:
        super().__init__()
        self.tokens = nn.EmbeddingBag.from_pretrained(torch.tensor(weights.T), mode="sum")
        self.bias = nn.Parameter(torch.tensor(bias))
        self.config = PretrainedConfig(
            id2label=dict(enumerate(labels)), problem_type="multi_label_classification"
        )

    def forward(self, input_ids, attention_mask, **_):
        counts = attention_mask.float()
        return SimpleNamespace(logits=self.tokens(input_ids, per_sample_weights=counts) + self.bias)


def token_presence(tokenizer, texts):
    from scipy.sparse import csr_matrix

    rows = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    indices = [i for row in rows for i in row]
    pointers = np.cumsum([0] + [len(row) for row in rows])
    matrix = csr_matrix(
        (np.ones(len(indices), dtype=np.float32), indices, pointers),
        shape=(len(rows), tokenizer.vocab_size),
    )
    matrix.sum_duplicates()
    matrix.data[:] = 1
    return matrix


def test_flagged_spans_overlap_the_tagged_clauses_of_an_unseen_document(tokenizer, claudette_dir):
    from sklearn.linear_model import LogisticRegression

    from finlora.data.prepare import multi_hot
    from finlora.data.sources import read_claudette
    from finlora.evaluation import tune_thresholds

    root = claudette_dir
    held_out = "9gag"
    corpus = read_claudette(root)
    labels = sorted({name for row in corpus["label"] for name in row})
    others = corpus[corpus["document"] != held_out]
    tuning_docs = sorted(set(others["document"]))[:6]
    fit, tune = (
        others[~others["document"].isin(tuning_docs)],
        others[others["document"].isin(tuning_docs)],
    )
    features, targets = token_presence(tokenizer, fit["text"]), multi_hot(fit["label"], labels)
    models = [
        LogisticRegression(C=4.0, class_weight="balanced", max_iter=1000).fit(
            features, targets[:, j]
        )
        for j in range(len(labels))
    ]
    model = BagOfWords(
        np.stack([m.coef_[0] for m in models]).astype(np.float32),
        np.array([m.intercept_[0] for m in models], dtype=np.float32),
        labels,
    )
    predictor = Predictor(model, tokenizer, max_length=128)
    predictor.thresholds = tune_thresholds(
        multi_hot(tune["label"], labels), predictor.probabilities(tune["text"])
    )

    path = root / "OriginalTaggedDocuments" / f"{held_out}.xml"
    text, tags = strip_tags(path.read_text(encoding="utf-8"))
    assert read_document(path) == text
    unfair = [t for t in tags if t.tag[-1] in "23"]  # levels 2/3: potentially/clearly unfair
    result = classify_document(predictor, text)
    spans = result["spans"]
    for span in spans:
        assert text[span["start"] : span["end"]] == span["text"]

    def overlaps(span, tag):
        return span["start"] < tag.end and tag.start < span["end"]

    precision = np.mean([any(overlaps(s, t) for t in unfair) for s in spans])
    recall = np.mean([any(overlaps(s, t) for s in spans) for t in unfair])
    pieces = sentence_spans(text)
    base_rate = np.mean([any(a < t.end and t.start < b for t in unfair) for a, b in pieces])
    assert len(spans) >= 5
    assert precision >= 0.5 > 3 * base_rate  # flagged pieces are mostly tagged clauses
    assert recall >= 0.5  # and most tagged clauses are flagged
    summary = result["summary"]["per_label"]
    assert max(summary, key=lambda lab: summary[lab]["count"]) in {"LTD", "TER", "CH", "USE"}
