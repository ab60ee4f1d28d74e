"""Wall time of one recipe: 1 process x 2 threads vs 2 processes x 1 thread (torchrun, gloo).

    nice -n 10 python bench/ddp_wall_time.py --config config/phrasebank_lora.yaml --epochs 1

Prints one markdown row per run: wall seconds of the whole command (start-up included), the
CPU seconds it used, the 1-minute load average around it (the machine is shared), rank 0's
training-loop seconds and the test macro-F1. Modes run interleaved to spread load drift.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from finlora.results import load_results

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]

# name -> (launcher + module, threads per process, extra train flags, extra environment)
MODES = {
    "1x2": ([sys.executable, "-m", "finlora"], 2, [], {}),
    # idle OpenMP threads sleep instead of spinning: shows what spinning costs on a busy machine
    "1x2-passive": ([sys.executable, "-m", "finlora"], 2, [], {"OMP_WAIT_POLICY": "PASSIVE"}),
    # the recipe unchanged: batch_size is per device, so the global batch doubles
    "2x1": ([*TORCHRUN, "-m", "finlora"], 1, [], {}),
    # half the per-device batch: same global batch and optimizer steps as 1x2
    "2x1-half-batch": ([*TORCHRUN, "-m", "finlora"], 1, ["--batch_size", "HALF"], {}),
}


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(mode: str, config: str, epochs: str | None, batch_size: int, out: Path) -> dict:
    launcher, threads, extra, extra_env = MODES[mode]
    extra = [str(batch_size // 2) if flag == "HALF" else flag for flag in extra]
    command = [*launcher, "-q", "train", "--config", config, "--output_dir", str(out), *extra]
    if epochs:
        command += ["--epochs", epochs]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", **extra_env}
    load_before = os.getloadavg()[0]
    cpu_before = children_cpu_seconds()
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    results = load_results(out)
    global_batch = results.distributed.global_batch_size
    epochs_run = yaml.safe_load((out / "finlora_config.yaml").read_text())["epochs"]
    return {
        "mode": mode,
        "wall_s": round(wall, 1),
        "cpu_s": round(children_cpu_seconds() - cpu_before, 1),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "train_loop_s": results.train_seconds,
        "global_batch": global_batch,
        "steps": math.ceil(epochs_run * math.ceil(results.data.sizes["train"] / global_batch)),
        "test_macro_f1": round(results.test.macro_f1, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/phrasebank_lora.yaml")
    parser.add_argument("--epochs", help="override the recipe's epochs (shorter runs)")
    parser.add_argument("--batch_size", type=int, default=16, help="the recipe's batch_size")
    parser.add_argument("--modes", default="1x2,2x1,2x1-half-batch", help=", ".join(MODES))
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    print(f"cpus: {os.cpu_count()}, config: {args.config}, epochs: {args.epochs or 'recipe'}")
    print(
        "| mode | wall s | CPU s | load before/after | train loop s | global batch | "
        "optimizer steps | test macro-F1 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="finlora-bench-") as root:
        for repeat in range(args.repeats):
            for mode in args.modes.split(","):
                row = run(mode, args.config, args.epochs, args.batch_size,
                          Path(root) / f"{mode}-{repeat}")  # fmt: skip
                print(
                    f"| {row['mode']} | {row['wall_s']} | {row['cpu_s']} | "
                    f"{row['load_before']}/{row['load_after']} | {row['train_loop_s']} | "
                    f"{row['global_batch']} | {row['steps']} | {row['test_macro_f1']} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
