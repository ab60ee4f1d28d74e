"""POST /v1/classify-document on the real app (lifespan, middleware, worker thread) in process."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from finlora.documents import classify_document, read_document
from finlora.predictor import Predictor
from finlora.serve.app import create_app
from finlora.serve.settings import ServeSettings

MAX_BODY = 4096
MAX_CHARS = 20_000
ROUTE = "/v1/classify-document"


def serve(model_dir):
    settings = ServeSettings(
        model_dir=model_dir,
        precision="fp32",
        threads=1,
        max_body_bytes=MAX_BODY,
        max_document_chars=MAX_CHARS,
    )
    return TestClient(create_app(settings))


@pytest.fixture(scope="module")
def multilabel_client(multilabel_exported):
    with serve(multilabel_exported) as client:
        yield client


@pytest.fixture(scope="module")
def tos_text(claudette_dir):
    """A real Terms of Service (tags removed), longer than the /v1/predict body limit."""
    text = read_document(claudette_dir / "OriginalTaggedDocuments" / "Google.xml")
    assert len(text.encode()) > MAX_BODY and len(text) < MAX_CHARS
    return text


def test_multilabel_spans_map_back_to_the_document(
    multilabel_client, multilabel_exported, tos_text
):
    options = {"segment": "sentences", "window": 24, "stride": 12}
    response = multilabel_client.post(ROUTE, json={"text": tos_text, **options})
    assert response.status_code == 200, response.text
    result = response.json()
    predictor = Predictor.load(multilabel_exported, backend="onnx", precision="fp32")
    expected = classify_document(predictor, tos_text, segment_by="sentences", window=24, stride=12)
    assert result == json.loads(json.dumps(expected))
    assert result["multi_label"] and result["characters"] == len(tos_text)
    assert result["window"] == 24 and result["stride"] == 12 and result["pieces"] > 50
    assert result["spans"], "no piece reached a threshold: the offsets went unchecked"
    for span in result["spans"]:
        assert tos_text[span["start"] : span["end"]] == span["text"]
        assert span["labels"] and set(span["labels"]) <= set(result["labels"])
        for label in span["labels"]:
            assert span["scores"][label] >= result["thresholds"][label] - 1e-6  # rounded
    counts = {lab: v["count"] for lab, v in result["summary"]["per_label"].items()}
    assert sum(counts.values()) == sum(len(s["labels"]) for s in result["spans"])


def test_single_label_windows_cover_the_document(exported_dir, tos_text):
    with serve(exported_dir) as client:
        response = client.post(ROUTE, json={"text": tos_text, "segment": "windows", "window": 32})
    assert response.status_code == 200, response.text
    result = response.json()
    assert not result["multi_label"] and result["stride"] == 16
    spans = result["spans"]
    assert len(spans) == result["pieces"] > 1  # single-label: every piece with its class
    for span in spans:
        assert tos_text[span["start"] : span["end"]] == span["text"]
        assert len(span["labels"]) == 1
    for before, after in zip(spans, spans[1:]):
        assert before["start"] < after["start"] < before["end"]  # overlapping windows
    assert not tos_text[: spans[0]["start"]].strip() and not tos_text[spans[-1]["end"] :].strip()


BAD_REQUESTS = {
    "text missing": ({"segment": "windows"}, 422, "text: Field required"),
    "blank text": ({"text": "  \n "}, 422, "text must not be empty or blank"),
    "text not a string": ({"text": ["a"]}, 422, "text: Input should be a valid string"),
    "unknown segment": ({"text": "a", "segment": "pages"}, 422, "segment: Input should be"),
    "window zero": ({"text": "a", "window": 0}, 422, "window: Input should be greater"),
    "window over max_length": ({"text": "a", "window": 39}, 422, "window: must be at most 38"),
    "stride over window": ({"text": "a", "window": 8, "stride": 9}, 422, "stride: must be at most"),
    "window as a string": ({"text": "a", "window": "8"}, 422, "window: Input should be"),
    "extra field": ({"text": "a", "split": "sentences"}, 422, "split: Extra inputs"),
    "too long": ({"text": "word " * (MAX_CHARS // 5 + 1)}, 413, f"the limit is {MAX_CHARS}"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_input_is_a_4xx_with_one_line(multilabel_client, case):
    body, status, message = BAD_REQUESTS[case]
    response = multilabel_client.post(ROUTE, json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"] and "\n" not in response.json()["detail"]


def test_malformed_and_non_json_bodies(multilabel_client):
    response = multilabel_client.post(
        ROUTE, content=b'{"text": "a', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and "malformed JSON" in response.json()["detail"]
    response = multilabel_client.post(
        ROUTE, content=b"text=a", headers={"content-type": "text/plain"}
    )
    assert response.status_code == 415


def test_body_limit_is_per_route(multilabel_client, tos_text):
    """The document route takes 6 bytes per allowed character; /v1/predict keeps its limit."""
    over = multilabel_client.post("/v1/predict", json={"texts": [tos_text]})
    assert over.status_code == 413 and f"larger than {MAX_BODY} bytes" in over.json()["detail"]
    escaped = json.dumps({"text": "\u00e9" * MAX_CHARS})  # ensure_ascii: 6 bytes a character
    response = multilabel_client.post(
        ROUTE, content=escaped.encode(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["characters"] == MAX_CHARS


def test_predict_and_metrics_on_a_multilabel_model(multilabel_client):
    response = multilabel_client.post("/v1/predict", json={"texts": ["we may end this ."]})
    assert response.status_code == 200, response.text
    assert set(response.json()["predictions"][0]) == {
        "labels", "scores", "truncated", "prediction_set", "unsure", "needs_review"
    }  # fmt: skip
    multilabel_client.post(ROUTE, json={"text": "We may end this at any time."})
    text = multilabel_client.get("/metrics").text
    assert f'finlora_http_requests_total{{method="POST",route="{ROUTE}",status="200"}}' in text
    assert f'finlora_http_errors_total{{route="{ROUTE}",status="422"}}' in text
