"""`finlora serve` started for real (uvicorn in a subprocess on 127.0.0.1), driven over HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from finlora.cli import main
from finlora.predictor import Predictor

MAX_BATCH = 8
MAX_BODY = 4096


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(exported_dir, tmp_path_factory):
    """Yields (base_url, log_path); the server is stopped and must exit cleanly."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("serve") / "server.log"
    env = {**os.environ, "FINLORA_MAX_BODY_BYTES": str(MAX_BODY)}  # env settings are read too
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "finlora", "serve", "--model", str(exported_dir),
             "--backend", "onnx", "--threads", "1", "--port", str(port),
             "--max_batch", str(MAX_BATCH)],
            stdout=log_file, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.25)
        try:
            yield base, log_path
        finally:
            process.terminate()  # uvicorn shuts down gracefully, then re-raises SIGTERM
            assert process.wait(timeout=30) in (0, -signal.SIGTERM), log_path.read_text()
            assert "Application shutdown complete" in log_path.read_text()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server[0], timeout=30) as c:
        yield c


def test_predict_returns_labels_probabilities_and_truncation(client, exported_dir):
    texts = ["Operating profit fell to EUR 2.1 mn.", "Sales rose. " * 100]
    response = client.post("/v1/predict", json={"texts": texts})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    expected = Predictor.load(exported_dir, backend="onnx", precision="int8").predict(texts)
    assert predictions == expected
    assert [p["truncated"] for p in predictions] == [False, True]
    assert set(predictions[0]["probabilities"]) == {"negative", "neutral", "positive"}


def test_request_id_is_echoed_and_logged(client, server):
    response = client.post(
        "/v1/predict", json={"texts": ["Profit rose."]}, headers={"X-Request-ID": "trace-42.a"}
    )
    assert response.headers["x-request-id"] == "trace-42.a"
    generated = client.get("/healthz").headers["x-request-id"]
    assert len(generated) == 32
    expected = ("[trace-42.a] POST /v1/predict 200", f"[{generated}] GET /healthz 200")
    deadline = time.monotonic() + 10  # the access log is written after the response is sent
    while not all(line in server[1].read_text() for line in expected):
        assert time.monotonic() < deadline, server[1].read_text()[-2000:]
        time.sleep(0.1)


