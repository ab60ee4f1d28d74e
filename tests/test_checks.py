"""Behavioural checks (`finlora check`, finlora.checks): the shipped suite is well-formed, and
its report agrees with the model's own predictions."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import numpy as np
import pytest

from finlora.checks import (
    CHECKS_FILE,
    KINDS,
    load_suite,
    parse_suite,
    run_checks,
    shipped_suites,
    suite_for_labels,
    suite_scores,
)
from finlora.cli import main
from finlora.errors import FinloraError

LABELS = ["negative", "neutral", "positive"]


@pytest.fixture(scope="module")
def suite():
    return load_suite("financial_sentiment")


def save_classifier(base_dir, out, labels, texts=None):
    """The conftest's tiny random BERT with a fresh head for `labels`, saved where
    `Predictor.load` reads it. Untrained: scoring a suite needs predictions, not good ones. Its
    pooled outputs barely differ between texts, so with `texts` the head is scaled up and
    centred on theirs, and different texts get different labels."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        base_dir,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    if texts:
        with torch.no_grad():
            pooled = model.bert(**tokenizer(texts, padding=True, return_tensors="pt"))
            center = pooled.pooler_output.mean(0)
            model.classifier.weight.normal_(0.0, 100.0)
            model.classifier.bias.copy_(-(model.classifier.weight @ center))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def sentiment_model(tmp_path_factory, tiny_model_dir, suite):
    texts = list(dict.fromkeys(t for c in suite.cases for t in c.texts))
    out = tmp_path_factory.mktemp("checks") / "model"
    return save_classifier(tiny_model_dir, out, LABELS, texts)


@pytest.fixture(scope="module")
def predictor(sentiment_model):
    from finlora.predictor import Predictor

    return Predictor.load(sentiment_model, backend="torch")


class Constant:
    """Always `neutral`, p = 0.6."""

    labels = LABELS
    multi_label = False

    def probabilities(self, texts):
        return np.tile([0.2, 0.6, 0.2], (len(texts), 1))


class WidenedIsGood(Constant):
    """`positive` (p = 0.99) for any text with "widened" in it, like the default model."""

    def probabilities(self, texts):
        good = np.array([0.005, 0.005, 0.99])
        return np.array([good if "widened" in t else [0.2, 0.6, 0.2] for t in texts])


def changed_region(a: str, b: str) -> tuple[int, list[str], list[str]]:
    """Where `a` and `b` part (in words) once their common start and end are set aside, and
    the words of each in between: what an edit of one detail changed."""
    x, y = a.split(), b.split()
    start = 0
    while start < min(len(x), len(y)) and x[start] == y[start]:
        start += 1
    end = 0
    while end < min(len(x), len(y)) - start and x[-1 - end] == y[-1 - end]:
        end += 1
    return start, x[start : len(x) - end], y[start : len(y) - end]


# ---------------------------------------------------------------- the shipped suite


def test_the_suite_ships_with_the_package():
    assert "financial_sentiment" in shipped_suites()
    assert suite_for_labels(["positive", "negative", "neutral"]) == "financial_sentiment"
    assert suite_for_labels(["a", "b"]) is None


def test_shipped_suite_parses_and_every_case_is_well_formed(suite):
    assert suite.labels == LABELS
    assert 150 <= len(suite.cases) <= 300
    assert len({c.id for c in suite.cases}) == len(suite.cases)
    for case in suite.cases:
        assert case.kind in KINDS and case.capability
        assert case.label in LABELS, case.id  # inv cases too: the label all variants share
        for text in case.texts:
            assert text == text.strip() and "{" not in text and "}" not in text, case.id
            assert "  " not in text, case.id
        assert len(case.texts) == {"mft": 1, "dir": 2}.get(case.kind, len(case.texts))
        assert (case.direction is not None) == (case.kind == "dir")
    mft_texts = [c.texts[0] for c in suite.cases if c.kind == "mft"]
    assert len(set(mft_texts)) == len(mft_texts)  # no sentence counted twice
    per_capability = Counter(c.capability for c in suite.cases)
    assert min(per_capability.values()) >= 3, per_capability
    for capability in (
        "loss direction",
        "profit direction",
        "profit vs loss",
        "negation",
        "expectations",
        "numbers invariance",
        "currency invariance",
        "company name invariance",
        "period invariance",
    ):
        assert capability in per_capability
    kinds = Counter(c.kind for c in suite.cases)
    assert kinds["mft"] >= 150 and kinds["inv"] >= 30 and kinds["dir"] >= 10
    assert Counter(c.label for c in suite.cases if c.kind == "mft")["neutral"] >= 40


