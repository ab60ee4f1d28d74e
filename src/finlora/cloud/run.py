"""`finlora train` with remote locations: S3 inputs and outputs, SageMaker, MLflow.

`train()` only sees local paths. This layer resolves where things really live, stages them
in a temporary directory, and publishes the finished output (S3 upload with `_SUCCESS`, or a
copy into SageMaker's model directory). The resolved config written with the artifacts keeps
the original locations (the s3:// URIs), not the temporary copies.
"""

from __future__ import annotations

import contextlib
import logging
import posixpath
import tempfile
from dataclasses import replace
from pathlib import Path

from transformers import TrainerCallback

from finlora.cloud import sagemaker
from finlora.cloud.s3 import S3Uri, is_s3_uri
from finlora.config import DEFAULT_DATASET, TrainConfig
from finlora.data import prepare_data
from finlora.data.sources import PHRASEBANK_DIR, PHRASEBANK_FILES

log = logging.getLogger(__name__)

INPUT_FIELDS = ("data", "validation_data", "test_data")


def apply_s3_prefix(config: TrainConfig) -> TrainConfig:
    """`--use_s3 --s3_bucket B --s3_key K`: relative locations live under s3://B/K/.

    Relative `--data`, `--validation_data`, `--test_data`, `--output_dir` and
    `--checkpoint_dir` are keys under the prefix; without `--data` the prefix plays the role
    of the datasets folder (s3://B/K/FinancialPhraseBank-v1.0/...). Absolute local paths and
    full s3:// URIs are left alone.
    """
    if not config.use_s3:
        return config
    base = S3Uri(config.s3_bucket, (config.s3_key or "").strip("/"))

    def under(path: str | None) -> str | None:
        if path is None or is_s3_uri(path) or Path(path).is_absolute():
            return path
        return str(base.child(posixpath.normpath(path)))

    changes = {name: under(getattr(config, name)) for name in INPUT_FIELDS}
    changes["output_dir"] = under(config.output_dir)
    changes["checkpoint_dir"] = under(config.checkpoint_dir)
    if not config.data and not config.data_dir:
        changes["data_dir"] = str(base)
    return replace(config, **changes)


def remote_dataset_uri(config: TrainConfig) -> str | None:
    """The s3:// URI of a named dataset when the datasets folder is on S3."""
    if config.data or not is_s3_uri(config.data_dir):
        return None
    name = config.dataset or DEFAULT_DATASET
    if name not in PHRASEBANK_FILES:
        return None  # resolve_named_dataset gives the error listing the names
    return str(S3Uri.parse(config.data_dir).child(f"{PHRASEBANK_DIR}/{PHRASEBANK_FILES[name]}"))


def localize_inputs(config: TrainConfig, folder: Path) -> tuple[TrainConfig, dict[str, str]]:
    """Download s3:// inputs; return the config with local paths and a local -> URI map."""
    from finlora.cloud.s3 import download_file

    changes: dict[str, str | None] = {}
    dataset_uri = remote_dataset_uri(config)
    if dataset_uri:
        changes.update(data=dataset_uri, dataset=None, data_dir=None)
    origins: dict[str, str] = {}
    for index, name in enumerate(INPUT_FIELDS):
        uri = changes.get(name) or getattr(config, name)
        if is_s3_uri(uri):
            local = download_file(uri, folder / str(index), config.s3_endpoint_url)
            changes[name] = str(local)
            origins[str(local)] = uri
    return (replace(config, **changes) if changes else config), origins


def relabel_sources(info: dict, origins: dict[str, str], dataset: str | None) -> None:
    """Report the data's real location (its s3:// URI) instead of the temporary copy."""
    info["source"] = origins.get(info.get("source"), info.get("source"))
    for block in info.get("files", {}).values():
        block["path"] = origins.get(block.get("path"), block.get("path"))
    if dataset:
        info["dataset"] = dataset


class PushCheckpoints(TrainerCallback):
    """Mirror each complete local checkpoint to S3 and drop the ones the Trainer rotated out."""

    def __init__(self, local_dir: Path, uri: str, endpoint_url: str | None) -> None:
        self.local_dir = local_dir
        self.uri = S3Uri.parse(uri)
        self.endpoint_url = endpoint_url

    def on_save(self, args, state, control, **kwargs):
        from finlora.checkpoints import CHECKPOINT_RUN
        from finlora.cloud import s3

        name = f"checkpoint-{state.global_step}"
        s3.upload_dir(self.local_dir / name, str(self.uri.child(name)), self.endpoint_url)
        s3.upload_file(
            self.local_dir / CHECKPOINT_RUN, str(self.uri.child(CHECKPOINT_RUN)), self.endpoint_url
        )
        for remote in s3.subdirs(str(self.uri), self.endpoint_url):
            if remote.startswith("checkpoint-") and not (self.local_dir / remote).is_dir():
                s3.delete_prefix(str(self.uri.child(remote)), self.endpoint_url)


