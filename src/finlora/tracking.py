"""MLflow tracking: one run per training, nested under a parent run when one is active.

Logged: the resolved config as params; tags (git commit, data sha256, base model, strategy);
per-epoch train loss and validation metrics (a `TrainerCallback`); final validation and test
metrics; `final_results.json`, the resolved config and the model card as artifacts; and the
merged model as an MLflow pyfunc model (optionally registered) whose `predict` returns labels.
MLflow is imported only when tracking is on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

from transformers import TrainerCallback

from finlora.artifacts import MODEL_CARD, RESOLVED_CONFIG, RESULTS
from finlora.config import TrainConfig
from finlora.errors import FinloraError
from finlora.results import FinalResults, MultiLabelMetrics, SplitMetrics

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"
MODEL_NAME = "model"
# What the logged pyfunc model needs at load time (pinned to the versions that trained it).
MODEL_REQUIREMENTS = (
    "torch", "transformers", "safetensors", "tokenizers", "numpy", "pandas", "pyyaml", "mlflow",
)  # fmt: skip


def tracking_uri(config: TrainConfig) -> str:
    return config.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def git_commit() -> str | None:
    """The commit of the finlora source in use, when it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def config_params(config: TrainConfig) -> dict[str, str]:
    params = {}
    for key, value in config.to_dict().items():
        params[key] = ",".join(value) if isinstance(value, list) else str(value)
    return params


def metric_block(prefix: str, block: SplitMetrics | None) -> dict[str, float]:
    """`test_macro_f1`, `test_accuracy`, `test_weighted_f1`, `test_f1_<class>` from a report;
    multi-label: `test_macro_f1`, `test_micro_f1`, `test_subset_accuracy`, `test_f1_<label>`."""
    if not block:
        return {}
    if isinstance(block, MultiLabelMetrics):
        scores = {"macro_f1": block.macro_f1, "micro_f1": block.micro_f1,
                  "subset_accuracy": block.subset_accuracy}  # fmt: skip
        rows = block.per_label
    else:
        scores = {"macro_f1": block.macro_f1, "accuracy": block.accuracy,
                  "weighted_f1": block.weighted_f1}  # fmt: skip
        rows = block.per_class
    out = {f"{prefix}_{k}": v for k, v in scores.items()}
    out.update({f"{prefix}_f1_{name}": row.f1 for name, row in rows.items()})
    return out


class MlflowEpochLogger(TrainerCallback):
    """Per-epoch train loss and validation metrics, with the epoch number as the step."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id

    def on_log(self, args, state, control, logs=None, **kwargs):
        import mlflow

        logs = logs or {}
        step = round(state.epoch or 0)
        metrics = {}
        if "loss" in logs:
            metrics["train_loss"] = logs["loss"]
        for key, value in logs.items():
            if key.startswith("eval_") and isinstance(value, int | float):
                metrics["validation_" + key[len("eval_") :]] = value
        if metrics:
            mlflow.log_metrics(metrics, step=step, run_id=self.run_id)


class MlflowTracker:
    """The active run of one training: start facts, epoch callback, end-of-run results."""

    def __init__(self, run) -> None:
        self.run = run
        self.run_id = run.info.run_id
        self.callback = MlflowEpochLogger(self.run_id)
        self.model_uri: str | None = None

    def log_start(self, config: TrainConfig, data_info: dict) -> None:
        import mlflow

        mlflow.log_params(config_params(config), run_id=self.run_id)
        tags = {
            "base_model": config.model_name,
            "strategy": "lora" if config.use_lora else "full",
            "data_source": str(data_info.get("source")),
            "data_sha256": data_info.get("files", {}).get("train", {}).get("sha256", ""),
        }
        commit = git_commit()
        if commit:
            tags["git_commit"] = commit
            tags["mlflow.source.git.commit"] = commit
        mlflow.set_tags(tags)

    def log_results(self, config: TrainConfig, results: FinalResults, output_dir: Path) -> str:
        """Final metrics, artifacts, and the pyfunc model; returns the model's URI."""
        import mlflow

        metrics = {**metric_block("test", results.test)}
        metrics.update(metric_block("final_validation", results.validation))
        metrics.update(
            train_seconds=results.train_seconds,
            trainable_params=results.trainable_params,
            peak_memory_mb=results.peak_memory_mb,
        )
        mlflow.log_metrics(metrics, run_id=self.run_id)
        if results.best_epoch is not None:
            mlflow.set_tag("best_epoch", str(results.best_epoch))
        for name in (
            RESULTS,
            RESOLVED_CONFIG,
            MODEL_CARD,
            *sorted(p.name for p in output_dir.glob("*.png")),
        ):
            if (output_dir / name).is_file():
                mlflow.log_artifact(str(output_dir / name), run_id=self.run_id)
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            python_model=str(Path(__file__).with_name("mlflow_pyfunc.py")),
            artifacts={"model_dir": str(output_dir)},
            code_paths=[str(Path(__file__).parent)],
            pip_requirements=pinned_requirements(),
            registered_model_name=config.register_model,
        )
        self.model_uri = info.model_uri
        log.info("MLflow run %s: model %s", self.run_id, info.model_uri)
        if config.register_model:
            log.info(
                "registered %s version %s", config.register_model, info.registered_model_version
            )
        return info.model_uri


def pinned_requirements() -> list[str]:
    out = []
    for name in MODEL_REQUIREMENTS:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out.append(f"{name}=={metadata.version(name)}")
    return out


def check_server_answers(uri: str, timeout: float = 10.0) -> None:
    """A tracking server that is down fails now, in seconds: MLflow's own client retries
    with back-off for minutes before it gives up."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=timeout)
    except requests.exceptions.SSLError:
        return  # it answers; MLflow's client has its own TLS settings (MLFLOW_TRACKING_*)
    except (requests.ConnectionError, requests.Timeout) as exc:
        reason = type(exc).__name__
        raise FinloraError(
            f"MLflow tracking server {uri} does not answer ({reason}); start it, or fix "
            "--tracking_uri / MLFLOW_TRACKING_URI"
        ) from exc


@contextlib.contextmanager
def mlflow_run(
    config: TrainConfig, run_name: str | None = None, tags: dict[str, str] | None = None
) -> Iterator[MlflowTracker]:
    """Start a run in the configured store; nested under the active run if there is one.

    Use it directly as a parent run (e.g. `compare`): trainings started inside it become
    its children. A run that raises is marked FAILED.
    """
    try:
        import mlflow
    except ImportError as exc:
        raise FinloraError("--mlflow needs MLflow: pip install 'finlora[cloud]'") from exc

    uri = tracking_uri(config)
    mlflow.set_tracking_uri(uri)
    try:
        mlflow.set_experiment(config.experiment_name)
    except mlflow.exceptions.MlflowException as exc:
        raise FinloraError(
            f"cannot use MLflow at {uri}: {str(exc).splitlines()[0]}; check --tracking_uri"
        ) from exc
    nested = mlflow.active_run() is not None
    with mlflow.start_run(run_name=run_name or config.run_name, nested=nested, tags=tags) as run:
        log.info(
            "MLflow run %s in %s (experiment %s)", run.info.run_id, uri, config.experiment_name
        )
        yield MlflowTracker(run)
