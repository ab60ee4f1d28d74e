"""Calibration and conformal prediction sets, per cross-validation fold, with finlora's `train()`.

Trains the recipe once per fold (stratified K folds of the dataset, the same folds as
`finlora compare --folds K`; each fold carves its validation slice, on which calibration and
the conformal scores are fitted, out of its training part) and prints, per fold and as a mean:
test macro-F1, ECE before/after calibration, Brier before/after, the coverage of the 0.9
prediction sets, the share of test texts sent to review and the accuracy on the others.

    FINLORA_DATA_DIR=/work/shared/datasets HF_HUB_OFFLINE=1 nice python bench/calibration.py \\
        --dataset phrasebank_allagree --folds 5 --output_root runs/calibration
    python bench/calibration.py --dataset phrasebank_50agree --folds 5 --only 0   # one fold

Resumable: a fold whose `<output_root>/fold<K>/final_results.json` exists is read, not
retrained (pass --output_root to keep runs between invocations).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = REPO / "config" / "phrasebank_lora.yaml"
COLUMNS = (
    ("macro_f1", "macro-F1"),
    ("ece_before", "ECE raw"),
    ("ece_after", "ECE cal"),
    ("brier_before", "Brier raw"),
    ("brier_after", "Brier cal"),
    ("temperature", "T"),
    ("coverage", "coverage"),
    ("review_share", "review"),
    ("accuracy_on_accepted", "acc accepted"),
    ("train_seconds", "train s"),
)


def fold_numbers(results: dict) -> dict:
    test = results["test"]
    calibration, conformal = test.get("calibration") or {}, test.get("conformal") or {}
    return {
        "macro_f1": test["macro_f1"],
        **{
            key: calibration.get(key)
            for key in ("ece_before", "ece_after", "brier_before", "brier_after", "temperature")
        },
        "coverage_target": conformal.get("coverage_target"),
        "coverage": conformal.get("coverage"),
        "review_share": conformal.get("review_share"),
        "accuracy_on_accepted": conformal.get("accuracy_on_accepted"),
        "train_seconds": results["train_seconds"],
        "test_size": test["size"],
    }


def run_fold(config, data, output_dir: Path) -> dict:
    from finlora.training import train

    train(config, data, output_dir=output_dir)
    return json.loads((output_dir / "final_results.json").read_text())


def format_row(name: str, numbers: dict) -> str:
    cells = []
    for key, _ in COLUMNS:
        value = numbers.get(key)
        cells.append(f"{value:>13.4f}" if isinstance(value, float | int) else f"{'-':>13}")
    return f"{name:<8}" + "".join(cells)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(DEFAULT_RECIPE), help="YAML recipe in config/")
    parser.add_argument("--dataset", default="phrasebank_allagree")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--only", type=int, nargs="+", help="run only these folds (0-based)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the folds and the runs")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key"
    )
    parser.add_argument("--output_root", help="keep each fold's run here (default: temp)")
    parser.add_argument("--json", help="also write the per-fold numbers to this JSON file")
    args = parser.parse_args(argv)

    from finlora.config import resolve_config
    from finlora.data import prepare_folds

    logging.basicConfig(level=logging.WARNING)
    overrides = dict(pair.split("=", 1) for pair in args.set)
    config = resolve_config(
        {**overrides, "dataset": args.dataset, "seed": args.seed, "calibrate": True}, args.recipe
    )
    folds = prepare_folds(config, args.folds)
    wanted = args.only if args.only is not None else range(args.folds)
    print(f"{args.dataset}, {args.folds} folds, recipe {args.recipe}", flush=True)
    print(f"{'fold':<8}" + "".join(f"{title:>13}" for _, title in COLUMNS), flush=True)
    rows: dict[int, dict] = {}
    with tempfile.TemporaryDirectory(prefix="finlora-calibration-") as scratch:
        root = Path(args.output_root or scratch)
        for k in wanted:
            out = root / f"fold{k}"
            done = out / "final_results.json"
            results = json.loads(done.read_text()) if done.is_file() else None
            if results is None:
                results = run_fold(config, folds[k], out)
            rows[k] = fold_numbers(results)
            print(format_row(str(k), rows[k]), flush=True)
    if len(rows) > 1:
        mean = {
            key: statistics.mean(r[key] for r in rows.values())
            for key, _ in COLUMNS
            if all(isinstance(r.get(key), float | int) for r in rows.values())
        }
        print(format_row("mean", mean), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