def test_the_suite_holds_the_known_loss_direction_cases(suite):
    expected = {c.texts[0]: c.label for c in suite.cases if c.kind == "mft"}
    found = defaultdict(set)
    for text, label in expected.items():
        for phrase in ("net loss widened", "net loss narrowed", "operating loss increased",
                       "operating profit rose"):  # fmt: skip
            if phrase in text:
                found[phrase].add(label)
    assert found == {
        "net loss widened": {"negative"},
        "net loss narrowed": {"positive"},
        "operating loss increased": {"negative"},
        "operating profit rose": {"positive"},
    }


def test_minimal_pairs_differ_in_one_place_and_flip_the_label(suite):
    pairs = defaultdict(list)
    for case in suite.cases:
        if case.pair:
            pairs[case.pair].append(case)
    assert len(pairs) >= 70
    for pair, cases in pairs.items():
        assert len(cases) == 2, pair
        first, second = cases
        assert first.label != second.label, pair
        assert first.capability == second.capability
        _, one, other = changed_region(first.texts[0], second.texts[0])
        assert 1 <= max(len(one), len(other)) <= 3, pair  # one word or a short phrase


def test_invariance_cases_change_one_detail_only(suite):
    invariance = [c for c in suite.cases if c.kind == "inv"]
    assert invariance
    for case in invariance:
        assert len(case.texts) >= 2 and len(set(case.texts)) == len(case.texts), case.id
        starts, ends = [], []
        for variant in case.texts[1:]:
            start, original, changed = changed_region(case.texts[0], variant)
            assert 1 <= max(len(original), len(changed)) <= 6, (case.id, variant)
            starts.append(start)
            ends.append(start + len(original))
        assert max(starts) <= min(ends), case.id  # every variant changes the same detail
    for case in (c for c in suite.cases if c.kind == "dir"):
        _, removed, added = changed_region(*case.texts)
        assert not removed and 1 <= len(added) <= 15, case.id  # an added word or clause


def test_expansion_is_deterministic(suite):
    again = load_suite("financial_sentiment")
    assert again.cases == suite.cases and again.sha256() == suite.sha256()


# ---------------------------------------------------------------- scoring


def test_a_constant_model_passes_exactly_the_neutral_and_unchanged_cases(suite):
    report = run_checks(Constant(), suite)
    neutral = sum(c.kind == "mft" and c.label == "neutral" for c in suite.cases)
    unchanged = sum(c.kind in ("inv", "dir") for c in suite.cases)  # nothing moves
    assert report["passed"] == neutral + unchanged
    assert report["cases"] == len(suite.cases)
    assert report["pass_rate"] == pytest.approx(report["passed"] / report["cases"])
    assert report["by_kind"]["inv"]["pass_rate"] == report["by_kind"]["dir"]["pass_rate"] == 1.0


def test_the_report_shows_a_model_that_reads_widened_as_good_news(suite, capsys):
    from finlora.checks import format_report

    report = run_checks(WidenedIsGood(), suite)
    failing = {r["id"]: r for r in report["results"] if not r["passed"]}
    widened = [c for c in suite.cases if c.kind == "mft" and "widened" in c.texts[0]]
    assert widened and all(failing[c.id]["predicted"] == ["positive"] for c in widened)
    widened_pairs = {c.pair for c in widened if c.pair}
    pairs = report["minimal_pairs"]
    assert pairs["all_right"] == 0 and pairs["pairs"] > len(widened_pairs)  # neutral elsewhere
    table = format_report(report)
    line = next(line for line in table.splitlines() if widened[0].texts[0] in line)
    assert "expected negative, predicted positive (p=0.99)" in line
    # 'net loss widened sharply' is more sure of 'negative' only if p(negative) does not fall
    sharply = next(r for r in report["results"] if r["id"] == "dir-loss-sharply-01")
    assert sharply["passed"]  # both texts say 'widened': no change


