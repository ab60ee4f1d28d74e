"""Explanations of a trained model: ERASER comprehensiveness and `--explain` latency.

On the first N sentences of the model's own test split (the split `finlora train` made, from
the run's finlora_config.yaml: same dataset, seed and sizes), explains the predicted class of
each sentence one at a time (the latency of `finlora predict --explain TEXT`, model loaded),
then measures comprehensiveness at k = 1, 3, 5: the drop of the predicted class's probability
when its k highest-attributed words are deleted, against k random words (mean of 5 seeded
draws). Prints a table and writes JSON.

    FINLORA_DATA_DIR=/work/shared/datasets HF_HUB_OFFLINE=1 python bench/explain.py \\
        --model outputs/pb_lora --n 100 --threads 2 --output runs/explain.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import yaml


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def test_texts(model_dir: Path, n: int) -> list[str]:
    from finlora.config import TrainConfig
    from finlora.data.prepare import prepare_data

    saved = yaml.safe_load((model_dir / "finlora_config.yaml").read_text())
    known = set(TrainConfig.__dataclass_fields__)
    config = TrainConfig(**{k: v for k, v in saved.items() if k in known})
    return list(prepare_data(config).test["text"][:n])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a `finlora train` output dir")
    parser.add_argument("--n", type=int, default=100, help="test sentences")
    parser.add_argument("--n_steps", type=int, default=32, help="integrated-gradients steps")
    parser.add_argument("--baseline", default="pad", choices=("pad", "mask"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--draws", type=int, default=5, help="random draws per sentence")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="write the results JSON here")
    args = parser.parse_args()

    import torch

    from finlora.explain import Explainer, comprehensiveness
    from finlora.predictor import Predictor

    model_dir = Path(args.model)
    texts = test_texts(model_dir, args.n)
    predictor = Predictor.load(model_dir, backend="torch", threads=args.threads)
    explainer = Explainer(predictor, n_steps=args.n_steps, baseline=args.baseline)
    explainer.explain(texts[:1])  # warm-up
    records, seconds = [], []
    for text in texts:
        start = time.perf_counter()
        records += explainer.explain([text])
        seconds.append(time.perf_counter() - start)
    rows = {}
    for k in (1, 3, 5):
        result = comprehensiveness(
            predictor, texts, records, k=k, random_draws=args.draws, seed=args.seed
        )
        rows[k] = {key: result[key] for key in ("comprehensiveness", "random", "ratio")}
    latency = {
        "median_s": statistics.median(seconds),
        "p90_s": float(np.quantile(seconds, 0.9)),
        "mean_s": statistics.fmean(seconds),
    }
    print(f"{len(texts)} test sentences of {model_dir}, n_steps {args.n_steps}, "
          f"baseline {args.baseline}, {torch.get_num_threads()} torch threads")  # fmt: skip
    print(f"{'k':>3} {'top-k drop':>11} {'random drop':>12} {'ratio':>7}")
    for k, row in rows.items():
        ratio = f"{row['ratio']:.1f}x" if row["ratio"] else "n/a"
        print(f"{k:>3} {row['comprehensiveness']:>11.4f} {row['random']:>12.4f} {ratio:>7}")
    print(f"--explain latency per sentence: median {latency['median_s'] * 1e3:.0f} ms, "
          f"p90 {latency['p90_s'] * 1e3:.0f} ms")  # fmt: skip
    if args.output:
        out = {
            "model": str(model_dir),
            "sentences": len(texts),
            "n_steps": args.n_steps,
            "baseline": args.baseline,
            "random_draws": args.draws,
            "threads": torch.get_num_threads(),
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "comprehensiveness": {str(k): row for k, row in rows.items()},
            "latency": latency,
        }
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