BAD_REQUESTS = {
    "malformed JSON": (b'{"texts": ["a"', "application/json", 400, "malformed JSON"),
    "not UTF-8": (b'{"texts": ["caf\xe9"]}', "application/json", 400, "not valid UTF-8"),
    "empty body": (b"", "application/json", 400, "empty request body"),
    "texts not a list": (b'{"texts": "abc"}', "application/json", 422, "valid list"),
    "number in texts": (b'{"texts": ["a", 3]}', "application/json", 422, "texts.1"),
    "null in texts": (b'{"texts": [null]}', "application/json", 422, "texts.0"),
    "texts missing": (b'{"text": ["a"]}', "application/json", 422, "texts: Field required"),
    "body not an object": (b'["a"]', "application/json", 422, "valid dictionary"),
    "empty list": (b'{"texts": []}', "application/json", 422, "at least 1 item"),
    "empty string": (b'{"texts": ["ok", ""]}', "application/json", 422, "index 1"),
    "blank string": (b'{"texts": ["   "]}', "application/json", 422, "empty or blank"),
    "too many texts": (
        json.dumps({"texts": ["a"] * (MAX_BATCH + 1)}).encode(),
        "application/json",
        422,
        f"the limit is {MAX_BATCH}",
    ),
    "body over the limit": (
        json.dumps({"texts": ["word " * 1000]}).encode(),
        "application/json",
        413,
        f"larger than {MAX_BODY} bytes",
    ),
    "form content type": (b"texts=a", "application/x-www-form-urlencoded", 415, "not JSON"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_input_is_a_4xx_with_a_clear_message(client, case):
    body, content_type, status, message = BAD_REQUESTS[case]
    response = client.post("/v1/predict", content=body, headers={"content-type": content_type})
    assert response.status_code == status, response.text
    payload = response.json()
    assert message in payload["detail"]
    assert payload["request_id"] == response.headers["x-request-id"]


def test_body_over_the_limit_without_content_length_is_413(client):
    """Chunked transfer: the limit is enforced while reading, not only from the header."""

    def chunks():
        for _ in range(10):
            yield b'{"texts": ["' + b"a" * 1000 if _ == 0 else b"a" * 1000

    response = client.post(
        "/v1/predict", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413, response.text


def test_unknown_route_and_wrong_method_are_4xx(client):
    assert client.get("/v1/nothing").status_code == 404
    assert client.get("/v1/predict").status_code == 405


def test_a_burst_of_concurrent_requests_has_zero_errors(server, exported_dir):
    texts = [f"Quarterly sales changed by {i} percent versus last year." for i in range(48)]
    texts += ["Profit fell sharply. " * (i % 7 + 1) for i in range(48)]
    expected = Predictor.load(exported_dir, backend="onnx", precision="int8").predict(texts)

    async def burst():
        limits = httpx.Limits(max_connections=16)
        async with httpx.AsyncClient(base_url=server[0], timeout=60, limits=limits) as c:
            requests = [c.post("/v1/predict", json={"texts": [t]}) for t in texts]
            requests += [c.post("/v1/predict", json={"texts": texts[i : i + 4]}) for i in (0, 50)]
            return await asyncio.gather(*requests)

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * len(responses)
    got = [r.json()["predictions"][0] for r in responses[: len(texts)]]
    # Batched with strangers, still the same answer. Dynamic int8 quantizes each batch's
    # activations with one scale, so co-batched texts can move a probability by ~1e-4.
    for g, e in zip(got, expected):
        assert g["label"] == e["label"] and g["truncated"] == e["truncated"]
        for name, p in e["probabilities"].items():
            assert abs(g["probabilities"][name] - p) < 1e-3
    assert [p["label"] for p in responses[-1].json()["predictions"]] == [
        e["label"] for e in expected[50:54]
    ]


def test_health_readiness_and_model_info(client, exported_dir):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    info = client.get("/v1/model").json()
    export = json.loads((exported_dir / "onnx" / "export.json").read_text())
    results = json.loads((exported_dir / "final_results.json").read_text())
    assert info["labels"] == ["negative", "neutral", "positive"]
    assert (info["backend"], info["precision"], info["threads"]) == ("onnx", "int8", 1)
    assert info["strategy"] == "lora" and info["base_model"] == results["base_model"]
    assert info["test"]["macro_f1"] == results["test"]["macro_f1"]
    assert info["export"]["files"] == {n: f["sha256"] for n, f in export["files"].items()}
    assert info["max_batch"] == MAX_BATCH


def test_metrics_count_requests_errors_and_latency(client):
    client.post("/v1/predict", json={"texts": []})
    client.post("/v1/predict", json={"texts": ["Profit rose."]})
    text = client.get("/metrics").text
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    ok = 'finlora_http_requests_total{method="POST",route="/v1/predict",status="200"}'
    assert samples[ok] >= 1
    assert samples['finlora_http_errors_total{route="/v1/predict",status="422"}'] >= 1
    assert samples['finlora_http_request_duration_seconds_count{route="/v1/predict"}'] >= 2
    assert samples["finlora_model_ready"] == 1
    assert samples["finlora_inference_batch_texts_count"] >= 1


def test_serve_refuses_bad_settings_before_starting(trained_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FINLORA_MODEL_DIR", raising=False)
    assert main(["serve"]) == 2
    assert "FINLORA_MODEL_DIR" in capsys.readouterr().err
    bare = tmp_path / "bare"
    bare.mkdir()
    assert main(["serve", "--model", str(bare), "--backend", "onnx"]) == 2
    assert "finlora export" in capsys.readouterr().err
    assert main(["serve", "--model", str(trained_dir), "--threads", "0"]) == 2
    err = capsys.readouterr().err
    assert "threads: Input should be greater than or equal to 1" in err
    assert "FINLORA_MODEL_DIR" not in err


def test_serve_on_a_port_in_use_is_one_line(trained_dir, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["serve", "--model", str(trained_dir), "--backend", "torch", "--port", str(port)]
        assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"cannot listen on 127.0.0.1:{port} (Address already in use); pick "
                        "another --port or --host")  # fmt: skip