def test_run_checks_agrees_with_the_predictions_of_a_tiny_model(predictor, suite):
    report = run_checks(predictor, suite)
    records = {}
    texts = list(dict.fromkeys(t for c in suite.cases for t in c.texts))
    for text, record in zip(texts, predictor.predict(texts)):
        records[text] = record
    assert len({r["label"] for r in records.values()}) > 1  # not a constant model
    by_capability = defaultdict(list)
    for case, result in zip(suite.cases, report["results"]):
        assert result["id"] == case.id and result["texts"] == list(case.texts)
        predicted = [records[t]["label"] for t in case.texts]
        assert result["predicted"] == predicted
        for text, p in zip(case.texts, result["probability"]):
            assert p == pytest.approx(max(records[text]["probabilities"].values()), abs=1e-5)
        if case.kind == "mft":
            passed = predicted[0] == case.label
        elif case.kind == "inv":
            passed = len(set(predicted)) == 1
        else:
            base, edited = (records[t]["probabilities"][case.label] for t in case.texts)
            change = edited - base
            passed = change >= -0.1 if case.direction == "up" else change <= 0.1
        assert result["passed"] == passed, case.id
        by_capability[case.capability].append(passed)
    for row in report["capabilities"]:
        outcomes = by_capability[row["capability"]]
        assert (row["cases"], row["passed"]) == (len(outcomes), sum(outcomes))
        assert row["pass_rate"] == pytest.approx(sum(outcomes) / len(outcomes))
    overall = [p for outcomes in by_capability.values() for p in outcomes]
    assert report["passed"] == sum(overall) and report["cases"] == len(overall)
    assert report["failures"] == len(overall) - sum(overall)
    pairs = defaultdict(list)
    for result in report["results"]:
        if "pair" in result:
            pairs[result["pair"]].append(result["passed"])
    assert report["minimal_pairs"]["pairs"] == len(pairs)
    assert report["minimal_pairs"]["all_right"] == sum(all(p) for p in pairs.values())


def test_direction_cases_allow_the_tolerance_and_no_more():
    suite = parse_suite(
        {
            "labels": LABELS,
            "tolerance": 0.1,
            "cases": [
                {"kind": "dir", "capability": "c", "label": "positive", "direction": "down",
                 "texts": ["base", "up 0.05"]},
                {"kind": "dir", "capability": "c", "label": "positive", "direction": "down",
                 "texts": ["base", "up 0.2"]},
                {"kind": "dir", "capability": "c", "label": "positive", "direction": "up",
                 "texts": ["base", "down 0.2"]},
            ],
        },
        "inline",
    )  # fmt: skip

    class Shifted(Constant):
        def probabilities(self, texts):
            shift = {"base": 0.0, "up 0.05": 0.05, "up 0.2": 0.2, "down 0.2": -0.2}
            return np.array([[0.1, 0.5 - shift[t], 0.4 + shift[t]] for t in texts])

    report = run_checks(Shifted(), suite)
    assert [r["passed"] for r in report["results"]] == [True, False, False]
    assert report["results"][1]["label_probability"] == pytest.approx([0.4, 0.6])


# ---------------------------------------------------------------- user suites


def test_a_user_suite_can_be_yaml_or_jsonl(tmp_path):
    yaml_file = tmp_path / "mine.yaml"
    yaml_file.write_text(
        "labels: [negative, neutral, positive]\n"
        "lexicon: {company: [Acme, Globex]}\n"
        "templates:\n"
        "  - {kind: inv, capability: names, label: positive, fills: 1,\n"
        "     template: '{company} beat forecasts .', vary: {company: 2}}\n"
        "cases:\n"
        "  - {capability: loss, text: Net loss widened ., label: negative}\n"
    )
    mine = load_suite(yaml_file)
    assert mine.name == "mine" and len(mine.cases) == 2
    assert set(mine.cases[0].texts) == {"Acme beat forecasts .", "Globex beat forecasts ."}
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text(
        json.dumps({"capability": "loss", "text": "Net loss widened .", "label": "negative"})
        + "\n\n"
        + json.dumps({"kind": "inv", "capability": "names", "texts": ["A rose .", "B rose ."]})
        + "\n"
    )
    lines = load_suite(jsonl)
    assert [c.kind for c in lines.cases] == ["mft", "inv"] and lines.labels is None
    assert run_checks(Constant(), lines)["passed"] == 1  # the inv case


