"""Property-based tests of the HTTP API: whatever the body, never a 500, never a traceback.

The real app over the tiny exported model, in process (TestClient re-raises any exception an
endpoint lets escape, so an unhandled error fails the test even before its status is checked).
"""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finlora.serve.app import create_app
from finlora.serve.settings import ServeSettings

MAX_BATCH = 8
MAX_BODY = 64 * 1024
FUZZ = settings(
    max_examples=60,
    deadline=5000,  # ms per example; a document of a few thousand characters takes ~50 ms
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,  # the same examples on every run: a failure here is reproducible
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=50)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)
texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=300)
predict_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries({"texts": json_values}),
    st.fixed_dictionaries({"texts": st.lists(texts, min_size=0, max_size=MAX_BATCH + 2)}),
    st.fixed_dictionaries(
        {"texts": st.lists(texts, min_size=1, max_size=3)}, optional={"extra": json_values}
    ),
)
windows = st.none() | st.integers(-5, 10**20) | st.floats() | st.text(max_size=5)
document_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"text": texts | json_values},
        optional={
            "segment": st.sampled_from(["sentences", "windows", "words", ""]) | json_values,
            "window": windows,
            "stride": windows,
        },
    ),
)
content_types = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/problem+json",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "",
        "json",
        ";;;",
    ]
) | st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30)


@pytest.fixture(scope="module")
def client(exported_dir):
    settings_ = ServeSettings(
        model_dir=exported_dir, precision="fp32", threads=1, max_batch=MAX_BATCH,
        max_body_bytes=MAX_BODY, max_document_chars=5000,
    )  # fmt: skip
    with TestClient(create_app(settings_, api_keys=[])) as c:
        yield c


def check(response, route: str, sent=None) -> None:
    assert response.status_code < 500, response.text
    payload = response.json()
    if response.status_code >= 400:
        assert set(payload) == {"detail", "request_id"}, payload
        assert "\n" not in payload["detail"] and "Traceback" not in payload["detail"]
    elif route == "/v1/predict":
        assert len(payload["predictions"]) == len(sent["texts"])


@FUZZ
@given(body=predict_bodies)
def test_predict_json_bodies(client, body):
    response = client.post("/v1/predict", content=json.dumps(body).encode())
    check(response, "/v1/predict", body)
    if response.status_code == 200:
        assert isinstance(body, dict) and 1 <= len(body["texts"]) <= MAX_BATCH


@FUZZ
@given(body=document_bodies)
def test_document_json_bodies(client, body):
    check(client.post("/v1/classify-document", content=json.dumps(body).encode()), "doc")


@FUZZ
@given(
    route=st.sampled_from(["/v1/predict", "/v1/classify-document"]),
    raw=st.binary(max_size=2000),
    content_type=content_types,
)
def test_raw_bytes_and_content_types(client, route, raw, content_type):
    check(client.post(route, content=raw, headers={"content-type": content_type}), "raw")


@FUZZ
@given(
    route=st.sampled_from(["/v1/predict", "/v1/classify-document"]),
    depth=st.integers(min_value=1, max_value=30_000),
    opener=st.sampled_from(["[", '{"a":', '{"texts":', '{"text":']),
    digits=st.integers(min_value=1, max_value=20_000),
    form=st.sampled_from(["nested", "number", "float", "constant"]),
)
def test_deep_nesting_and_huge_numbers(client, route, depth, opener, digits, form):
    closer = "]" if opener == "[" else "}"
    raw = {
        "nested": opener * depth + "1" + closer * depth,
        "number": '{"texts": [' + "9" * digits + "]}",
        "float": '{"texts": ["a"], "x": 1e' + "9" * min(digits, 400) + "}",
        "constant": '{"texts": [NaN, Infinity, -Infinity]}',
    }[form]
    if len(raw) > MAX_BODY:
        raw = raw[:MAX_BODY]
    response = client.post(route, content=raw.encode())
    check(response, "raw")
    assert response.status_code in (400, 413, 422), response.text


@FUZZ
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
    path=st.sampled_from(["/v1/predict", "/v1/classify-document", "/v1/model", "/healthz",
                          "/readyz", "/metrics"]) | st.text(
        st.characters(min_codepoint=33, max_codepoint=126), max_size=20
    ).map(lambda p: "/" + p.replace("?", "").replace("#", "")),
)  # fmt: skip
def test_any_method_on_any_path(client, method, path):
    response = client.request(method, path)
    assert response.status_code < 500, response.text
