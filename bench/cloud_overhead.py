"""Wall time a default `finlora train` adds when data and artifacts go through S3 and MLflow.

Runs the same training twice as subprocesses: local files only, then with `--data s3://...
--output_dir s3://... --mlflow` against moto's S3 server on 127.0.0.1 and a local SQLite
MLflow store. Also times the cloud steps alone (download, upload, MLflow logging of the
finished output), which is the overhead without the run-to-run noise of a shared machine.

    FINLORA_DATA_DIR=/work/shared/datasets HF_HUB_OFFLINE=1 nice python bench/cloud_overhead.py \
        [--epochs 3] [extra `finlora train` flags]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from servers import FAKE_AWS, moto  # noqa: E402

from finlora.cloud import s3  # noqa: E402
from finlora.config import TrainConfig  # noqa: E402
from finlora.data.sources import resolve_named_dataset  # noqa: E402


def timed_train(args: list[str], env: dict, cwd: Path) -> tuple[float, dict]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "finlora", "train", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(done.stderr[-3000:])
    return wall, json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", default="3")
    known, extra = parser.parse_known_args()
    train_args = ["--epochs", known.epochs, *extra]
    data = resolve_named_dataset("phrasebank_allagree")
    with tempfile.TemporaryDirectory() as tmp, moto(Path(tmp)) as endpoint:
        tmp = Path(tmp)
        env = {**os.environ, **FAKE_AWS, "AWS_ENDPOINT_URL": endpoint}
        os.environ.update(FAKE_AWS, AWS_ENDPOINT_URL=endpoint)
        s3.client().create_bucket(Bucket="bench")
        s3.upload_file(data, "s3://bench/data/Sentences_AllAgree.txt")

        local_wall, local = timed_train(
            ["--data", str(data), "--output_dir", str(tmp / "local"), *train_args], env, tmp
        )
        cloud_wall, cloud = timed_train(
            ["--data", "s3://bench/data/Sentences_AllAgree.txt", "--output_dir",
             "s3://bench/runs/default", "--mlflow", "--tracking_uri",
             f"sqlite:///{tmp / 'mlruns.db'}", *train_args],
            env,
            tmp,
        )  # fmt: skip

        # The cloud steps alone, on the finished local output of the first run.
        steps = {}
        started = time.perf_counter()
        s3.download_file("s3://bench/data/Sentences_AllAgree.txt", tmp / "dl")
        steps["s3_download_s"] = time.perf_counter() - started
        started = time.perf_counter()
        size = s3.upload_dir(tmp / "local", "s3://bench/runs/again")
        steps["s3_upload_s"] = time.perf_counter() - started
        steps["upload_mb"] = size / s3.MB
        os.chdir(tmp)  # MLflow's local artifact store is relative to the working directory
        steps["mlflow_log_s"] = mlflow_logging_seconds(tmp)

    print(
        json.dumps(
            {
                "train_args": train_args,
                "local_wall_s": round(local_wall, 1),
                "local_train_s": local["train_seconds"],
                "s3_mlflow_wall_s": round(cloud_wall, 1),
                "s3_mlflow_train_s": cloud["train_seconds"],
                "wall_overhead_pct": round(100 * (cloud_wall / local_wall - 1), 1),
                **{k: round(v, 2) for k, v in steps.items()},
                "step_overhead_pct": round(
                    100
                    * (steps["s3_download_s"] + steps["s3_upload_s"] + steps["mlflow_log_s"])
                    / local_wall,
                    1,
                ),
                "test_macro_f1": [local.get("test_macro_f1"), cloud.get("test_macro_f1")],
            },
            indent=2,
        )
    )


def mlflow_logging_seconds(tmp: Path) -> float:
    """Start a run, log params/tags, then results, artifacts and the pyfunc model."""
    from finlora.results import load_results
    from finlora.tracking import mlflow_run

    output = tmp / "local"
    results = load_results(output)
    config = TrainConfig(mlflow=True, tracking_uri=f"sqlite:///{tmp / 'steps.db'}")
    started = time.perf_counter()
    with mlflow_run(config) as tracker:
        tracker.log_start(config, results.data.to_dict())
        tracker.log_results(config, results, output)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