@pytest.mark.parametrize(
    "data, message",
    [
        ({"cases": [{"capability": "x", "text": "t", "label": "up", "kind": "mtf"}]}, "kind"),
        ({"cases": [{"capability": "x", "text": "t"}]}, "one `text` and its `label`"),
        ({"cases": [{"kind": "inv", "capability": "x", "texts": ["t"]}]}, "two or more"),
        ({"cases": [{"text": "t", "label": "a"}]}, "capability"),
        ({"labels": ["a", "b"], "cases": [{"capability": "x", "text": "t", "label": "c"}]},
         "not in its `labels`"),
        ({"cases": [{"id": "d", "capability": "x", "text": "t", "label": "a"},
                    {"id": "d", "capability": "x", "text": "u", "label": "a"}]}, "duplicate"),
        ({"cases": [{"capability": "x", "text": "t", "label": "a", "weight": 2}]}, "unknown"),
        ({"templates": [{"template": "{who} rose .", "label": "a", "capability": "x"}]},
         "no lexicon"),
        ({"cases": []}, "no cases"),
    ],
)  # fmt: skip
def test_a_malformed_suite_is_a_one_line_error(data, message):
    with pytest.raises(FinloraError, match=message) as error:
        parse_suite(data, "bad.yaml")
    assert "\n" not in str(error.value)


def test_an_unknown_suite_name_is_a_one_line_error():
    with pytest.raises(FinloraError, match="no shipped suite of that name"):
        load_suite("legal_sentiment")


# ---------------------------------------------------------------- the command


def test_check_prints_the_table_and_writes_json(sentiment_model, tmp_path, capsys):
    output = tmp_path / "report.json"
    assert main(["-q", "check", "--model", str(sentiment_model), "--output", str(output)]) == 0
    table = capsys.readouterr().out
    report = json.loads(output.read_text())
    assert report["suite"] == "financial_sentiment" and report["backend"] == "torch fp32"
    lines = table.splitlines()
    overall = next(line for line in lines if line.startswith("overall"))
    assert overall.split()[-3:] == [
        str(report["cases"]),
        str(report["passed"]),
        f"{100 * report['pass_rate']:.1f}%",
    ]
    for row in report["capabilities"]:
        assert any(line.startswith(row["capability"]) for line in lines)
    assert f"failing cases ({report['failures']}):" in table
    failing = [r for r in report["results"] if not r["passed"]]
    assert all(f"- {r['id']} [" in table for r in failing)


def test_check_takes_a_user_suite_and_a_minimum_pass_rate(sentiment_model, tmp_path, capsys):
    jsonl = tmp_path / "two.jsonl"
    jsonl.write_text(
        json.dumps({"capability": "a", "text": "Net sales rose .", "label": "positive"})
        + "\n"
        + json.dumps({"capability": "b", "text": "Net sales fell .", "label": "negative"})
        + "\n"
    )
    command = ["-q", "check", "--model", str(sentiment_model), "--suite", str(jsonl)]
    assert main([*command, "--max_failures", "0"]) == 0
    out = capsys.readouterr().out
    assert "suite two:" in out and "\n- " not in out
    rate = float(next(line for line in out.splitlines() if line.startswith("overall"))
                 .split()[-1].rstrip("%"))  # fmt: skip
    assert main([*command, "--min_pass_rate", "1.0"]) == (0 if rate == 100.0 else 1)


def test_a_suite_for_other_labels_is_exit_2_in_one_line(tiny_model_dir, tmp_path, capsys):
    other = save_classifier(tiny_model_dir, tmp_path / "other", ["bearish", "flat", "bullish"])
    assert main(["-q", "check", "--model", str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "suite financial_sentiment has labels negative, neutral, positive" in err
    assert "bearish, bullish, flat" in err


def test_compare_scores_a_run_once_and_reuses_it(sentiment_model, tmp_path, monkeypatch, suite):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(sentiment_model, run)
    from types import SimpleNamespace

    def results_of(labels, multi_label=False):  # the two fields of FinalResults it reads
        return SimpleNamespace(labels=labels, multi_label=multi_label)

    results = results_of(LABELS)
    first = suite_scores(run, results)
    saved = json.loads((run / CHECKS_FILE).read_text())
    assert first == {"suite": "financial_sentiment", "suite_pass_rate": saved["pass_rate"]}
    import finlora.checks

    monkeypatch.setattr(finlora.checks, "run_checks", lambda *a: pytest.fail("not reused"))
    assert suite_scores(run, results) == first
    assert suite_scores(run, results_of(["a", "b"])) == {}
    assert suite_scores(run, results_of(LABELS, multi_label=True)) == {}
