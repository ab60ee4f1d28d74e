"""API keys, backpressure and draining, on the real app over a model-less FakePredictor."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager

import httpx
import pytest

from finlora.errors import FinloraError
from finlora.serve.auth import ENV_VAR, load_api_keys

KEY_A = "key-a-0123456789abcdefghij"
KEY_B = "key-b-9876543210zyxwvutsrq"
TEXT = {"texts": ["Profit rose."]}


@asynccontextmanager
async def running(app):
    """httpx over ASGI, inside the app's lifespan (model load, batcher start and stop)."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


# --- authentication ---------------------------------------------------------------------------


def test_keys_come_from_the_environment_and_the_file(tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# rotated 2026-12\n{KEY_B}  # new\n\n  {KEY_A}\n")
    env = {ENV_VAR: f" {KEY_A} ,,"}
    assert load_api_keys(keys_file, env) == [KEY_A, KEY_B]
    assert load_api_keys(None, {}) == []
    assert load_api_keys(None, {ENV_VAR: " , "}) == []


@pytest.mark.parametrize(
    "content, message",
    [("# only a comment\n", "has no keys"), ("short\n", "API key 1 is 5 characters")],
)
def test_bad_key_files_fail_without_echoing_a_key(tmp_path, content, message):
    keys_file = tmp_path / "keys"
    keys_file.write_text(content)
    with pytest.raises(FinloraError, match=message) as error:
        load_api_keys(keys_file, {})
    assert "short" not in str(error.value)
    with pytest.raises(FinloraError, match="cannot read"):
        load_api_keys(tmp_path / "missing", {})
    with pytest.raises(FinloraError, match="API key 2 has spaces"):
        load_api_keys(None, {ENV_VAR: f"{KEY_A},{KEY_B} x"})


def test_every_route_but_health_needs_a_valid_key(fake_service, caplog):
    app, _ = fake_service(api_keys=[KEY_A, KEY_B])

    async def calls():
        async with running(app) as client:
            out = {}
            for name, headers in {
                "none": {},
                "wrong": {"Authorization": "Bearer " + KEY_A[:-1] + "x"},
                "basic": {"Authorization": "Basic " + KEY_A},
                "a": {"Authorization": "Bearer " + KEY_A},
                "b": {"authorization": "bearer " + KEY_B},
            }.items():
                out[name] = {
                    "predict": await client.post("/v1/predict", json=TEXT, headers=headers),
                    "document": await client.post(
                        "/v1/classify-document", json={"text": " "}, headers=headers
                    ),
                    "model": await client.get("/v1/model", headers=headers),
                    "metrics": await client.get("/metrics", headers=headers),
                    "docs": await client.get("/openapi.json", headers=headers),
                    "unknown": await client.get("/v1/nothing", headers=headers),
                    "healthz": await client.get("/healthz", headers=headers),
                    "readyz": await client.get("/readyz", headers=headers),
                }
            return out

    with caplog.at_level(logging.DEBUG):
        out = asyncio.run(calls())
    for name in ("none", "wrong", "basic"):
        for route, response in out[name].items():
            if route in ("healthz", "readyz"):
                assert response.status_code == 200, (name, route)
                continue
            assert response.status_code == 401, (name, route, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
            body = response.json()
            assert body["request_id"] == response.headers["x-request-id"]
            assert "Authorization: Bearer KEY" in body["detail"]
    assert "missing API key" in out["none"]["predict"].json()["detail"]
    assert "invalid API key" in out["wrong"]["predict"].json()["detail"]
    for name in ("a", "b"):  # both keys at once: rotation
        assert out[name]["predict"].status_code == 200
        assert out[name]["model"].status_code == 200
        assert out[name]["metrics"].status_code == 200
        assert out[name]["unknown"].status_code == 404
        assert out[name]["document"].status_code == 422  # past the key check, a blank text
    assert 'status="401"' in out["a"]["metrics"].text  # 401s are counted like any error
    assert "POST /v1/predict 401" in caplog.text and "POST /v1/predict 200" in caplog.text
    assert KEY_A not in caplog.text and KEY_B not in caplog.text
    assert KEY_A[:-1] not in caplog.text


def test_without_keys_every_route_is_open(fake_service):
    app, _ = fake_service()

    async def call():
        async with running(app) as client:
            return await client.post("/v1/predict", json=TEXT)

    assert asyncio.run(call()).status_code == 200


# --- backpressure -----------------------------------------------------------------------------


def test_a_full_queue_is_refused_at_once_with_retry_after(fake_service):
    app, predictor = fake_service(delay=0.4, max_batch=4, max_queue_texts=6)

    async def scenario():
        async with running(app) as client:
            first = asyncio.create_task(client.post("/v1/predict", json=TEXT))
            while not predictor.batches:  # running: no longer queued
                await asyncio.sleep(0.005)
            queued = [
                asyncio.create_task(client.post("/v1/predict", json={"texts": ["q"] * 3}))
                for _ in range(2)
            ]
            await asyncio.sleep(0.05)
            depth = metric((await client.get("/metrics")).text, "finlora_queue_texts")
            start = time.perf_counter()
            refused = await client.post("/v1/predict", json=TEXT)
            refused_s = time.perf_counter() - start
            done = await asyncio.gather(first, *queued)
            after = (await client.get("/metrics")).text
            return depth, refused, refused_s, done, after

    depth, refused, refused_s, done, after = asyncio.run(scenario())
    assert depth == 6
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "max_queue_texts" in refused.json()["detail"]
    assert refused_s < 0.2  # not queued behind the 0.4 s batches
    assert [r.status_code for r in done] == [200, 200, 200]
    assert [len(r.json()["predictions"]) for r in done] == [1, 3, 3]
    assert metric(after, 'finlora_rejected_requests_total{reason="queue_full"}') == 1
    assert metric(after, 'finlora_rejected_requests_total{reason="deadline"}') == 0
    assert metric(after, "finlora_queue_texts") == 0
    assert metric(after, "finlora_inference_batch_texts_count") == 3  # 1, then 3, then 3 (max 4)
    assert predictor.batches == [["Profit rose."], ["q"] * 3, ["q"] * 3]


def test_past_the_deadline_a_queued_request_is_dropped_a_running_one_finishes(fake_service):
    app, predictor = fake_service(delay=0.6, max_batch=2, request_timeout_s=0.2)

    async def scenario():
        async with running(app) as client:
            running_one = asyncio.create_task(client.post("/v1/predict", json=TEXT))
            while not predictor.batches:
                await asyncio.sleep(0.005)
            start = time.perf_counter()
            waiting = await client.post("/v1/predict", json={"texts": ["waits"]})
            waited_s = time.perf_counter() - start
            first = await running_one
            await asyncio.sleep(0.1)
            after = (await client.get("/metrics")).text
            return first, waiting, waited_s, after

    first, waiting, waited_s, after = asyncio.run(scenario())
    assert first.status_code == 200  # ran 0.6 s, past its 0.2 s deadline: it still finishes
    assert waiting.status_code == 503 and waiting.headers["retry-after"] == "1"
    assert "request_timeout_s" in waiting.json()["detail"]
    assert 0.15 < waited_s < 0.5  # answered at its deadline, not after the running batch
    assert ["waits"] not in predictor.batches  # dropped before inference
    assert metric(after, 'finlora_rejected_requests_total{reason="deadline"}') == 1
    assert metric(after, "finlora_queue_texts") == 0
    assert metric(after, "finlora_queue_wait_seconds_count") == 1


def test_while_draining_new_work_and_readiness_get_503(fake_service):
    app, predictor = fake_service()

    async def scenario():
        async with running(app) as client:
            app.state.draining = True
            return (
                await client.post("/v1/predict", json=TEXT),
                await client.post("/v1/classify-document", json={"text": "A clause."}),
                await client.get("/readyz"),
                await client.get("/healthz"),
            )

    predict, document, ready, health = asyncio.run(scenario())
    for response in (predict, document):
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert "shutting down" in response.json()["detail"]
    assert ready.status_code == 503 and health.status_code == 200
    assert predictor.batches == []
