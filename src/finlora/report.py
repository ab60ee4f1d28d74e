"""Human-readable output of `finlora compare`: report.md and the PNG plots (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from finlora.errors import FinloraError

NAMES = {"full": "Full fine-tuning", "lora": "LoRA", "baseline": "TF-IDF + LogReg"}
COLORS = {"full": "#4C72B0", "lora": "#DD8452", "baseline": "#8C8C8C"}
PLOTS = {
    "confusion_matrices.png": "Test confusion matrices",
    "per_label_f1.png": "Test F1 per label",
    "learning_curves.png": "Validation macro-F1 per epoch",
    "summary.png": "Training time, trainable parameters, macro-F1 and throughput",
}


def pyplot():
    """matplotlib without a display; imported late so the training path never needs it."""
    try:
        import matplotlib
    except ImportError:
        raise FinloraError("the plots need matplotlib: pip install 'finlora[reports]'") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(report: dict, records: dict[str, list[dict]], out: Path) -> None:
    strategies = [s for s in report["strategies"]]
    if not strategies:
        return
    if report["problem_type"] == "multi_label":
        plot_per_label_f1(report, strategies, out / "per_label_f1.png")
    else:
        plot_confusion_matrices(report, strategies, out / "confusion_matrices.png")
    plot_learning_curves(records, strategies, out / "learning_curves.png")
    plot_summary(report, strategies, out / "summary.png")
    from finlora.calibration import plot_reliability

    for strategy in strategies:  # the transformer runs with calibration.json
        block = report["strategies"][strategy].get("calibration")
        plot_reliability(block, out / reliability_file(strategy), f"{NAMES[strategy]}: test")


def reliability_file(strategy: str) -> str:
    return f"reliability_{strategy}.png"


def plot_confusion_matrices(report: dict, strategies: list[str], path: Path) -> None:
    plt = pyplot()
    labels = report["labels"]
    fig, axes = plt.subplots(
        1, len(strategies), figsize=(4.2 * len(strategies) + 1.2, 4.4), squeeze=False
    )
    for position, (ax, strategy) in enumerate(zip(axes[0], strategies)):
        summary = report["strategies"][strategy]
        counts = np.asarray(summary["confusion_matrix"], dtype=float)
        rows = np.where(counts.sum(1, keepdims=True) > 0, counts.sum(1, keepdims=True), 1)
        share = counts / rows
        image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(labels)):
            for j in range(len(labels)):
                ax.text(
                    j,
                    i,
                    f"{int(counts[i, j])}\n{100 * share[i, j]:.0f}%",
                    ha="center",
                    va="center",
                    fontsize=9,
                    color="white" if share[i, j] > 0.6 else "black",
                )
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        ax.set_yticks(range(len(labels)), labels if position == 0 else [])
        ax.set_xlabel("predicted class")
        if position == 0:
            ax.set_ylabel("true class")
        ax.set_title(f"{NAMES[strategy]}\nmacro-F1 {summary['macro_f1']:.3f}")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="share of the true class")
    runs = _runs(report)
    fig.suptitle(
        f"Test confusion matrices, {report['dataset']}"
        + (f" (summed over {_runs_text(report)})" if runs > 1 else "")
    )
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_per_label_f1(report: dict, strategies: list[str], path: Path) -> None:
    """Multi-label: one group of bars per label (with its test positives), one bar per strategy."""
    plt = pyplot()
    labels = report["labels"]
    most_runs = max(strategies, key=lambda name: report["strategies"][name]["n_runs"])
    support = report["strategies"][most_runs]["per_class_support"]
    width = 0.8 / len(strategies)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.1 * len(labels) + 2), 4.5))
    for position, strategy in enumerate(strategies):
        summary = report["strategies"][strategy]
        offsets = np.arange(len(labels)) + (position - (len(strategies) - 1) / 2) * width
        ax.bar(
            offsets,
            [summary["per_class_f1"][label] or 0.0 for label in labels],
            width,
            yerr=[summary.get("per_class_f1_std", {}).get(label) or 0.0 for label in labels],
            capsize=3,
            color=COLORS[strategy],
            label=f"{NAMES[strategy]} (macro-F1 {summary['macro_f1']:.3f})",
        )
    ax.set_xticks(range(len(labels)), [f"{label}\n{support[label]} pos." for label in labels])
    runs = _runs(report)
    ax.set_xlabel("label (test positives" + (", summed over runs)" if runs > 1 else ")"))
    ax.set_ylabel("test F1")
    ax.set_ylim(0, 1.05)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(
        f"Test F1 per label, {report['dataset']}"
        + (f" (mean ± std over {_runs_text(report)})" if runs > 1 else "")
    )
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _runs(report: dict) -> int:
    return max(s["n_runs"] for s in report["strategies"].values())


def _runs_text(report: dict) -> str:
    """`10 runs`, or the count per strategy when they differ (the baseline runs once per split)."""
    counts = {NAMES[name]: s["n_runs"] for name, s in report["strategies"].items()}
    if len(set(counts.values())) == 1:
        return f"{_runs(report)} runs"
    return "runs: " + ", ".join(f"{name} {n}" for name, n in counts.items())


def plot_learning_curves(records: dict[str, list[dict]], strategies: list[str], path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for strategy in strategies:
        runs = records[strategy]
        color = COLORS[strategy]
        if strategy == "baseline":
            level = np.mean([r["validation_macro_f1"] for r in runs])
            ax.axhline(level, color=color, ls="--", label=f"{NAMES[strategy]} ({level:.3f})")
            continue
        curves = [
            ([h["epoch"] for h in r["history"]], [h["macro_f1"] for h in r["history"]])
            for r in runs
        ]
        for epochs, scores in curves if len(curves) > 1 else []:
            ax.plot(epochs, scores, color=color, alpha=0.25, lw=1)
        length = min(len(e) for e, _ in curves)
        mean = np.mean([s[:length] for _, s in curves], 0)
        label = NAMES[strategy] + (f" (mean of {len(curves)} runs)" if len(curves) > 1 else "")
        ax.plot(curves[0][0][:length], mean, color=color, marker="o", lw=2, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation macro-F1")
    ax.set_title("Validation macro-F1 per epoch (model selection picks the best epoch)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_summary(report: dict, strategies: list[str], path: Path) -> None:
    plt = pyplot()
    summaries = [report["strategies"][s] for s in strategies]
    panels = [
        ("train_seconds", "training time (s)", False, "{:.0f}"),
        ("trainable_params", "trainable parameters (log scale)", True, "{:,.0f}"),
        ("macro_f1", "test macro-F1", False, "{:.3f}"),
        ("inference_sentences_per_second", "inference (sentences/s, log)", True, "{:,.0f}"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.2))
    names = [NAMES[s] for s in strategies]
    colors = [COLORS[s] for s in strategies]
    for ax, (key, title, log_scale, fmt) in zip(axes, panels):
        values = [s[key] for s in summaries]
        errors = [s.get(f"{key}_std", 0.0) for s in summaries]
        if key == "macro_f1" and all("macro_f1_ci95" in s for s in summaries):
            errors = np.array(
                [[v - s["macro_f1_ci95"][0], s["macro_f1_ci95"][1] - v]
                 for v, s in zip(values, summaries)]
            ).T  # fmt: skip
        bars = ax.bar(names, values, color=colors, yerr=errors, capsize=4)
        if log_scale:
            ax.set_yscale("log")
        if key == "macro_f1":
            low = min(values) - 0.15
            ax.set_ylim(max(0.0, low), 1.0)
        ax.bar_label(bars, [fmt.format(v) for v in values], padding=2, fontsize=8)
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=20)
        ax.grid(axis="y", alpha=0.3)
    runs = _runs(report)
    spread = (
        f"error bars: std over {_runs_text(report)}"
        if runs > 1
        else "error bars: 95% bootstrap interval"
        if all("macro_f1_ci95" in s for s in summaries)
        else "one run, no error bars"
    )
    fig.suptitle(f"{report['dataset']}: cost and quality per strategy ({spread})")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _cell(summary: dict, key: str, fmt: str) -> str:
    value = fmt.format(summary[key])
    if f"{key}_std" in summary:
        value += " ± " + fmt.format(summary[f"{key}_std"])
    return value


def _labels_without_test_positives(strategies: dict) -> list[str]:
    """Multi-label: where a test part held no positive of a label (its F1 there is 0)."""
    where: dict[str, set[str]] = {}
    for s in strategies.values():
        for run in s["runs"]:
            for label, count in run.get("per_class_support", {}).items():
                if count == 0:
                    fold = "" if run["fold"] is None else f"fold {run['fold'] + 1} "
                    where.setdefault(label, set()).add(f"{fold}seed {run['seed']}")
    if not where:
        return []
    listed = "; ".join(f"{label} ({', '.join(sorted(runs))})" for label, runs in where.items())
    return [
        "",
        f"No test positive of: {listed}. Those runs score the label's F1 as 0 in their "
        "macro-F1; the per-label means above leave them out.",
    ]


def write_markdown(report: dict, out: Path) -> None:
    settings = report["settings"]
    strategies = report["strategies"]
    many = any(s["n_runs"] > 1 for s in strategies.values())
    multi_label = report["problem_type"] == "multi_label"
    with_ci = not many and all("macro_f1_ci95" in s for s in strategies.values())
    suite = next((r["suite"] for s in strategies.values() for r in s["runs"] if "suite" in r), None)
    quality = (
        [("micro_f1", "micro-F1"), ("accuracy", "exact match"),
         ("lexglue_micro_f1", "LexGLUE micro-F1"), ("lexglue_macro_f1", "LexGLUE macro-F1")]
        if multi_label
        else [("accuracy", "accuracy"), ("weighted_f1", "weighted F1")]
    )  # fmt: skip
    seeds = ", ".join(str(settings["seed"] + i) for i in range(settings["seeds"]))
    recipes = ", ".join(f"{k} `{v}`" for k, v in report["recipes"].items()) or "none"
    lines = [f"# finlora compare: {report['dataset']}", ""]
    if not report["complete"]:
        lines += [
            f"**Partial report: {report['runs_finished']} of {report['runs_planned']} runs "
            "finished.** Rerun the same command to resume. Until then the strategies may "
            "cover different folds or seeds (see the runs column and the Runs table).",
            "",
        ]
    split = report["split"]
    sizes = split["sizes"][0]
    lines += [
        f"- data: {sum(sizes.values())} de-duplicated texts "
        + ("(label positives: " if multi_label else "(")
        + f"{', '.join(f'{k} {v}' for k, v in report['class_counts'].items())}); "
        f"{split['duplicates_dropped']} duplicates and {split['conflicting_texts_dropped']} "
        "conflicting texts dropped",
        f"- split: {split['kind']}, seed {settings['seed']}; "
        + (
            f"{settings['folds']} folds, each with its own validation slice "
            f"(fold 1: train {sizes['train']}, validation {sizes['validation']}, "
            f"test {sizes['test']})"
            if settings["folds"]
            else f"train {sizes['train']}, validation {sizes['validation']}, test {sizes['test']}"
        ),
        f"- training seeds: {seeds}"
        + (
            f" (the baseline is deterministic: one run per split, seed {settings['seed']})"
            if settings["seeds"] > 1 and "baseline" in strategies
            else ""
        )
        + f"; recipes: {recipes}",
        f"- machine: {report['machine']}",
        *(
            [
                f"- suite pass rate: share of the `{suite}` behavioural suite's cases the "
                f"model gets right (`finlora check --suite {suite}`, docs/checks.md)"
            ]
            if suite
            else []
        ),
        "",
        "| strategy | "
        + ("runs | " if many else "")
        + "trainable params | trainable % | test macro-F1 | "
        + ("95% CI | " if with_ci else "")
        + ("suite pass rate | " if suite else "")
        + " | ".join(title for _, title in quality)
        + " | train time (s) | peak memory (MB) | inference (sent/s) |",
        "|---|"
        + ("---:|" if many else "")
        + "---:|---:|---:|"
        + ("---:|" if with_ci else "")
        + ("---:|" if suite else "")
        + "---:|" * len(quality)
        + "---:|---:|---:|",
    ]
    for name, s in strategies.items():
        ci = "{:.3f}-{:.3f} | ".format(*s["macro_f1_ci95"]) if with_ci else ""
        if suite:
            ci += (_cell(s, "suite_pass_rate", "{:.1%}") if "suite_pass_rate" in s else "-") + " | "
        lines.append(
            f"| {NAMES[name]} | "
            + (f"{s['n_runs']} | " if many else "")
            + f"{s['trainable_params']:,.0f} | {s['trainable_percent']:.2f}% | "
            f"{_cell(s, 'macro_f1', '{:.4f}')} | {ci}"
            + "".join(f"{_cell(s, key, '{:.4f}')} | " for key, _ in quality)
            + f"{_cell(s, 'train_seconds', '{:.0f}')} | "
            f"{_cell(s, 'peak_memory_mb', '{:.0f}')} | "
            f"{_cell(s, 'inference_sentences_per_second', '{:.0f}')} |"
        )
    warned = [
        (name, run) for name, s in strategies.items() for run in s["runs"] if run.get("warnings")
    ]
    if warned:
        lines += ["", "**Warnings** (these runs are in the means above; check or rerun them):", ""]
        lines += [
            f"- {NAMES[name]}, seed {run['seed']}"
            + ("" if run["fold"] is None else f", fold {run['fold'] + 1}")
            + f": {warning}"
            for name, run in warned
            for warning in run["warnings"]
        ]
    labels = report["labels"]
    lines += [
        "",
        ("Test F1 per label" if multi_label else "Test F1 per class")
        + (" (mean ± std over runs)" if many else "")
        + ":",
        "",
        "| strategy | " + " | ".join(labels) + " |",
        "|---|" + "---:|" * len(labels),
    ]
    for name, s in strategies.items():
        cells = []
        for label in labels:
            mean, std = s["per_class_f1"][label], s.get("per_class_f1_std", {}).get(label)
            cells.append(
                "-" if mean is None else f"{mean:.4f}" + ("" if std is None else f" ± {std:.4f}")
            )
        lines.append(f"| {NAMES[name]} | " + " | ".join(cells) + " |")
    lines += _labels_without_test_positives(strategies)
    lines += [
        "",
        "How to read it: macro-F1 averages the per-class F1, so the small classes count as much "
        "as the large one. "
        + (
            "Multi-label: F1 is per label with the thresholds tuned on validation; micro-F1 "
            "pools every label decision; exact match is the share of texts with every label "
            "right; the LexGLUE figures add a 'no label' column, as LexGLUE scores UNFAIR-ToS. "
            if multi_label
            else ""
        )
        + (
            "Mean ± sample standard deviation over folds and seeds."
            if many
            else "The 95% interval is a percentile bootstrap over the test examples "
            f"({settings['bootstrap']} resamples): differences inside it are noise."
            if with_ci
            else "One run: see the per-label test positives in the plot before reading much "
            "into a difference; `--folds` gives the spread."
        )
        + " Train time is the wall time of training with per-epoch validation (the baseline: "
        "fitting its regularisation grid). Peak memory is the peak resident memory of the run's "
        "own process (each run has a fresh one), libraries included. Inference is the saved "
        "model predicting the test set on this machine. The baseline's trainable parameters "
        "are its logistic-regression coefficients.",
        "",
        "## Runs",
        "",
        "| strategy | seed | fold | test macro-F1 | "
        + ("micro-F1" if multi_label else "accuracy")
        + " | best epoch | train time (s) | artifacts |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, s in strategies.items():
        for run in s["runs"]:
            fold = "-" if run["fold"] is None else run["fold"] + 1
            lines.append(
                f"| {NAMES[name]} | {run['seed']} | {fold} | {run['macro_f1']:.4f} | "
                f"{run['micro_f1' if multi_label else 'accuracy']:.4f} | "
                f"{run['best_epoch'] or '-'} | "
                f"{run['train_seconds']:.0f} | `{run['artifact_dir']}` |"
            )
    lines += [""]
    for file, title in PLOTS.items():
        if (out / file).is_file():
            lines += [f"## {title}", "", f"![{title}]({file})", ""]
    calibrated = [
        (name, s["calibration"]) for name, s in strategies.items() if s.get("calibration")
    ]
    if calibrated:
        lines += [
            "## Calibration on test (reliability diagrams)",
            "",
            "Temperature scaling (single-label) or per-label Platt scaling fitted on "
            "validation; ECE over 15 equal-width bins"
            + (", averaged over runs, bins pooled" if many else "")
            + ".",
            "",
            "| strategy | ECE raw | ECE calibrated | Brier raw | Brier calibrated |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, c in calibrated:
            lines.append(
                f"| {NAMES[name]} | {c['ece_before']:.4f} | {c['ece_after']:.4f} | "
                f"{c['brier_before']:.4f} | {c['brier_after']:.4f} |"
            )
        lines.append("")
        for name, _ in calibrated:
            file = reliability_file(name)
            if (out / file).is_file():
                lines += [f"![{NAMES[name]} reliability]({file})", ""]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
