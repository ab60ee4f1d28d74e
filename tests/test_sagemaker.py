"""SageMaker: the entry point in a simulated container, and the launcher's request."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import botocore.session
import pytest
from botocore.exceptions import ParamValidationError
from botocore.validate import validate_parameters
from servers import FAKE_AWS, moto

from finlora.cli import main

ROLE = "arn:aws:iam::123456789012:role/FinloraSageMaker"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/finlora:0.1.0"


def container(tmp_path: Path, phrasebank_slice: Path, hyperparameters: dict) -> dict[str, str]:
    """/opt/ml laid out under tmp_path, as the SageMaker training toolkit describes it."""
    root = tmp_path / "opt_ml"
    dirs = {
        "SM_INPUT_CONFIG_DIR": root / "input/config",
        "SM_CHANNEL_TRAIN": root / "input/data/train",
        "SM_CHANNEL_TEST": root / "input/data/test",
        "SM_MODEL_DIR": root / "model",
        "SM_OUTPUT_DIR": root / "output",
        "SM_OUTPUT_DATA_DIR": root / "output/data",
    }
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    lines = phrasebank_slice.read_text(encoding="iso-8859-1").splitlines()
    (dirs["SM_CHANNEL_TRAIN"] / "train.txt").write_text(
        "\n".join(lines[::2]) + "\n", encoding="iso-8859-1"
    )
    (dirs["SM_CHANNEL_TEST"] / "test.txt").write_text(
        "\n".join(lines[1::4]) + "\n", encoding="iso-8859-1"
    )
    # The SageMaker Python SDK JSON-encodes every value as a string; sagemaker_* are its own.
    encoded = {k: json.dumps(v) for k, v in hyperparameters.items()}
    encoded["sagemaker_region"] = '"us-east-1"'
    (dirs["SM_INPUT_CONFIG_DIR"] / "hyperparameters.json").write_text(json.dumps(encoded))
    return {name: str(path) for name, path in dirs.items()}


@pytest.mark.slow  # a real `finlora train` process
def test_entry_point_runs_unchanged_in_a_container_layout(
    tmp_path, tiny_model_dir, phrasebank_slice
):
    hyperparameters = {"model_name": str(tiny_model_dir), "epochs": 1, "max_length": 32}
    env = container(tmp_path, phrasebank_slice, hyperparameters)
    done = subprocess.run(
        [sys.executable, "-m", "finlora", "train", "--batch_size", "32"],
        env={**os.environ, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    model_dir, reports = Path(env["SM_MODEL_DIR"]), Path(env["SM_OUTPUT_DATA_DIR"])
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "config.json").is_file()
    results = json.loads((reports / "final_results.json").read_text())
    files = results["data"]["files"]
    assert files["train"]["path"] == str(Path(env["SM_CHANNEL_TRAIN"]) / "train.txt")
    assert files["test"]["path"] == str(Path(env["SM_CHANNEL_TEST"]) / "test.txt")
    assert results["test"]["size"] == 75
    saved = (reports / "finlora_config.yaml").read_text()
    assert "max_length: 32" in saved and "batch_size: 32" in saved
    assert not (Path(env["SM_OUTPUT_DIR"]) / "failure").exists()
    assert not (tmp_path / "outputs").exists()


def test_failure_reason_is_written_for_sagemaker(tmp_path, phrasebank_slice, monkeypatch):
    env = container(tmp_path, phrasebank_slice, {"epochs": -1})
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(["train"]) == 2
    failure = (Path(env["SM_OUTPUT_DIR"]) / "failure").read_text()
    assert failure == "--epochs must be positive, got -1.0\n"

    (Path(env["SM_INPUT_CONFIG_DIR"]) / "hyperparameters.json").write_text('{"epoch": "3"}')
    assert main(["train"]) == 2
    assert "unknown hyperparameter(s) epoch" in (Path(env["SM_OUTPUT_DIR"]) / "failure").read_text()


def launch_args(*extra: str) -> list[str]:
    return ["sagemaker", "launch", "--s3_data", "s3://my-bucket/phrasebank/",
            "--s3_test", "s3://my-bucket/phrasebank-test/", "--role", ROLE,
            "--image_uri", IMAGE, "--instance_type", "ml.g4dn.xlarge",
            "--job_name", "finlora-test-1", *extra]  # fmt: skip


def test_dry_run_prints_a_valid_spot_request(capsys):
    args = launch_args("--spot", "--max_run", "3600", "--dry_run")
    assert main([*args, "--config", "config/phrasebank_lora.yaml", "--", "--epochs", "3"]) == 0
    request = json.loads(capsys.readouterr().out)
    shape = botocore.session.get_session().get_service_model("sagemaker")
    validate_parameters(request, shape.operation_model("CreateTrainingJob").input_shape)
    assert request["EnableManagedSpotTraining"] is True
    assert request["StoppingCondition"] == {
        "MaxRuntimeInSeconds": 3600,
        "MaxWaitTimeInSeconds": 7200,
    }
    assert request["CheckpointConfig"] == {
        "S3Uri": "s3://my-bucket/finlora/jobs/finlora-test-1/checkpoints",
        "LocalPath": "/opt/ml/checkpoints",
    }
    assert [c["ChannelName"] for c in request["InputDataConfig"]] == ["train", "test"]
    hp = request["HyperParameters"]
    assert hp["epochs"] == "3.0" and hp["dataset"] == "phrasebank_allagree"  # flag, recipe
    assert "use_lora" not in hp  # equal to the default: not sent
    with pytest.raises(ParamValidationError):  # the check the launcher relies on can fail
        validate_parameters({**request, "RoleArn": "arn:x"}, shape.operation_model(
            "CreateTrainingJob").input_shape)  # fmt: skip


def test_launcher_rejects_bad_requests_in_one_line(capsys):
    assert main(launch_args("--role", "arn:x", "--dry_run")) == 2
    assert "invalid training job request" in capsys.readouterr().err
    assert main([*launch_args("--dry_run"), "--", "--epochs", "zero"]) == 2
    assert "epochs: cannot read 'zero'" in capsys.readouterr().err


def test_launch_submits_to_a_sagemaker_compatible_server(tmp_path, monkeypatch, capsys):
    with moto(tmp_path) as endpoint:
        for key, value in FAKE_AWS.items():
            monkeypatch.setenv(key, value)
        args = launch_args("--spot", "--endpoint_url", endpoint, "--region", "us-east-1")
        assert main([*args, "--", "--epochs", "2", "--no_lora"]) == 0
        submitted = json.loads(capsys.readouterr().out)
        sm = boto3.client("sagemaker", endpoint_url=endpoint)
        job = sm.describe_training_job(TrainingJobName="finlora-test-1")
    assert submitted["TrainingJobArn"] == job["TrainingJobArn"]
    assert job["HyperParameters"] == {"epochs": "2.0", "use_lora": "false"}  # lr follows use_lora
    assert job["AlgorithmSpecification"]["TrainingImage"] == IMAGE
