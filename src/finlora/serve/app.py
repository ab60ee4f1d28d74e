"""The FastAPI inference service: model loaded once at start-up, inference on a worker thread.

Routes: POST /v1/predict, POST /v1/classify-document, POST /v1/explain (word attributions,
on the torch model), GET /healthz (process up), GET /readyz
(model loaded), GET /v1/model, GET /metrics (Prometheus text). Bad input is always a 4xx with
a one-line `detail`.
Run with `finlora serve --model DIR` or `uvicorn --factory finlora.serve.app:create_app`
(settings then come from FINLORA_* environment variables).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import socket
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from finlora import __version__
from finlora.artifacts import EXPORT_INFO, read_json, require_model_dir
from finlora.documents import classify_document, window_size
from finlora.errors import FinloraError
from finlora.predictor import Predictor, find_onnx_dir
from finlora.results import FinalResults, SingleLabelMetrics, SplitMetrics, read_results
from finlora.serve.auth import ApiKeyMiddleware, is_loopback, load_api_keys
from finlora.serve.batching import MicroBatcher, Rejected
from finlora.serve.observability import (
    REQUEST_ID,
    Metrics,
    RequestContextMiddleware,
    RequestIdFilter,
    send_error,
)
from finlora.serve.schemas import (
    ClassifyDocumentRequest,
    ClassifyDocumentResponse,
    ErrorResponse,
    ExplainResponse,
    PredictRequest,
    PredictResponse,
)
from finlora.serve.settings import ServeSettings, load_settings

log = logging.getLogger("finlora.serve")

DOCUMENT_ROUTE = "/v1/classify-document"
EXPLAIN_ROUTE = "/v1/explain"
ROUTES = {
    "/v1/predict",
    DOCUMENT_ROUTE,
    EXPLAIN_ROUTE,
    "/v1/model",
    "/healthz",
    "/readyz",
    "/metrics",
}
# A character takes at most 6 bytes of JSON (`\uXXXX`), so a document of max_document_chars
# always fits in the body limit of its route.
JSON_BYTES_PER_CHAR = 6
RETRY_AFTER_S = 1


def json_body(model: type[BaseModel]) -> dict:
    """OpenAPI for a route that reads its JSON body itself (`read_body`): the body's schema."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


