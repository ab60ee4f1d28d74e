"""Benchmark a training recipe on Financial PhraseBank with finlora's own `train()`.

Runs the recipe once per seed, each in a fresh process (so peak memory and timings are
per run), and prints one line per run plus a summary:

    FINLORA_DATA_DIR=/work/shared/datasets HF_HUB_OFFLINE=1 \
        nice python bench/train_phrasebank.py                       # LoRA recipe, seed 42
    python bench/train_phrasebank.py --recipe config/phrasebank_full.yaml --seeds 1 2 3
    python bench/train_phrasebank.py --set epochs=2 --set max_length=64   # explore a variant

The seed moves the split as well as the initialisation and data order, so several seeds
measure how robust a recipe is, not just how lucky one split is.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = REPO / "config" / "phrasebank_lora.yaml"


def run_once(recipe: str, seed: int, overrides: dict[str, str], output_dir: str) -> dict:
    """One training run in this (fresh) process; returns the numbers the bench reports."""
    from finlora.config import resolve_config
    from finlora.training import train

    logging.basicConfig(level=logging.WARNING)
    load_before = os.getloadavg()[0]
    config = resolve_config({**overrides, "seed": seed, "output_dir": output_dir}, recipe)
    results = train(config)
    return {
        "seed": seed,
        "macro_f1": results.test.macro_f1,
        "accuracy": results.test.accuracy,
        "validation_macro_f1": results.validation.macro_f1,
        "best_epoch": results.best_epoch,
        "trainable_pct": 100.0 * results.trainable_fraction,
        "train_seconds": results.train_seconds,
        "peak_memory_mb": results.peak_memory_mb,
        "precision": results.precision,
        "load_1min": (load_before, os.getloadavg()[0]),
    }


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        overrides[key.strip()] = value.strip()
    return overrides


def format_run(run: dict) -> str:
    return (
        f"seed {run['seed']:>4}: test macro-F1 {run['macro_f1']:.4f}  accuracy "
        f"{run['accuracy']:.4f}  (validation macro-F1 {run['validation_macro_f1']:.4f}, "
        f"best epoch {run['best_epoch']})  trainable {run['trainable_pct']:.3f}%  "
        f"train {run['train_seconds']:.1f} s  peak memory {run['peak_memory_mb']:.0f} MB  "
        f"{run['precision']}  load {run['load_1min'][0]:.2f}->{run['load_1min'][1]:.2f}"
    )


def summarize(runs: list[dict]) -> str:
    def spread(key: str, digits: int) -> str:
        values = [r[key] for r in runs]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        mean, low = statistics.mean(values), min(values)
        return f"{mean:.{digits}f} ± {std:.{digits}f} (min {low:.{digits}f})"

    return (
        f"summary over {len(runs)} seed(s): test macro-F1 {spread('macro_f1', 4)}; "
        f"accuracy {spread('accuracy', 4)}; train seconds mean "
        f"{statistics.mean(r['train_seconds'] for r in runs):.1f}, max "
        f"{max(r['train_seconds'] for r in runs):.1f}; peak memory max "
        f"{max(r['peak_memory_mb'] for r in runs):.0f} MB; "
        f"trainable {runs[0]['trainable_pct']:.3f}%"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(DEFAULT_RECIPE), help="YAML recipe in config/")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42], help="one run per seed")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key (any `finlora train` flag), repeatable",
    )
    parser.add_argument("--output_root", help="keep each run's artifacts here (default: temp)")
    parser.add_argument("--json", help="also write all runs to this JSON file")
    args = parser.parse_args(argv)
    overrides = parse_overrides(args.set)

    print(f"recipe {args.recipe}" + (f" with {overrides}" if overrides else ""), flush=True)
    runs = []
    with tempfile.TemporaryDirectory(prefix="finlora-bench-") as scratch:
        root = Path(args.output_root or scratch)
        for seed in args.seeds:
            # A fresh process per run: ru_maxrss is a per-process high-water mark.
            with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
                future = pool.submit(
                    run_once, args.recipe, seed, overrides, str(root / f"seed{seed}")
                )
                run = future.result()
            runs.append(run)
            print(format_run(run), flush=True)
    print(summarize(runs), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
