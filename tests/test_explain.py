"""Word attributions (finlora.explain): merging to words, completeness, HTML, faithfulness."""

from __future__ import annotations

import numpy as np
import pytest

from finlora.explain import (
    Explainer,
    comprehensiveness,
    highlight,
    html_page,
    merge_to_words,
    remove_words,
    words_of,
)
from finlora.predictor import Predictor


@pytest.fixture(scope="module")
def tiny_predictor(tiny_model_dir):
    """A random 2-layer BERT with the mean-pooling head (3 labels) and the MiniLM tokenizer
    (a random [CLS] head barely depends on the text)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from finlora.mean_pooling import MeanPoolingForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig.from_pretrained(tiny_model_dir, num_labels=3)
    config.id2label = {0: "negative", 1: "neutral", 2: "positive"}
    config.label2id = {v: k for k, v in config.id2label.items()}
    model = MeanPoolingForSequenceClassification(config, BertModel(config, add_pooling_layer=False))
    with torch.no_grad():  # a head that moves the probabilities noticeably
        model.classifier.weight.mul_(10)
    return Predictor(model, AutoTokenizer.from_pretrained(tiny_model_dir), max_length=32)


def words(text: str) -> list[str]:
    return [text[s:e] for s, e in words_of(text)]


def test_words_keep_numbers_and_split_punctuation():
    assert words("Net loss widened to EUR 5.2 mn from EUR 1,100.5 mn.") == [
        "Net", "loss", "widened", "to", "EUR", "5.2", "mn", "from", "EUR", "1,100.5", "mn", ".",
    ]  # fmt: skip
    assert words("Sales (year-on-year) didn't rise: €3bn, 10%!") == [
        "Sales", "(", "year-on-year", ")", "didn't", "rise", ":", "€", "3bn", ",", "10", "%", "!",
    ]  # fmt: skip
    assert words("Änderung für Müller-Lüdenscheid") == ["Änderung", "für", "Müller-Lüdenscheid"]


def test_merge_sums_sub_tokens_with_offsets_and_keeps_sign(tiny_predictor):
    text = "Net  loss widened to EUR 5.2 mn … Umsatzrückgang!"
    encoded = tiny_predictor.tokenizer(text, return_offsets_mapping=True)
    offsets = encoded["offset_mapping"]
    rng = np.random.default_rng(0)
    scores = rng.normal(size=len(offsets))
    merged = merge_to_words(text, offsets, scores)
    assert [m["word"] for m in merged] == words(text)
    for m in merged:
        assert text[m["start"] : m["end"]] == m["word"]
    assert sum(abs(m["score"]) for m in merged) == pytest.approx(1.0, abs=1e-5)
    # "5.2" is three word pieces ("5", ".", "2"): its score is their sum, normalised.
    pieces = [i for i, (s, e) in enumerate(offsets) if e > s and 25 <= s < 28]
    assert len(pieces) == 3
    norm = sum(
        abs(sum(scores[i] for i, (s, e) in enumerate(offsets) if e > s and s >= a and e <= b))
        for a, b in words_of(text)
    )
    five = next(m for m in merged if m["word"] == "5.2")
    assert five["score"] == pytest.approx(sum(scores[i] for i in pieces) / norm, abs=1e-5)


def test_merge_of_nothing_and_of_truncated_words():
    assert merge_to_words("", [(0, 0)], [1.0]) == []
    merged = merge_to_words("up down", [(0, 0), (0, 2), (0, 0)], [5.0, -2.0, 9.0])
    assert [(m["word"], m["score"]) for m in merged] == [("up", -1.0), ("down", 0.0)]


def test_integrated_gradients_are_complete(tiny_predictor):
    """Raw attributions sum to p(x) - p(baseline) (captum's delta is the gap)."""
    import torch

    explainer = Explainer(tiny_predictor, n_steps=64)
    texts = ["Net loss widened to EUR 5.2 mn from EUR 1.1 mn ."] * 2
    raw, delta, encoded = explainer.token_attributions(texts, [0, 2])
    ids = encoded["input_ids"]
    mask = encoded["attention_mask"]
    keep = encoded["special_tokens_mask"].bool() | (mask == 0)
    baseline = torch.where(keep, ids, torch.full_like(ids, tiny_predictor.pad_id))
    with torch.no_grad():
        model = tiny_predictor.model
        p = model(input_ids=ids, attention_mask=mask).logits.softmax(-1)
        p0 = model(input_ids=baseline, attention_mask=mask).logits.softmax(-1)
    gap = (p - p0)[[0, 1], [0, 2]].numpy()
    assert np.abs(gap).max() > 0.01  # the check means something
    np.testing.assert_allclose(raw.sum(1), gap, atol=0.01)
    assert np.abs(delta).max() < 0.01


def test_explain_records_and_comprehensiveness_shape(tiny_predictor):
    texts = ["Net loss widened to EUR 5.2 mn .", "Operating profit rose ."]
    records = Explainer(tiny_predictor, n_steps=8).explain(texts)
    probabilities = tiny_predictor.probabilities(texts)
    for text, record, row in zip(texts, records, probabilities):
        assert set(record) == {"label", "probability", "truncated", "attributions"}
        assert record["label"] == tiny_predictor.labels[int(row.argmax())]
        assert record["probability"] == pytest.approx(float(row.max()), abs=1e-5)
        assert [a["word"] for a in record["attributions"]] == words(text)
        assert sum(abs(a["score"]) for a in record["attributions"]) == pytest.approx(1, abs=1e-4)
    result = comprehensiveness(tiny_predictor, texts, records, k=2, random_draws=3)
    assert result["explained"] == 2 and len(result["per_label"]) == 2
    assert {"comprehensiveness", "random", "ratio"} <= set(result)


def test_remove_words():
    text = "Net loss widened to EUR 5.2 mn ."
    assert remove_words(text, [(4, 8), (24, 27)]) == "Net widened to EUR mn ."
    assert remove_words(text, []) == text


def test_html_escapes_the_text_and_titles_the_scores():
    text = '<script>alert("x")</script> & profit'
    attributions = merge_to_words(text, [(1, 7), (30, 36)], [0.5, -1.5])
    page = html_page([text], [{"label": "<b>pos</b>", "probability": 0.9, "truncated": False,
                               "attributions": attributions}])  # fmt: skip
    assert "<script" not in page and "&lt;" in page and "&lt;b&gt;pos" in page
    assert 'title="-0.7500"' in page and 'title="+0.2500"' in page
    assert "http" not in page and "<link" not in page and "src=" not in page  # self-contained
    assert "rgba(220,38,38" in page and "rgba(22,163,74" in page
    # Every character of the text is on the page, in order.
    assert highlight("a < b", merge_to_words("a < b", [(0, 1)], [1.0])).count("&lt;") == 1


def phrasebank_sentences(path, skip: int, per_label: int) -> list[str]:
    """Real AllAgree sentences past the first `skip` of each class (not in the training slice)."""
    by_label: dict[str, list[str]] = {}
    for line in path.read_text(encoding="iso-8859-1").splitlines():
        text, label = line.rsplit("@", 1)
        by_label.setdefault(label, []).append(text)
    return [t for label in sorted(by_label) for t in by_label[label][skip : skip + per_label]]


@pytest.mark.slow  # trains the real MiniLM on 300 sentences (~30 s), explains 21
def test_top_words_matter_more_than_random_words(tmp_path, phrasebank_slice, phrasebank_allagree):
    """ERASER comprehensiveness on real PhraseBank sentences: deleting the 3 words with the
    highest attribution lowers the predicted class's probability more than deleting 3 random
    words (mean of 5 seeded draws)."""
    from finlora.cli import main

    out = tmp_path / "minilm"
    code = main(["-q", "train", "--data", str(phrasebank_slice), "--epochs", "2",
                 "--batch_size", "32", "--learning_rate", "0.002", "--max_length", "64",
                 "--output_dir", str(out)])  # fmt: skip
    assert code == 0
    predictor = Predictor.load(out, backend="torch")
    texts = phrasebank_sentences(phrasebank_allagree, skip=100, per_label=7)
    records = Explainer(predictor, n_steps=16).explain(texts)
    result = comprehensiveness(predictor, texts, records, k=3, random_draws=5, seed=0)
    assert result["explained"] == len(texts) == 21
    # Measured 0.082 against 0.030 (2.8x) on this weak 2-epoch model (test accuracy 0.57); the
    # issue's 2x target is checked on the real model by bench/explain.py (docs/explain.md).
    assert result["comprehensiveness"] > 1.5 * result["random"] > 0, result


def test_multilabel_records_explain_each_predicted_label(multilabel_run):
    predictor = Predictor.load(multilabel_run, backend="torch")
    texts = [
        "We may terminate your account at any time without notice .",
        "You agree to the jurisdiction of the courts of California .",
        "Hello .",
    ]
    predictor.thresholds = [0.0] * len(predictor.labels)  # every label predicted: all explained
    records = Explainer(predictor, n_steps=8).explain(texts[:2])
    for text, record, predicted in zip(texts, records, predictor.predict(texts[:2])):
        assert record["labels"] == predicted["labels"] == predictor.labels
        assert [e["label"] for e in record["explanations"]] == record["labels"]
        for part in record["explanations"]:
            score = predicted["scores"][part["label"]]
            assert part["probability"] == pytest.approx(score, abs=1e-5)
            assert [a["word"] for a in part["attributions"]] == words(text)
    predictor.thresholds = [1.0] * len(predictor.labels)  # nothing predicted: nothing explained
    (none,) = Explainer(predictor, n_steps=8).explain(texts[2:])
    assert none["labels"] == [] and none["explanations"] == []
    assert "no label predicted" in html_page(texts[2:], [none])
    result = comprehensiveness(predictor, texts[:2], records, k=1, random_draws=2)
    assert result["explained"] == 2 * len(predictor.labels)