class ApiError(Exception):
    """A client error: becomes `{"detail": ..., "request_id": ...}` with this status."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def error_response(status: int, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(
        {"detail": detail, "request_id": REQUEST_ID.get()}, status_code=status, headers=headers
    )


def busy_response(detail: str) -> JSONResponse:
    return error_response(503, detail, {"Retry-After": str(RETRY_AFTER_S)})


def create_app(settings: ServeSettings | None = None, api_keys: list[str] | None = None) -> FastAPI:
    """The service; `api_keys` default to FINLORA_API_KEYS and settings.api_keys_file."""
    settings = settings or load_settings()
    if api_keys is None:
        api_keys = load_api_keys(settings.api_keys_file)
    metrics = Metrics(ROUTES)
    # Documents are classified one at a time: one is already a long run of full batches, and
    # two at once would only share the cores (and the tokenizer, which is not thread-safe).
    document_lock = asyncio.Lock()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        predictor = await asyncio.to_thread(
            Predictor.load,
            settings.model_dir,
            batch_size=settings.max_batch,
            backend=settings.backend,
            precision=settings.precision,
            threads=settings.threads,
        )
        await asyncio.to_thread(predictor.predict, ["warm-up"])  # first call allocates
        # The libraries and the model are loaded for good: keep the garbage collector off
        # them, both while serving (shorter pauses) and at exit (the final collection over
        # torch/transformers objects took seconds, past the SIGTERM grace period).
        gc.collect()
        gc.freeze()
        app.state.predictor = predictor
        app.state.model_info = describe_model(settings, predictor)
        app.state.batcher = MicroBatcher(
            predictor,
            settings.max_batch,
            on_batch=metrics.batch_size.observe,
            max_queue_texts=settings.max_queue_texts,
            timeout_s=settings.request_timeout_s,
            on_reject=lambda reason: metrics.rejected.labels(reason).inc(),
            on_start=metrics.queue_wait.observe,
        )
        metrics.queue_texts.set_function(lambda: app.state.batcher.queued_texts)
        app.state.batcher.start()
        metrics.ready.set(1)
        log.info(
            "serving %s (%s %s, %s threads, labels %s, %s)",
            settings.model_dir,
            predictor.backend,
            predictor.precision,
            app.state.model_info["threads"],
            predictor.labels,
            f"{len(api_keys)} API key(s)" if api_keys else "no API keys",
        )
        yield
        metrics.ready.set(0)
        await app.state.batcher.close()

    app = FastAPI(
        title="finlora",
        version=__version__,
        lifespan=lifespan,
        responses={
            400: {"model": ErrorResponse},
            413: {"model": ErrorResponse},
            422: {"model": ErrorResponse},
            503: {"model": ErrorResponse},
        },
    )
    app.state.predictor = None
    app.state.explainer = None  # built at the first /v1/explain call
    app.state.explaining = False  # an explanation holds the inference thread
    app.state.draining = False  # set on SIGTERM: readyz and new work answer 503
    document_body = JSON_BYTES_PER_CHAR * settings.max_document_chars + 1024
    # Inside the request-context layer, so a 401 carries a request ID and is logged and counted.
    app.add_middleware(ApiKeyMiddleware, keys=api_keys, send_error=send_error)
    app.add_middleware(
        RequestContextMiddleware,
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
        route_body_bytes={DOCUMENT_ROUTE: max(settings.max_body_bytes, document_body)},
    )

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.detail)

    @app.exception_handler(Rejected)
    async def rejected(request: Request, exc: Rejected):
        return busy_response(exc.detail)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return error_response(422, validation_message(exc.errors()))

    def refuse_batch(request: Request, texts: list[str]) -> Response | None:
        """Too many texts: a 422; a service that is stopping: the 503 to return."""
        if len(texts) > settings.max_batch:
            raise ApiError(
                422, f"{len(texts)} texts in one request; the limit is {settings.max_batch}"
            )
        if request.app.state.draining:
            metrics.rejected.labels("shutting_down").inc()
            return busy_response("server shutting down; retry on another instance")
        return None

    @app.post(
        "/v1/predict",
        response_model=PredictResponse,
        openapi_extra=json_body(PredictRequest),
    )
    async def predict(request: Request):
        """Classify 1 to max_batch texts; overlong texts are truncated and flagged."""
        texts = (await read_body(request, PredictRequest)).texts
        if (refused := refuse_batch(request, texts)) is not None:
            return refused
        predictions = await request.app.state.batcher.predict(texts)
        for p in predictions:
            for label in p["labels"] if "labels" in p else [p["label"]]:
                metrics.predicted.labels(label).inc()
        return Response(json.dumps({"predictions": predictions}), media_type="application/json")

    @app.post(
        DOCUMENT_ROUTE,
        response_model=ClassifyDocumentResponse,
        openapi_extra=json_body(ClassifyDocumentRequest),
    )
    async def classify_document_route(request: Request):
        """Cut one document into sentences or token windows and return the labelled pieces
        with their character offsets, as `finlora predict --document` does."""
        document = await read_body(request, ClassifyDocumentRequest)
        if len(document.text) > settings.max_document_chars:
            raise ApiError(
                413,
                f"text has {len(document.text)} characters; the limit is "
                f"{settings.max_document_chars} (max_document_chars)",
            )
        if request.app.state.draining:
            metrics.rejected.labels("shutting_down").inc()
            return busy_response("server shutting down; retry on another instance")
        predictor = request.app.state.predictor
        check_window(predictor, document)
        try:  # one document at a time; waiting for the one before has the same deadline
            await asyncio.wait_for(document_lock.acquire(), settings.request_timeout_s)
        except asyncio.TimeoutError:  # not yet the builtin on Python 3.10
            metrics.rejected.labels("deadline").inc()
            return busy_response(
                f"server busy: the document waited {settings.request_timeout_s:g} s for the "
                "one before it (request_timeout_s); retry later"
            )
        try:
            result = await asyncio.to_thread(
                classify_document,
                predictor,
                document.text,
                segment_by=document.segment,
                window=document.window,
                stride=document.stride,
            )
        finally:
            document_lock.release()
        return Response(json.dumps(result), media_type="application/json")

    @app.post(
        EXPLAIN_ROUTE,
        response_model=ExplainResponse,
        openapi_extra=json_body(PredictRequest),
    )
    async def explain(request: Request):
        """Word attributions (integrated gradients) for the predicted label(s) of 1 to
        max_batch texts, as `finlora predict --explain`; needs the model's torch weights (an
        ONNX service loads them at the first call)."""
        texts = (await read_body(request, PredictRequest)).texts
        if (refused := refuse_batch(request, texts)) is not None:
            return refused
        if len(texts) > settings.max_explain_texts:  # about a second of the one thread each
            raise ApiError(
                422,
                f"{len(texts)} texts to explain in one request; the limit is "
                f"{settings.max_explain_texts} (max_explain_texts)",
            )
        if request.app.state.explaining:  # one at a time: predictions wait behind it
            metrics.rejected.labels("explain_busy").inc()
            return busy_response("another explanation is running; retry shortly")
        if request.app.state.explainer is None:
            torch_dir = torch_model_dir(settings.model_dir)
            if torch_dir is None:
                raise ApiError(
                    409,
                    f"{settings.model_dir} has no torch weights (*.safetensors); explanations "
                    "need them: serve the `finlora train` output dir, not only its ONNX export",
                )
        else:
            torch_dir = None
        state = request.app.state

        def run() -> list[dict]:  # on the inference thread, after the batches before it
            if state.explainer is None:
                state.explainer = load_explainer(state.predictor, torch_dir, settings)
            return state.explainer.explain(texts)

        loop = asyncio.get_running_loop()
        state.explaining = True
        try:
            records = await loop.run_in_executor(state.batcher.executor, run)
        except FinloraError as exc:  # the model cannot be explained (no fast tokenizer, ...)
            raise ApiError(409, str(exc).splitlines()[0]) from None
        finally:
            state.explaining = False
        return Response(json.dumps({"explanations": records}), media_type="application/json")

    @app.get("/healthz")
    async def healthz():
        """The process is up (it may still be loading the model)."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request):
        """The model is loaded and requests will be served."""
        if request.app.state.predictor is None:
            return error_response(503, "model not loaded yet")
        if request.app.state.draining:
            return error_response(503, "shutting down")
        return {"status": "ready"}

    @app.get("/v1/model")
    async def model(request: Request):
        """Labels, base model, training strategy, test metrics and export checksums."""
        if request.app.state.predictor is None:
            return error_response(503, "model not loaded yet")
        return request.app.state.model_info

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def torch_model_dir(model_dir: str | Path) -> Path | None:
    """Where the torch weights of a served model dir are: the dir itself, or the training
    output above an `onnx/` export served directly; None when there are none."""
    model_dir = Path(model_dir)
    candidates = [model_dir]
    if find_onnx_dir(model_dir) == model_dir:  # an export dir, served as such
        candidates.append(model_dir.parent)
    for candidate in candidates:
        if (candidate / "config.json").is_file() and any(candidate.glob("*.safetensors")):
            return candidate
    return None