def pull_checkpoints(uri: str, local_dir: Path, endpoint_url: str | None) -> None:
    """Download the complete checkpoints (and the run fingerprint) kept under an S3 prefix."""
    from finlora.checkpoints import CHECKPOINT_RUN
    from finlora.cloud import s3

    base = S3Uri.parse(uri)
    for name in s3.subdirs(uri, endpoint_url, complete_only=True):
        log.info("fetching %s", base.child(name))
        s3.download_dir(str(base.child(name)), local_dir / name, endpoint_url)
    if s3.exists(str(base.child(CHECKPOINT_RUN)), endpoint_url):
        s3.download_file(str(base.child(CHECKPOINT_RUN)), local_dir, endpoint_url)


def run_train(config: TrainConfig) -> tuple[dict | None, TrainConfig]:
    """Train wherever the config's locations point; returns the results and the final config.

    The results are `final_results.json`'s content as a dict (`FinalResults.to_dict()`), plus
    `mlflow` (run id, model URI) for a tracked run. Under a distributed launcher only rank 0
    tracks, syncs checkpoints and publishes; the other ranks get None as results.
    """
    from finlora.distributed import is_main_process
    from finlora.training import train

    main_process = is_main_process()

    config = apply_s3_prefix(config)
    container = sagemaker.detect()
    if container is not None:
        config = sagemaker.container_config(config, container)
    remote_output = is_s3_uri(config.output_dir) or container is not None
    if main_process:
        check_destinations(config)
    with tempfile.TemporaryDirectory(prefix="finlora-run-") as tmp:
        tmp = Path(tmp)
        local, origins = localize_inputs(config, tmp / "inputs")
        data = prepare_data(local)
        dataset = None if config.data else (config.dataset or DEFAULT_DATASET)
        relabel_sources(data.info, origins, dataset)
        output_dir = tmp / "output" / "model" if remote_output else Path(config.output_dir)

        callbacks: list[TrainerCallback] = []
        checkpoint_dir = config.checkpoint_dir
        if is_s3_uri(checkpoint_dir):
            checkpoint_dir = tmp / "checkpoints"
            checkpoint_dir.mkdir()
            pull_checkpoints(config.checkpoint_dir, checkpoint_dir, config.s3_endpoint_url)
            if main_process:
                callbacks.append(
                    PushCheckpoints(checkpoint_dir, config.checkpoint_dir, config.s3_endpoint_url)
                )

        with tracked(config if main_process else None) as tracker:
            if tracker is not None:
                tracker.log_start(config, data.info)
                callbacks.append(tracker.callback)
            results = train(
                config,
                data,
                output_dir=output_dir,
                checkpoint_dir=checkpoint_dir,
                callbacks=callbacks,
            )
            if results is None:
                return None, config
            payload = results.to_dict()
            if tracker is not None:
                payload["mlflow"] = {
                    "run_id": tracker.run_id,
                    "model_uri": tracker.log_results(config, results, output_dir),
                }
        publish(output_dir, config, container)
    return payload, config


def check_destinations(config: TrainConfig) -> None:
    """Fail in seconds, before any download or training, if an s3:// output or checkpoint
    location cannot be written (no credentials, no bucket, no endpoint, no permission) or
    the MLflow tracking server does not answer."""
    from finlora.cloud.s3 import check_writable

    if is_s3_uri(config.output_dir):  # uploads are staged beside the prefix
        check_writable(config.output_dir, config.s3_endpoint_url, inside=False)
    if is_s3_uri(config.checkpoint_dir):  # checkpoints are written under it
        check_writable(config.checkpoint_dir, config.s3_endpoint_url, inside=True)
    if config.tracks_mlflow:
        from finlora.tracking import check_server_answers, tracking_uri

        check_server_answers(tracking_uri(config))


@contextlib.contextmanager
def tracked(config: TrainConfig | None):
    if config is None or not config.tracks_mlflow:
        yield None
        return
    from finlora.tracking import mlflow_run

    with mlflow_run(config) as tracker:
        yield tracker


def publish(output_dir: Path, config: TrainConfig, container) -> None:
    if is_s3_uri(config.output_dir):
        from finlora.cloud.s3 import upload_dir

        upload_dir(output_dir, config.output_dir, config.s3_endpoint_url)
    elif container is not None:
        sagemaker.publish(output_dir, container)
