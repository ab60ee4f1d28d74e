"""SageMaker: run `finlora train` inside a training container, and launch training jobs.

Inside a container (our Dockerfile, started by SageMaker as `finlora train`) the
hyperparameters come from /opt/ml/input/config/hyperparameters.json and/or command-line
flags (script mode); the data from the `train`, `validation` and `test` channels
(`SM_CHANNEL_<NAME>` or /opt/ml/input/data/<name>); the model directory goes to
`SM_MODEL_DIR`, the reports also to `SM_OUTPUT_DATA_DIR`; a failure writes its one-line
reason to /opt/ml/output/failure, which SageMaker shows as the job's FailureReason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from finlora.artifacts import MODEL_CARD, RESOLVED_CONFIG, RESULTS
from finlora.config import TrainConfig
from finlora.errors import FinloraError

OPT_ML = Path("/opt/ml")
CHANNELS = {"data": "train", "validation_data": "validation", "test_data": "test"}
CHECKPOINT_LOCAL_PATH = "/opt/ml/checkpoints"


@dataclass(frozen=True)
class Container:
    """The directories of a SageMaker training container (env vars override /opt/ml)."""

    input_config: Path
    model_dir: Path
    output_dir: Path
    output_data_dir: Path
    checkpoints: Path | None

    def channel(self, name: str) -> Path | None:
        path = Path(
            os.environ.get(f"SM_CHANNEL_{name.upper()}") or OPT_ML / "input" / "data" / name
        )
        return path if path.is_dir() else None


def detect() -> Container | None:
    """The container layout when running as a SageMaker training job, else None."""
    env = os.environ
    if "SM_MODEL_DIR" not in env and not (OPT_ML / "input/config/resourceconfig.json").is_file():
        return None
    checkpoints = Path(CHECKPOINT_LOCAL_PATH)
    return Container(
        input_config=Path(env.get("SM_INPUT_CONFIG_DIR") or OPT_ML / "input/config"),
        model_dir=Path(env.get("SM_MODEL_DIR") or OPT_ML / "model"),
        output_dir=Path(env.get("SM_OUTPUT_DIR") or OPT_ML / "output"),
        output_data_dir=Path(env.get("SM_OUTPUT_DATA_DIR") or OPT_ML / "output/data"),
        checkpoints=checkpoints if checkpoints.is_dir() else None,
    )


def hyperparameters(container: Container) -> dict[str, str]:
    """hyperparameters.json minus SageMaker's own `sagemaker_*` keys.

    Values are strings; the SageMaker Python SDK JSON-encodes them (`"\\"abc\\""`), so a value
    that parses as a JSON scalar is decoded.
    """
    path = container.input_config / "hyperparameters.json"
    if not path.is_file():
        return {}
    out = {}
    for key, value in json.loads(path.read_text()).items():
        if key.startswith("sagemaker_"):
            continue
        try:
            decoded = json.loads(value) if isinstance(value, str) else value
        except json.JSONDecodeError:
            decoded = value
        out[key] = decoded if isinstance(decoded, str | int | float | bool) else value
    return out


def _channel_file(container: Container, channel: str, wanted: str | None) -> Path | None:
    folder = container.channel(channel)
    if folder is None:
        return None
    if wanted and (folder / wanted).is_file():
        return folder / wanted
    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and not p.name.startswith((".", "_"))
    )
    if len(files) == 1:
        return files[0]
    names = ", ".join(str(p.relative_to(folder)) for p in files) or "nothing"
    raise FinloraError(
        f"SageMaker channel {channel!r} ({folder}) holds {names}; name the file with "
        f"--{next(k for k, v in CHANNELS.items() if v == channel)} FILE_NAME"
    )


def container_config(config: TrainConfig, container: Container) -> TrainConfig:
    """Data from the channels, artifacts to the model dir, checkpoints to /opt/ml/checkpoints."""
    changes: dict[str, Any] = {}
    for field_name, channel in CHANNELS.items():
        wanted = getattr(config, field_name)
        if wanted and (wanted.startswith("s3://") or Path(wanted).is_absolute()):
            continue
        found = _channel_file(container, channel, wanted)
        if found is not None:
            changes[field_name] = str(found)
            if field_name == "data":
                changes["dataset"] = None
    if not config.output_dir.startswith("s3://") and not Path(config.output_dir).is_absolute():
        changes["output_dir"] = str(container.model_dir)
    if config.checkpoint_dir is None and container.checkpoints is not None:
        changes["checkpoint_dir"] = str(container.checkpoints)
    return replace(config, **changes)


def publish(local_dir: Path, container: Container) -> None:
    """Copy the finished output into SM_MODEL_DIR (model.tar.gz) and reports to output/data."""
    container.model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(local_dir, container.model_dir, dirs_exist_ok=True)
    container.output_data_dir.mkdir(parents=True, exist_ok=True)
    for name in (RESULTS, RESOLVED_CONFIG, MODEL_CARD):
        if (local_dir / name).is_file():
            shutil.copy2(local_dir / name, container.output_data_dir / name)


def report_failure(message: str) -> None:
    """Write the failure reason where SageMaker reads it (no-op outside a container)."""
    container = detect()
    if container is None:
        return
    container.output_dir.mkdir(parents=True, exist_ok=True)
    (container.output_dir / "failure").write_text(message.splitlines()[0][:1000] + "\n")


# --------------------------------------------------------------------------- launching


def job_name(prefix: str = "finlora") -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


def hyperparameters_from(config: TrainConfig, explicit: dict[str, Any]) -> dict[str, str]:
    """The settings to send: those that differ from the defaults (flags and recipe alike).

    Defaults that follow the strategy (learning rate, epochs) are those of the same strategy.
    """
    defaults = TrainConfig(use_lora=config.use_lora).to_dict()
    out = {}
    for key, value in config.to_dict().items():
        if value == defaults[key] and key not in explicit:
            continue
        if isinstance(value, list):
            value = ",".join(value)
        out[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


def training_job_request(
    *,
    job: str,
    image_uri: str,
    role_arn: str,
    s3_data: str,
    output_s3: str,
    instance_type: str,
    hyperparameters: dict[str, str],
    s3_validation: str | None = None,
    s3_test: str | None = None,
    instance_count: int = 1,
    volume_gb: int = 30,
    max_run: int = 24 * 3600,
    spot: bool = False,
    max_wait: int | None = None,
    checkpoint_s3: str | None = None,
    tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The boto3 `create_training_job` request for one finlora training job."""
    if not re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", job):
        raise FinloraError(f"--job_name {job!r}: use 1-63 letters, digits and hyphens")
    for name, uri in (("--s3_data", s3_data), ("--output_s3", output_s3)):
        if not uri.startswith("s3://"):
            raise FinloraError(f"{name} must be an s3:// URI, got {uri!r}")

    def channel(name: str, uri: str) -> dict[str, Any]:
        return {
            "ChannelName": name,
            "DataSource": {
                "S3DataSource": {
                    "S3DataType": "S3Prefix",
                    "S3Uri": uri,
                    "S3DataDistributionType": "FullyReplicated",
                }
            },
            "InputMode": "File",
        }

    channels = [channel("train", s3_data)]
    channels += [channel("validation", s3_validation)] if s3_validation else []
    channels += [channel("test", s3_test)] if s3_test else []
    request: dict[str, Any] = {
        "TrainingJobName": job,
        "AlgorithmSpecification": {"TrainingImage": image_uri, "TrainingInputMode": "File"},
        "RoleArn": role_arn,
        "HyperParameters": hyperparameters,
        "InputDataConfig": channels,
        "OutputDataConfig": {"S3OutputPath": output_s3},
        "ResourceConfig": {
            "InstanceType": instance_type,
            "InstanceCount": instance_count,
            "VolumeSizeInGB": volume_gb,
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": max_run},
    }
    if tags:
        request["Tags"] = [{"Key": k, "Value": v} for k, v in tags.items()]
    if spot:
        wait = max_wait or 2 * max_run
        if wait < max_run:
            raise FinloraError("--max_wait must be at least --max_run for spot training")
        request["EnableManagedSpotTraining"] = True
        request["StoppingCondition"]["MaxWaitTimeInSeconds"] = wait
    if spot or checkpoint_s3:
        request["CheckpointConfig"] = {
            "S3Uri": checkpoint_s3 or f"{output_s3.rstrip('/')}/{job}/checkpoints",
            "LocalPath": CHECKPOINT_LOCAL_PATH,
        }
    validate_request(request)
    return request


def validate_request(request: dict[str, Any]) -> None:
    """Check the request against botocore's SageMaker service model (what the API accepts)."""
    import botocore.session
    from botocore.exceptions import ParamValidationError
    from botocore.validate import validate_parameters

    model = botocore.session.get_session().get_service_model("sagemaker")
    try:
        validate_parameters(request, model.operation_model("CreateTrainingJob").input_shape)
    except ParamValidationError as exc:
        first = str(exc).splitlines()
        raise FinloraError(
            f"invalid training job request: {' '.join(x.strip() for x in first)}"
        ) from exc


def submit(request: dict[str, Any], region: str | None, endpoint_url: str | None) -> str:
    """Create the training job; returns its ARN."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    sm = boto3.session.Session(region_name=region).client("sagemaker", endpoint_url=endpoint_url)
    try:
        return sm.create_training_job(**request)["TrainingJobArn"]
    except NoCredentialsError as exc:
        raise FinloraError(
            "no AWS credentials to launch the job: set AWS_PROFILE or AWS_ACCESS_KEY_ID/"
            "AWS_SECRET_ACCESS_KEY (and --region)"
        ) from exc
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise FinloraError(
            f"SageMaker rejected the training job: {error.get('Code')}: {error.get('Message')}"
        ) from exc
    except BotoCoreError as exc:
        raise FinloraError(f"cannot launch the training job: {exc}") from exc