def load_explainer(predictor: Predictor, torch_dir: Path | None, settings: ServeSettings):
    """An `Explainer` over the served torch predictor, or over a torch predictor loaded from
    `torch_dir` (a service running ONNX) with the same calibration."""
    from finlora.explain import Explainer

    if predictor.backend != "torch":
        predictor = Predictor.load(
            torch_dir, batch_size=settings.max_batch, backend="torch", threads=settings.threads
        )
    return Explainer(predictor)


async def read_body(request: Request, schema: type[BaseModel]) -> Any:
    """The JSON body validated against `schema`; 415, 400 or 422 with one line if it is not."""
    content_type = request.headers.get("content-type", "application/json")
    if "json" not in content_type.split(";")[0].lower():
        raise ApiError(415, f"content-type {content_type!r} is not JSON; send application/json")
    body = parse_json(await request.body())
    try:
        return schema.model_validate(body)
    except ValidationError as exc:
        raise ApiError(422, validation_message(exc.errors())) from None


def check_window(predictor: Predictor, document: ClassifyDocumentRequest) -> None:
    """The model-dependent bounds of `window` and `stride`, checked before any work."""
    room = window_size(predictor, None)
    if document.window is not None and document.window > room:
        raise ApiError(
            422,
            f"window: must be at most {room} (the model's max_length {predictor.max_length} "
            f"minus special tokens), got {document.window}",
        )
    window = document.window or room
    if document.stride is not None and document.stride > window:
        raise ApiError(422, f"stride: must be at most window ({window}), got {document.stride}")


def parse_json(body: bytes) -> Any:
    if not body:
        raise ApiError(400, 'empty request body; send JSON like {"texts": ["..."]}')
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"request body is not valid UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise ApiError(
            400, f"malformed JSON: {exc.msg} at line {exc.lineno} col {exc.colno}"
        ) from None
    except RecursionError:
        raise ApiError(400, "malformed JSON: nested too deeply") from None
    except ValueError as exc:  # an integer of more than 4300 digits, NaN, Infinity
        raise ApiError(400, f"malformed JSON: {str(exc).split(':')[0]}") from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def validation_message(errors: list[dict]) -> str:
    """Pydantic's error list as one line: `texts.1: Input should be a valid string`."""
    parts = []
    for error in errors[:3]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        message = error.get("msg", "invalid").removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return "; ".join(parts) + more


def training_results(model_dir: Path) -> FinalResults | None:
    """The model's final_results.json, if it has a readable one: serving does not need it, so
    a file that fails its schema check is reported and left out of /v1/model."""
    try:
        return read_results(model_dir)
    except FinloraError as exc:
        log.warning("ignoring the training results: %s", exc)
        return None


def test_summary(test: SplitMetrics | None) -> dict | None:
    """What /v1/model tells of the test scores: macro-F1, accuracy (single-label), size."""
    if test is None:
        return None
    summary: dict[str, Any] = {"macro_f1": test.macro_f1}
    if isinstance(test, SingleLabelMetrics):
        summary["accuracy"] = test.accuracy
    summary["size"] = test.size
    return summary


