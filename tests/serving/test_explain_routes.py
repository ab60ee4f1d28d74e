"""`finlora predict --explain` and `POST /v1/explain` on the tiny trained model."""

from __future__ import annotations

import json
import shutil

import pytest
from fastapi.testclient import TestClient

from finlora.cli import main
from finlora.serve.app import create_app
from finlora.serve.settings import ServeSettings

TEXTS = ["Net loss widened to EUR 5.2 mn from EUR 1.1 mn .", "Sales rose 10 % ."]
KEY = "k" * 24


def check_record(record: dict, text: str) -> None:
    assert {"label", "probability", "attributions"} <= set(record)
    assert 0 <= record["probability"] <= 1
    for a in record["attributions"]:
        assert set(a) == {"word", "start", "end", "score"}
        assert text[a["start"] : a["end"]] == a["word"]
    assert sum(abs(a["score"]) for a in record["attributions"]) == pytest.approx(1, abs=1e-3)


def test_predict_explain_prints_attributions_and_writes_html(exported_dir, tmp_path, capsys):
    page = tmp_path / "why.html"
    # --explain before the texts: a switch, it takes no value; ONNX exported, torch runs.
    code = main(["-q", "predict", "--model", str(exported_dir), "--explain",
                 "--explain_html", str(page), *TEXTS])  # fmt: skip
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    for line, text in zip(lines, TEXTS):
        record = json.loads(line)
        check_record(record, text)
        assert record["probability"] == pytest.approx(
            record["probabilities"][record["label"]], abs=1e-6
        )
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>") and html.count('class="text"') == 2
    assert 'title="' in html and "EUR" in html


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--explain", "--backend", "onnx", "x"], "--explain runs the torch model"),
        (["--explain_html", "a.html", "x"], "--explain_html FILE goes with --explain"),
        (["--explain", "--input", "f.csv"], "--explain explains texts given"),
    ],
)
def test_predict_explain_refusals(exported_dir, capsys, argv, message):
    assert main(["predict", "--model", str(exported_dir), *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def onnx_client(exported_dir):
    settings = ServeSettings(model_dir=exported_dir, backend="onnx", threads=1, max_batch=4)
    with TestClient(create_app(settings, api_keys=[KEY])) as client:
        yield client


def test_explain_route_loads_torch_behind_onnx(onnx_client):
    headers = {"Authorization": f"Bearer {KEY}"}
    assert onnx_client.post("/v1/explain", json={"texts": TEXTS}).status_code == 401
    response = onnx_client.post("/v1/explain", json={"texts": TEXTS}, headers=headers)
    assert response.status_code == 200, response.text
    explanations = response.json()["explanations"]
    assert len(explanations) == 2
    for record, text in zip(explanations, TEXTS):
        check_record(record, text)
    predicted = onnx_client.post("/v1/predict", json={"texts": TEXTS}, headers=headers).json()
    assert [p["label"] for p in predicted["predictions"]] == [e["label"] for e in explanations]
    too_many = onnx_client.post("/v1/explain", json={"texts": ["a"] * 5}, headers=headers)
    assert too_many.status_code == 422 and "limit is 4" in too_many.json()["detail"]
    blank = onnx_client.post("/v1/explain", json={"texts": [" "]}, headers=headers)
    assert blank.status_code == 422
    metrics = onnx_client.get("/metrics", headers=headers).text
    assert 'route="/v1/explain"' in metrics
    assert "/v1/explain" in onnx_client.get("/openapi.json", headers=headers).json()["paths"]


def test_explain_route_bounds_its_hold_on_the_inference_thread(exported_dir):
    """At most max_explain_texts per request, and one explanation at a time: a second one
    gets 503 with Retry-After at once instead of queueing behind it."""
    settings = ServeSettings(model_dir=exported_dir, threads=1, max_explain_texts=1)
    headers = {"Authorization": f"Bearer {KEY}"}
    with TestClient(create_app(settings, api_keys=[KEY])) as client:
        too_many = client.post("/v1/explain", json={"texts": TEXTS}, headers=headers)
        assert too_many.status_code == 422 and "max_explain_texts" in too_many.json()["detail"]
        client.app.state.explaining = True  # as while another request's explanation runs
        busy = client.post("/v1/explain", json={"texts": TEXTS[:1]}, headers=headers)
        assert busy.status_code == 503 and busy.headers["Retry-After"]
        client.app.state.explaining = False
        done = client.post("/v1/explain", json={"texts": TEXTS[:1]}, headers=headers)
        assert done.status_code == 200, done.text
        metrics = client.get("/metrics", headers=headers).text
        assert 'reason="explain_busy"' in metrics


def test_explain_route_without_torch_weights_is_409(exported_dir, tmp_path):
    onnx_only = tmp_path / "export"
    shutil.copytree(exported_dir / "onnx", onnx_only)
    settings = ServeSettings(model_dir=onnx_only, backend="onnx", threads=1)
    with TestClient(create_app(settings, api_keys=[])) as client:
        response = client.post("/v1/explain", json={"texts": TEXTS})
        assert response.status_code == 409
        assert "no torch weights" in response.json()["detail"]
        assert "\n" not in response.json()["detail"]
