"""`finlora profile`: what a dataset looks like before training on it.

Class balance (it decides stratification and loss weights), token lengths (they decide
`max_length` and how much text truncation throws away), duplicates and conflicting labels
(they leak between splits or cannot be learned) and the words that characterise each class.
Uses the same reading and cleaning as training, so the numbers are those training will see.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from finlora.artifacts import write_json
from finlora.config import ProfileConfig
from finlora.data.lengths import length_stats, token_lengths
from finlora.data.prepare import load_clean
from finlora.data.split import imbalance_ratio
from finlora.report import pyplot

log = logging.getLogger(__name__)

WORD = re.compile(r"[a-z][a-z'\-]*[a-z]")


def words(text: str) -> list[str]:
    """Lower-cased words of 2+ letters, stop words removed (numbers carry no class signal)."""
    return [w for w in WORD.findall(text.lower()) if w not in ENGLISH_STOP_WORDS]


def distinctive_words(counts: dict[str, Counter], top: int, min_count: int = 5) -> dict:
    """Per class, the words most over-represented against all other classes (smoothed log-ratio)."""
    totals = {label: sum(c.values()) for label, c in counts.items()}
    everything = sum(counts.values(), Counter())
    grand = sum(totals.values())
    vocabulary = len(everything)
    out = {}
    for label, counter in counts.items():
        rest_total = grand - totals[label]
        scores = []
        for word, count in counter.items():
            if count < min_count:
                continue
            inside = (count + 1) / (totals[label] + vocabulary)
            outside = (everything[word] - count + 1) / (rest_total + vocabulary)
            scores.append((math.log(inside / outside), word, count))
        scores.sort(reverse=True)
        out[label] = [{"word": w, "count": c, "log_ratio": round(s, 3)} for s, w, c in scores[:top]]
    return out


def profile(settings: ProfileConfig) -> dict:
    """Compute the profile, write profile.json, profile.md and plots; return the profile."""
    from finlora.modeling import load_tokenizer  # transformers only when profiling

    config = settings.data_config()
    clean = load_clean(config)
    frame, labels = clean.frame, clean.labels
    cleaning = clean.files["train"]
    lengths = token_lengths(load_tokenizer(settings.model_name), frame["text"].tolist())
    counts = {lab: int((frame["label"] == lab).sum()) for lab in labels}
    per_class_words = {
        lab: Counter(w for text in frame.loc[frame["label"] == lab, "text"] for w in words(text))
        for lab in labels
    }
    result = {
        "source": str(clean.source),
        "rows_read": cleaning["rows_read"],
        "rows_kept": cleaning["rows_kept"],
        "empty_texts_dropped": cleaning["empty_texts_dropped"],
        "missing_labels_dropped": cleaning["missing_labels_dropped"],
        "duplicates_dropped": cleaning["duplicates_dropped"],
        "conflicting_texts_dropped": cleaning["conflicting_texts_dropped"],
        "conflicting_examples": cleaning["conflicting_examples"],
        "labels": labels,
        "class_counts": counts,
        "class_shares": {lab: round(n / len(frame), 4) for lab, n in counts.items()},
        "imbalance_ratio": round(imbalance_ratio(frame["label"]), 4),
        "tokenizer": settings.model_name,
        "token_lengths": length_stats(lengths, settings.max_length),
        "token_lengths_per_class": {
            lab: length_stats(lengths[(frame["label"] == lab).to_numpy()], settings.max_length)
            for lab in labels
        },
        "frequent_words": {
            lab: [
                {"word": w, "count": c}
                for w, c in per_class_words[lab].most_common(settings.top_tokens)
            ]
            for lab in labels
        },
        "distinctive_words": distinctive_words(per_class_words, settings.top_tokens),
    }
    out = Path(settings.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "profile.json", result)
    plot_profile(result, lengths, frame["label"].to_numpy(), out)
    write_profile_markdown(result, out)
    log.info("profile of %s written to %s", clean.source.name, out)
    return result


def plot_profile(result: dict, lengths: np.ndarray, label_of: np.ndarray, out: Path) -> None:
    plt = pyplot()
    labels = result["labels"]
    colors = plt.get_cmap("tab10").colors

    fig, ax = plt.subplots(figsize=(6, 4))
    bars = ax.bar(labels, [result["class_counts"][lab] for lab in labels], color=colors)
    ax.bar_label(
        bars,
        [
            f"{result['class_counts'][lab]} ({100 * result['class_shares'][lab]:.0f}%)"
            for lab in labels
        ],  # fmt: skip
        padding=2,
    )
    ax.set_xlabel("class")
    ax.set_ylabel("texts (after de-duplication)")
    ax.set_title(f"Class counts (imbalance ratio {result['imbalance_ratio']:.2f})")
    ax.margins(y=0.12)
    fig.savefig(out / "class_counts.png", dpi=110, bbox_inches="tight")
    plt.close(fig)

    stats = result["token_lengths"]
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.linspace(0, max(lengths.max(), stats["max_length"]) + 1, 40)
    ax.hist(
        [lengths[label_of == lab] for lab in labels],
        bins=bins,
        stacked=True,
        label=labels,
        color=colors[: len(labels)],
    )
    ax.axvline(stats["max_length"], color="black", ls="--")
    ax.text(
        stats["max_length"],
        ax.get_ylim()[1] * 0.9,
        f" max_length {stats['max_length']}\n {stats['truncated']} truncated"
        f" ({100 * stats['truncated_share']:.2f}%)",
        va="top",
    )
    ax.set_xlabel(f"tokens per text ({result['tokenizer'].split('/')[-1]} tokenizer)")
    ax.set_ylabel("texts")
    ax.set_title(f"Token lengths (median {stats['p50']:.0f}, 95th percentile {stats['p95']:.0f})")
    ax.legend(title="class")
    fig.savefig(out / "token_lengths.png", dpi=110, bbox_inches="tight")
    plt.close(fig)

    fig, axes = plt.subplots(1, len(labels), figsize=(3.6 * len(labels), 4.2), squeeze=False)
    for ax, lab, color in zip(axes[0], labels, colors):
        rows = result["distinctive_words"][lab][::-1]
        ax.barh([r["word"] for r in rows], [r["log_ratio"] for r in rows], color=color)
        ax.set_title(lab)
        ax.set_xlabel("log ratio vs other classes")
    fig.suptitle("Most distinctive words per class (appearing 5+ times)")
    fig.tight_layout()
    fig.savefig(out / "distinctive_words.png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def write_profile_markdown(result: dict, out: Path) -> None:
    labels = result["labels"]
    stats = result["token_lengths"]
    lines = [
        f"# Data profile: {Path(result['source']).name}",
        "",
        f"- rows read {result['rows_read']}, kept {result['rows_kept']} after cleaning: "
        f"{result['duplicates_dropped']} exact duplicates, "
        f"{result['conflicting_texts_dropped']} texts with conflicting labels, "
        f"{result['empty_texts_dropped']} empty texts, "
        f"{result['missing_labels_dropped']} missing labels dropped",
        f"- imbalance ratio (largest / smallest class): {result['imbalance_ratio']:.2f}",
        f"- tokens per text ({result['tokenizer']}): median {stats['p50']:.0f}, "
        f"p95 {stats['p95']:.0f}, max {stats['max']}; {stats['truncated']} texts "
        f"({100 * stats['truncated_share']:.2f}%) are longer than max_length "
        f"{stats['max_length']} and get truncated",
        "",
        "| class | texts | share | median tokens | p95 tokens | truncated |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for lab in labels:
        per = result["token_lengths_per_class"][lab]
        lines.append(
            f"| {lab} | {result['class_counts'][lab]} | {100 * result['class_shares'][lab]:.1f}% "
            f"| {per['p50']:.0f} | {per['p95']:.0f} | {per['truncated']} |"
        )
    if result["conflicting_examples"]:
        lines += ["", "Conflicting texts (same text, different labels), e.g.:", ""]
        lines += [f"- {text}" for text in result["conflicting_examples"]]
    lines += ["", "## Words per class", "", "| class | most frequent | most distinctive |",
              "|---|---|---|"]  # fmt: skip
    for lab in labels:
        frequent = ", ".join(f"{r['word']} ({r['count']})" for r in result["frequent_words"][lab])
        distinctive = ", ".join(r["word"] for r in result["distinctive_words"][lab])
        lines.append(f"| {lab} | {frequent} | {distinctive} |")
    lines += [""]
    for file, title in (
        ("class_counts.png", "Class counts"),
        ("token_lengths.png", "Token lengths"),
        ("distinctive_words.png", "Distinctive words"),
    ):
        lines += [f"## {title}", "", f"![{title}]({file})", ""]
    (out / "profile.md").write_text("\n".join(lines), encoding="utf-8")