def describe_model(settings: ServeSettings, predictor: Predictor) -> dict:
    """What /v1/model reports: enough to tell which model and export is answering."""
    model_dir = Path(settings.model_dir)
    onnx_dir = find_onnx_dir(model_dir)
    results = training_results(model_dir) or (
        training_results(model_dir.parent) if onnx_dir == model_dir else None
    )
    export = read_json(onnx_dir / EXPORT_INFO) if onnx_dir else None
    runner = predictor.runner
    return {
        "model_dir": str(model_dir.resolve()),
        "labels": predictor.labels,
        "backend": predictor.backend,
        "precision": predictor.precision,
        "threads": getattr(runner, "threads", None),
        "max_length": predictor.max_length,
        "max_batch": settings.max_batch,
        "base_model": results.base_model if results else None,
        "strategy": results.strategy if results else None,
        "test": test_summary(results.test if results else None),
        "export": (
            {
                "opset": export["opset"],
                "created_at": export["created_at"],
                "files": {name: f["sha256"] for name, f in export["files"].items()},
                "parity": export["parity"],
            }
            if export
            else None
        ),
        "finlora_version": __version__,
    }


def configure_logging(level: str) -> None:
    """Put the request ID into every log line."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    for handler in root.handlers or [logging.StreamHandler()]:
        handler.addFilter(RequestIdFilter())
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s", "%H:%M:%S"
            )
        )
        if handler not in root.handlers:
            root.addHandler(handler)


def run(overrides: dict[str, Any]) -> None:
    """`finlora serve`: validate settings and the model dir, then run uvicorn.

    SIGTERM or Ctrl-C stops it gracefully: the listener closes, /readyz answers 503, requests
    in flight finish (for at most graceful_timeout_s), then the process exits 0.
    """
    import signal

    import uvicorn

    settings = load_settings(overrides)
    if settings.backend != "torch" and find_onnx_dir(settings.model_dir) is None:
        if settings.backend == "onnx":
            raise FinloraError(
                f"{settings.model_dir} has no ONNX export; run `finlora export --model "
                f"{settings.model_dir} --format onnx` or use --backend torch"
            )
        log.warning("no ONNX export in %s; serving with the torch backend", settings.model_dir)
    if settings.backend == "torch" or find_onnx_dir(settings.model_dir) is None:
        require_model_dir(settings.model_dir)
    check_tls(settings)
    api_keys = load_api_keys(settings.api_keys_file)
    check_port_free(settings.host, settings.port)
    configure_logging(settings.log_level)
    if not api_keys and not is_loopback(settings.host):
        log.warning(
            "!!! serving on %s WITHOUT AUTHENTICATION: anyone who reaches this port can call "
            "every route. Set FINLORA_API_KEYS or --api_keys_file. !!!",
            settings.host,
        )
    app = create_app(settings, api_keys=api_keys)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            app.state.draining = True
            super().handle_exit(sig, frame)

    server = Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
            log_level=settings.log_level,
            timeout_graceful_shutdown=settings.graceful_timeout_s,
            ssl_certfile=settings.ssl_certfile and str(settings.ssl_certfile),
            ssl_keyfile=settings.ssl_keyfile and str(settings.ssl_keyfile),
        )
    )
    # uvicorn re-raises the signal it caught once it has shut down, which would end the
    # process with -15 (or a KeyboardInterrupt); a graceful stop on request is a success, so
    # that re-raise does nothing.
    stops = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in stops}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        raise FinloraError("the service did not start; see the log above")


def check_tls(settings: ServeSettings) -> None:
    """Both TLS files or neither, each readable, before the model is loaded."""
    given = [f for f in (settings.ssl_certfile, settings.ssl_keyfile) if f is not None]
    if len(given) == 1:
        raise FinloraError("TLS needs both --ssl_certfile and --ssl_keyfile")
    for path in given:
        if not Path(path).is_file():
            raise FinloraError(f"TLS file {path} not found")
    if given:
        import ssl

        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                str(settings.ssl_certfile), str(settings.ssl_keyfile)
            )
        except (ssl.SSLError, OSError) as exc:
            raise FinloraError(
                f"cannot load the TLS certificate/key ({exc}); both must be PEM files"
            ) from None


def check_port_free(host: str, port: int) -> None:
    """Fail with one line when the address is taken, instead of uvicorn's log and exit 3."""
    try:  # every address the host resolves to, as asyncio's create_server binds them all
        for family, kind, proto, _, address in socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        ):
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
                if family == socket.AF_INET6:
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                probe.bind(address)
    except OSError as exc:
        raise FinloraError(
            f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port or --host"
        ) from exc
