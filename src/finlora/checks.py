"""Behavioural checks: does a trained classifier get short sentences it never saw right, and
does its answer stay put when nothing that matters changes? (CheckList, Ribeiro et al. 2020.)

A suite is a list of cases, each with a `capability` (what it probes) and one of three kinds:

- ``mft``, minimum functionality test: one text, one expected label. Minimal pairs are two mft
  cases sharing a `pair` id whose texts differ in one word or phrase that flips the label.
- ``inv``, invariance: two or more texts that differ only in a detail that must not matter (a
  number, the currency, the company's name, the period). It passes when every text gets the
  same label.
- ``dir``, directional: a base text and an edited one; the probability of `label` must not
  fall (`direction: up`) or rise (`direction: down`) by more than the suite's tolerance.

Suites are YAML files (templates expanded from a lexicon, plus hand-written cases) or JSONL
files (one case per line). `financial_sentiment` ships in the package (finlora/suites/).
`run_checks(predictor, suite)` scores any object with `labels` and `probabilities(texts)`,
such as a `finlora.predictor.Predictor`; `check(settings)` is `finlora check` (its settings:
`finlora.cli.CheckSettings`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import string
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from finlora.errors import FinloraError

if TYPE_CHECKING:
    from finlora.results import FinalResults

log = logging.getLogger(__name__)

KINDS = ("mft", "inv", "dir")
DIRECTIONS = ("up", "down")
DEFAULT_TOLERANCE = 0.1
SUITE_SUFFIXES = (".yaml", ".yml", ".jsonl")
# Where `finlora compare` keeps a run's suite result, next to its final_results.json.
CHECKS_FILE = "checks.json"

SUITE_KEYS = {"name", "description", "labels", "tolerance", "lexicon", "templates", "cases"}
CASE_KEYS = {"id", "kind", "capability", "text", "texts", "label", "direction", "pair"}
TEMPLATE_KEYS = {
    "id", "kind", "capability", "template", "label", "direction", "vary", "fills", "slots",
}  # fmt: skip


@dataclass(frozen=True)
class Case:
    """One test case; `texts` has one text for mft, two or more for inv, base + edit for dir."""

    id: str
    kind: str
    capability: str
    texts: tuple[str, ...]
    label: str | None = None
    direction: str | None = None
    pair: str | None = None


@dataclass
class Suite:
    name: str
    cases: list[Case]
    labels: list[str] | None = None  # declared labels: the model's must be exactly these
    description: str = ""
    tolerance: float = DEFAULT_TOLERANCE
    source: str = ""

    @property
    def used_labels(self) -> list[str]:
        return sorted({c.label for c in self.cases if c.label is not None})

    @property
    def capabilities(self) -> list[str]:
        return list(dict.fromkeys(c.capability for c in self.cases))

    def sha256(self) -> str:
        """Fingerprint of the expanded cases and tolerance (what a result depends on)."""
        payload = json.dumps(
            [self.tolerance, [asdict(c) for c in self.cases]], sort_keys=True
        ).encode()
        return hashlib.sha256(payload).hexdigest()


# ---------------------------------------------------------------- loading suites


def shipped_suites() -> list[str]:
    """Names of the suites in the package (finlora/suites/*.yaml)."""
    folder = resources.files("finlora") / "suites"
    return sorted(
        entry.name.rsplit(".", 1)[0] for entry in folder.iterdir() if entry.name.endswith(".yaml")
    )


def load_suite(name_or_path: str | Path) -> Suite:
    """A shipped suite by name, or a user's .yaml/.yml/.jsonl file."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix not in SUITE_SUFFIXES:
            raise FinloraError(
                f"suite file {path}: expected {', '.join(SUITE_SUFFIXES)}, got {path.suffix!r}"
            )
        try:
            content = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise FinloraError(f"suite file {path} is not UTF-8 text") from None
        if path.suffix == ".jsonl":
            return parse_jsonl_suite(content, str(path), default_name=path.stem)
        return parse_suite(_yaml(content, str(path)), str(path), default_name=path.stem)
    if text in shipped_suites():
        resource = resources.files("finlora") / "suites" / f"{text}.yaml"
        return parse_suite(_yaml(resource.read_text(encoding="utf-8"), text), text)
    raise FinloraError(
        f"--suite {text}: no such file and no shipped suite of that name "
        f"(shipped: {', '.join(shipped_suites())})"
    )


def _yaml(content: str, source: str) -> Any:
    try:
        return yaml.safe_load(content)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        raise FinloraError(f"suite {source}:{line} is not valid YAML") from exc


def parse_suite(data: Any, source: str, default_name: str | None = None) -> Suite:
    """A suite from its YAML mapping: templates expanded, every case checked."""
    if not isinstance(data, dict):
        raise FinloraError(f"suite {source}: expected a mapping with `cases` and/or `templates`")
    unknown = sorted(set(data) - SUITE_KEYS)
    if unknown:
        raise FinloraError(
            f"suite {source}: unknown key(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(SUITE_KEYS))})"
        )
    name = str(data.get("name") or default_name or source)
    labels = data.get("labels")
    if labels is not None and (
        not isinstance(labels, list) or len(labels) < 2 or len(set(map(str, labels))) < 2
    ):
        raise FinloraError(f"suite {source}: `labels` must be a list of two or more labels")
    tolerance = data.get("tolerance", DEFAULT_TOLERANCE)
    if not isinstance(tolerance, int | float) or not 0 <= tolerance < 1:
        raise FinloraError(f"suite {source}: `tolerance` must be a number in [0, 1)")
    lexicon = data.get("lexicon") or {}
    if not isinstance(lexicon, dict) or not all(
        isinstance(v, list) and v for v in lexicon.values()
    ):
        raise FinloraError(f"suite {source}: `lexicon` must map slot names to non-empty lists")
    cases: list[Case] = []
    for index, template in enumerate(data.get("templates") or []):
        cases += expand_template(template, lexicon, f"{name}/{index}", source)
    for index, item in enumerate(data.get("cases") or []):
        cases.append(parse_case(item, f"case {index + 1}", source, f"case-{index + 1:03d}"))
    suite = Suite(
        name=name,
        cases=cases,
        labels=[str(label) for label in labels] if labels is not None else None,
        description=str(data.get("description") or ""),
        tolerance=float(tolerance),
        source=source,
    )
    validate_suite(suite)
    return suite


def parse_jsonl_suite(content: str, source: str, default_name: str) -> Suite:
    """One case per line (`{"capability": ..., "text": ..., "label": ...}` and so on)."""
    cases = []
    for number, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FinloraError(f"suite {source} line {number}: not JSON ({exc.msg})") from None
        cases.append(parse_case(item, f"line {number}", source, f"line-{number:03d}"))
    suite = Suite(name=default_name, cases=cases, source=source)
    validate_suite(suite)
    return suite


def parse_case(item: Any, where: str, source: str, default_id: str) -> Case:
    if not isinstance(item, dict):
        raise FinloraError(f"suite {source} {where}: a case is a mapping")
    unknown = sorted(set(item) - CASE_KEYS)
    if unknown:
        raise FinloraError(
            f"suite {source} {where}: unknown key(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(CASE_KEYS))})"
        )
    if "text" in item and "texts" in item:
        raise FinloraError(f"suite {source} {where}: give `text` or `texts`, not both")
    texts = [item["text"]] if "text" in item else item.get("texts")
    if not isinstance(texts, list) or not all(isinstance(t, str) and t.strip() for t in texts):
        raise FinloraError(f"suite {source} {where}: `text` (or `texts`) must be non-empty text")
    return make_case(
        id=str(item.get("id") or default_id),
        kind=str(item.get("kind", "mft")),
        capability=item.get("capability"),
        texts=texts,
        label=item.get("label"),
        direction=item.get("direction"),
        pair=item.get("pair"),
        where=f"suite {source} {where}",
    )


def make_case(
    id: str,
    kind: str,
    capability: Any,
    texts: list[str],
    label: Any,
    direction: Any,
    pair: Any,
    where: str,
) -> Case:
    """A case whose fields fit its kind, or a one-line error naming it."""
    where = f"{where} ({id})"
    if kind not in KINDS:
        raise FinloraError(f"{where}: kind {kind!r} is not one of {', '.join(KINDS)}")
    if not isinstance(capability, str) or not capability.strip():
        raise FinloraError(f"{where}: every case needs a `capability` (what it probes)")
    if label is not None and not isinstance(label, str | int):
        raise FinloraError(f"{where}: `label` must be one label")
    if kind == "mft" and (len(texts) != 1 or label is None):
        raise FinloraError(f"{where}: an mft case has one `text` and its `label`")
    if kind == "inv" and (len(texts) < 2 or len(set(texts)) < len(texts)):
        raise FinloraError(f"{where}: an inv case has two or more different `texts`")
    if kind == "dir":
        if len(texts) != 2 or texts[0] == texts[1]:
            raise FinloraError(f"{where}: a dir case has two different `texts`: base, edited")
        if label is None or direction not in DIRECTIONS:
            raise FinloraError(
                f"{where}: a dir case needs the `label` whose probability it watches and a "
                f"`direction` ({' or '.join(DIRECTIONS)})"
            )
    elif direction is not None:
        raise FinloraError(f"{where}: `direction` belongs to dir cases only")
    if pair is not None and kind != "mft":
        raise FinloraError(f"{where}: `pair` belongs to mft cases only")
    return Case(
        id=id,
        kind=kind,
        capability=capability.strip(),
        texts=tuple(texts),
        label=None if label is None else str(label),
        direction=direction,
        pair=None if pair is None else str(pair),
    )


def template_slots(template: str) -> list[str]:
    return list(dict.fromkeys(name for _, name, _, _ in string.Formatter().parse(template) if name))


def expand_template(template: Any, lexicon: dict, seed: str, source: str) -> list[Case]:
    """The cases of one template: `fills` draws of its slots, each rendered once per value of
    its `vary` slot (minimal pairs for mft, one group for inv, base + edit for dir)."""
    if not isinstance(template, dict) or not isinstance(template.get("template"), str):
        raise FinloraError(f"suite {source}: each template needs a `template` string")
    tid = str(template.get("id") or seed)
    where = f"suite {source} template {tid}"
    unknown = sorted(set(template) - TEMPLATE_KEYS)
    if unknown:
        raise FinloraError(f"{where}: unknown key(s) {', '.join(unknown)}")
    kind = str(template.get("kind", "mft"))
    text = template["template"]
    slots = template_slots(text)
    words = {**lexicon, **(template.get("slots") or {})}
    vary = template.get("vary") or {}
    if not isinstance(vary, dict) or len(vary) > 1:
        raise FinloraError(f"{where}: `vary` names one slot")
    varied = next(iter(vary), None)
    if varied is not None and varied not in slots:
        raise FinloraError(f"{where}: `vary` slot {{{varied}}} is not in the template")
    if kind in ("inv", "dir") and varied is None:
        raise FinloraError(f"{where}: an {kind} template needs a `vary` slot")
    fixed = [s for s in slots if s != varied]
    missing = [s for s in fixed + ([varied] if isinstance(vary.get(varied), int) else [])
               if s not in words]  # fmt: skip
    if missing:
        raise FinloraError(f"{where}: no lexicon for slot(s) {', '.join(missing)}")
    fills = template.get("fills", 1)
    if not isinstance(fills, int) or fills < 1:
        raise FinloraError(f"{where}: `fills` must be a whole number of at least 1")
    rng = random.Random(f"{seed}:{tid}")  # str seeds hash the same in every Python 3 run
    combinations = _distinct_fills(rng, fixed, words, fills, where)

    def render(values: dict, case_id: str) -> str:
        try:
            return text.format(**values)
        except (KeyError, IndexError, ValueError) as exc:
            raise FinloraError(f"{where} ({case_id}): cannot fill the template: {exc}") from None

    common = dict(capability=template.get("capability"), where=where)
    cases = []
    for number, values in enumerate(combinations, 1):
        case_id = f"{tid}-{number:02d}"
        choice = vary.get(varied)
        if kind == "mft" and isinstance(choice, dict):  # minimal pairs: value -> label
            if len(choice) < 2:
                raise FinloraError(f"{where}: a minimal pair varies two or more values")
            for letter, (value, label) in zip(string.ascii_lowercase, choice.items()):
                cases.append(
                    make_case(
                        id=f"{case_id}{letter}",
                        kind="mft",
                        texts=[render({**values, varied: value}, case_id)],
                        label=label,
                        direction=None,
                        pair=case_id,
                        **common,
                    )
                )
            continue
        if kind == "mft":
            if varied is not None:
                raise FinloraError(f"{where}: an mft `vary` maps each value to its label")
            texts = [render(values, case_id)]
        else:
            options = rng.sample(list(words[varied]), choice) if isinstance(choice, int) else choice
            if not isinstance(options, list) or len(options) < 2:
                raise FinloraError(f"{where}: `vary` gives two or more values (or a count)")
            texts = [render({**values, varied: value}, case_id) for value in options]
        cases.append(
            make_case(
                id=case_id,
                kind=kind,
                texts=texts,
                label=template.get("label"),
                direction=template.get("direction"),
                pair=None,
                **common,
            )
        )
    return cases


def _distinct_fills(rng: random.Random, slots: list[str], words: dict, fills: int, where: str):
    """`fills` different fillings of `slots`: each slot walks through its shuffled lexicon,
    so a template uses as many different companies, periods, ... as it has fills."""
    orders = {s: rng.sample([str(v) for v in words[s]], len(words[s])) for s in slots}
    seen: list[dict] = []
    for number in range(100 * fills):
        if len(seen) == fills:
            break
        if number < fills:
            values = {s: order[number % len(order)] for s, order in orders.items()}
        else:  # the walk repeated a filling: draw the rest at random
            values = {s: rng.choice(order) for s, order in orders.items()}
        if values not in seen:
            seen.append(values)
    if len(seen) < fills:
        raise FinloraError(f"{where}: the lexicon has fewer than {fills} distinct fillings")
    return seen


def validate_suite(suite: Suite) -> None:
    where = f"suite {suite.source}"
    if not suite.cases:
        raise FinloraError(f"{where} has no cases")
    ids = [c.id for c in suite.cases]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise FinloraError(f"{where}: duplicate case id(s) {', '.join(duplicates[:5])}")
    if suite.labels is not None:
        stray = [lab for lab in suite.used_labels if lab not in suite.labels]
        if stray:
            raise FinloraError(
                f"{where}: label(s) {', '.join(stray)} are not in its `labels` "
                f"({', '.join(suite.labels)})"
            )
    expected: dict[str, str] = {}
    for case in suite.cases:
        if case.kind == "mft":
            text = case.texts[0]
            if expected.setdefault(text, case.label) != case.label:
                raise FinloraError(f"{where}: {text!r} is expected both {expected[text]} and "
                                   f"{case.label}")  # fmt: skip


# ---------------------------------------------------------------- running a suite


def check_labels(suite: Suite, model_labels: list[str], model: str = "the model") -> None:
    """The suite speaks the model's labels, or a one-line error saying how they differ."""
    declared = suite.labels if suite.labels is not None else suite.used_labels
    model_set = set(model_labels)
    matches = set(declared) == model_set if suite.labels is not None else set(declared) <= model_set
    if not matches:
        raise FinloraError(
            f"suite {suite.name} has labels {', '.join(sorted(declared))} but {model} predicts "
            f"{', '.join(sorted(model_labels))}; run a suite written for the model's labels "
            "(--suite FILE.yaml or FILE.jsonl)"
        )


def run_checks(predictor, suite: Suite) -> dict:
    """Score `predictor` (`labels`, `probabilities(texts)`) on every case of `suite`.

    Returns the report: overall and per-capability pass rates, and one result per case with
    the predicted label and its probability for every text of the case."""
    if getattr(predictor, "multi_label", False):
        raise FinloraError(
            f"suite {suite.name} is for single-label models; this model is multi-label"
        )
    labels = list(predictor.labels)
    check_labels(suite, labels)
    texts = list(dict.fromkeys(t for case in suite.cases for t in case.texts))
    probabilities = predictor.probabilities(texts)
    rows = {text: [float(p) for p in row] for text, row in zip(texts, probabilities)}
    results = [score_case(case, rows, labels, suite.tolerance) for case in suite.cases]
    return build_report(suite, labels, results)


def score_case(case: Case, rows: dict[str, list[float]], labels: list[str], tolerance: float):
    predicted = [labels[max(range(len(labels)), key=rows[t].__getitem__)] for t in case.texts]
    probability = [round(max(rows[t]), 6) for t in case.texts]
    result: dict[str, Any] = {
        "id": case.id,
        "kind": case.kind,
        "capability": case.capability,
        "texts": list(case.texts),
        "expected": case.label,
        "predicted": predicted,
        "probability": probability,
    }
    if case.kind == "mft":
        passed = predicted[0] == case.label
    elif case.kind == "inv":
        passed = len(set(predicted)) == 1
    else:
        base, edited = (rows[t][labels.index(case.label)] for t in case.texts)
        change = edited - base
        passed = change >= -tolerance if case.direction == "up" else change <= tolerance
        result.update(direction=case.direction, label_probability=[round(base, 6),
                                                                   round(edited, 6)])  # fmt: skip
    if case.pair is not None:
        result["pair"] = case.pair
    result["passed"] = bool(passed)
    return result


def _rate(results: list[dict]) -> dict:
    passed = sum(r["passed"] for r in results)
    return {"cases": len(results), "passed": passed, "pass_rate": passed / len(results)}


def build_report(suite: Suite, labels: list[str], results: list[dict]) -> dict:
    capabilities = []
    for name in suite.capabilities:
        mine = [r for r in results if r["capability"] == name]
        kinds = sorted({r["kind"] for r in mine}, key=KINDS.index)
        capabilities.append({"capability": name, "kind": "+".join(kinds), **_rate(mine)})
    return {
        "suite": suite.name,
        "suite_source": suite.source,
        "suite_sha256": suite.sha256(),
        "labels": labels,
        "tolerance": suite.tolerance,
        **_rate(results),
        "by_kind": {k: _rate(m) for k in KINDS if (m := [r for r in results if r["kind"] == k])},
        "capabilities": capabilities,
        "failures": sum(not r["passed"] for r in results),
        "minimal_pairs": _pairs(results),
        "results": results,
    }


def _pairs(results: list[dict]) -> dict:
    """Minimal pairs with every side right: a model reading one word (`widened` = good) gets
    one side of a pair right by luck, never both."""
    pairs: dict[str, list[bool]] = {}
    for r in results:
        if "pair" in r:
            pairs.setdefault(r["pair"], []).append(r["passed"])
    right = sum(all(sides) for sides in pairs.values())
    return {"pairs": len(pairs), "all_right": right, "rate": right / len(pairs) if pairs else None}


# ---------------------------------------------------------------- the table


def format_report(report: dict, max_failures: int | None = None) -> str:
    """Pass rate per capability, overall, then the failing cases."""
    width = max(len("overall"), *(len(c["capability"]) for c in report["capabilities"]))
    header = f"{'capability':<{width}}  kind     cases  passed  pass rate"
    lines = [f"suite {report['suite']}: {report.get('model', 'model')}", "", header]
    lines.append("-" * len(header))
    for row in [*report["capabilities"], {"capability": "overall", "kind": "", **report}]:
        lines.append(
            f"{row['capability']:<{width}}  {row['kind']:<7}  {row['cases']:>5}  "
            f"{row['passed']:>6}  {100 * row['pass_rate']:>8.1f}%"
        )
    pairs = report.get("minimal_pairs") or {}
    if pairs.get("pairs"):
        lines.append(
            f"minimal pairs with both sides right: {pairs['all_right']} of {pairs['pairs']} "
            f"({100 * pairs['rate']:.1f}%)"
        )
    failing = [r for r in report["results"] if not r["passed"]]
    if not failing:
        return "\n".join([*lines, "", "every case passed"])
    shown = failing if max_failures is None else failing[:max_failures]
    lines += ["", f"failing cases ({len(failing)}):"]
    for r in shown:
        lines += failure_lines(r)
    if len(shown) < len(failing):
        lines.append(f"... and {len(failing) - len(shown)} more (all of them in --output JSON)")
    return "\n".join(lines)


def failure_lines(result: dict) -> list[str]:
    head = f"- {result['id']} [{result['capability']}]"
    if result["kind"] == "mft":
        return [
            f"{head} expected {result['expected']}, predicted {result['predicted'][0]} "
            f"(p={result['probability'][0]:.2f}): {result['texts'][0]}"
        ]
    if result["kind"] == "inv":
        expected = f" (expected {result['expected']})" if result["expected"] else ""
        return [f"{head} labels differ{expected}:"] + [
            f"    {label} (p={p:.2f}): {text}"
            for label, p, text in zip(result["predicted"], result["probability"], result["texts"])
        ]
    base, edited = result["label_probability"]
    verb = "fall" if result["direction"] == "up" else "rise"
    return [
        f"{head} p({result['expected']}) should not {verb}: {base:.2f} -> {edited:.2f}",
        f"    base:   {result['texts'][0]}",
        f"    edited: {result['texts'][1]}",
    ]


# ---------------------------------------------------------------- `finlora check`


def check(settings: Any) -> dict:
    """`finlora check`: load the suite and the model, score, print the table, write JSON."""
    from finlora.artifacts import check_output_file, write_json
    from finlora.predictor import Predictor

    if settings.min_pass_rate is not None and not 0 <= settings.min_pass_rate <= 1:
        raise FinloraError(f"--min_pass_rate must be in [0, 1], got {settings.min_pass_rate}")
    if settings.max_failures is not None and settings.max_failures < 0:
        raise FinloraError(f"--max_failures must be at least 0, got {settings.max_failures}")
    if settings.output:
        check_output_file(settings.output)
    suite = load_suite(settings.suite)
    predictor = Predictor.load(
        settings.model,
        batch_size=settings.batch_size,
        backend=settings.backend,
        precision=settings.precision,
        threads=settings.threads,
    )
    if predictor.multi_label:
        raise FinloraError(
            f"{settings.model} holds a multi-label model; behavioural suites score "
            "single-label models"
        )
    check_labels(suite, predictor.labels, settings.model)
    report = run_checks(predictor, suite)
    report = {
        "model": str(settings.model),
        "backend": f"{predictor.backend} {predictor.precision}",
        **report,
    }
    print(format_report(report, settings.max_failures))
    if settings.output:
        write_json(settings.output, report)
    if not passes(report, settings):
        log.warning(
            "overall pass rate %.1f%% is below --min_pass_rate %.1f%%",
            100 * report["pass_rate"],
            100 * settings.min_pass_rate,
        )
    return report


def passes(report: dict, settings: Any) -> bool:
    return settings.min_pass_rate is None or report["pass_rate"] >= settings.min_pass_rate


# ---------------------------------------------------------------- `finlora compare`


def suite_for_labels(labels: list[str]) -> str | None:
    """The shipped suite written for exactly these labels, if there is one."""
    for name in shipped_suites():
        suite = load_suite(name)
        if suite.labels is not None and set(suite.labels) == set(labels):
            return name
    return None


def suite_scores(run_dir: str | Path, results: FinalResults) -> dict:
    """For a finished single-label transformer run: the pass rate of the shipped suite matching
    its labels, `{"suite": name, "suite_pass_rate": rate}`; {} when no suite matches.

    The full report is kept in the run dir as checks.json and reused while the suite is
    unchanged."""
    if results.multi_label:
        return {}
    name = suite_for_labels(results.labels)
    if name is None:
        return {}
    suite = load_suite(name)
    path = Path(run_dir) / CHECKS_FILE
    report = None
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("suite_sha256") == suite.sha256():
            report = saved
    if report is None:
        from finlora.artifacts import write_json
        from finlora.predictor import Predictor

        report = run_checks(Predictor.load(run_dir, backend="torch"), suite)
        write_json(path, report)  # temporary file + rename
    return {"suite": name, "suite_pass_rate": report["pass_rate"]}
