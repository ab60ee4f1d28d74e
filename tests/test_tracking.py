"""MLflow tracking, read back through MlflowClient from a real store and a real server."""

from __future__ import annotations

import json
import sys

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from servers import free_port, server

from finlora.cli import main
from finlora.config import TrainConfig
from finlora.tracking import mlflow_run

FAST = ["--max_length", "32", "--batch_size", "32", "--learning_rate", "0.001", "--no_lora"]
TEXTS = ["Operating profit rose to EUR 13.1 mn.", "The company filed for bankruptcy."]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """MLflow writes artifacts relative to the working directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield tmp_path
    mlflow.set_tracking_uri(None)


def train_tracked(data, model, output, *extra: str) -> dict:
    args = [
        "train",
        "--data",
        str(data),
        "--model_name",
        str(model),
        "--output_dir",
        str(output),
        "--epochs",
        "2",
        "--mlflow",
        *FAST,
        *extra,
    ]  # fmt: skip (later flags win)
    assert main(args) == 0
    return json.loads((output / "final_results.json").read_text())


@pytest.mark.slow  # a tracked training, a new SQLite store, the registry and a pyfunc load
def test_run_is_logged_to_a_local_sqlite_store(in_tmp, tiny_model_dir, phrasebank_slice, capsys):
    results = train_tracked(
        phrasebank_slice, tiny_model_dir, in_tmp / "out", "--register_model", "finlora-pb"
    )
    printed = json.loads(capsys.readouterr().out.splitlines()[-1])["mlflow"]
    assert (in_tmp / "mlruns.db").is_file()  # the default store, no server needed

    client = MlflowClient(tracking_uri="sqlite:///mlruns.db")
    run = client.get_run(printed["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == "2.0" and run.data.params["use_lora"] == "False"
    tags = run.data.tags
    assert tags["strategy"] == "full" and tags["base_model"] == str(tiny_model_dir)
    assert tags["data_sha256"] == results["data"]["files"]["train"]["sha256"]
    assert len(tags.get("git_commit", "x" * 40)) == 40
    assert run.data.metrics["test_macro_f1"] == pytest.approx(results["test"]["macro_f1"])

    losses = client.get_metric_history(run.info.run_id, "train_loss")
    f1s = client.get_metric_history(run.info.run_id, "validation_macro_f1")
    assert [m.step for m in losses] == [1, 2] and [m.step for m in f1s] == [1, 2]
    assert [m.value for m in f1s] == pytest.approx([h["macro_f1"] for h in results["history"]])

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"final_results.json", "finlora_config.yaml", "README.md"} <= artifacts

    versions = client.search_model_versions("name='finlora-pb'")
    assert [str(v.version) for v in versions] == ["1"]

    model = mlflow.pyfunc.load_model("models:/finlora-pb/1")
    from_list = model.predict(TEXTS)
    from_frame = model.predict(pd.DataFrame({"text": TEXTS}))
    assert list(from_list) == list(from_frame)
    assert set(from_list) <= set(results["labels"]) and len(from_list) == 2


def test_nested_runs_under_a_parent(in_tmp):
    config = TrainConfig(mlflow=True, tracking_uri="sqlite:///nested.db", experiment_name="cmp")
    with mlflow_run(config, run_name="compare") as parent:
        with mlflow_run(config, run_name="child") as child:
            pass
        with pytest.raises(RuntimeError), mlflow_run(config, run_name="broken") as broken:
            raise RuntimeError("training failed")
    client = MlflowClient(tracking_uri="sqlite:///nested.db")
    assert client.get_run(child.run_id).data.tags["mlflow.parentRunId"] == parent.run_id
    assert client.get_run(broken.run_id).info.status == "FAILED"
    assert client.get_run(parent.run_id).info.status == "FINISHED"


def test_a_tracking_server_that_is_down_fails_before_training(
    in_tmp, tiny_model_dir, phrasebank_slice, capsys
):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    args = ["train", "--data", str(phrasebank_slice), "--model_name", str(tiny_model_dir),
            "--output_dir", str(in_tmp / "out"), "--mlflow", "--tracking_uri", url,
            *FAST]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"MLflow tracking server {url} does not answer (ConnectionError)" in err
    assert not (in_tmp / "out").exists()


@pytest.mark.slow  # `mlflow server` migrates its SQLite store on start
def test_run_is_logged_to_an_mlflow_server(in_tmp, tiny_model_dir, phrasebank_slice):
    """Against `mlflow server` over HTTP: the run, its metrics, artifacts and model."""
    port = free_port()
    args = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
            "--port", str(port), "--backend-store-uri", f"sqlite:///{in_tmp / 'server.db'}",
            "--artifacts-destination", str(in_tmp / "server-artifacts"),
            "--workers", "1"]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    # Without the job runner (MLflow 3's LLM-judge and trace jobs, which finlora does not use):
    # it would start three more processes importing mlflow next to the server.
    no_jobs = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with server(args, f"{url}/health", in_tmp / "mlflow.log", env=no_jobs):
        train_tracked(
            phrasebank_slice, tiny_model_dir, in_tmp / "out", "--tracking_uri", url,
            "--experiment_name", "remote", "--run_name", "on-server", "--epochs", "1",
        )  # fmt: skip
        client = MlflowClient(tracking_uri=url)
        experiment = client.get_experiment_by_name("remote")
        [run] = client.search_runs([experiment.experiment_id])
        assert run.info.run_name == "on-server" and run.info.status == "FINISHED"
        assert "test_accuracy" in run.data.metrics and "train_loss" in run.data.metrics
        assert "final_results.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
        model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
        assert len(model.predict(TEXTS)) == 2
    assert not (in_tmp / "mlruns.db").exists()  # nothing went to the default local store
