"""Service settings: `finlora serve` flags > environment variables `FINLORA_<NAME>` > defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from finlora.errors import FinloraError


class ServeSettings(BaseSettings):
    """Everything the service reads at start-up (e.g. FINLORA_MODEL_DIR, FINLORA_THREADS)."""

    model_config = SettingsConfigDict(
        env_prefix="FINLORA_", extra="ignore", protected_namespaces=()
    )

    # Each field is also a `finlora serve` flag (generated from this class, `--model` for
    # model_dir): flag > FINLORA_<NAME> > the default written here.
    model_dir: Path = Field(
        description="output dir of `finlora train` (or its onnx/ export)",
        json_schema_extra={"flag": "model"},
    )
    backend: Literal["auto", "onnx", "torch"] = Field(
        "auto", description="auto: onnx when exported"
    )
    precision: Literal["auto", "fp32", "int8"] = Field(
        "auto", description="ONNX model (auto: int8 if any)"
    )
    threads: int | None = Field(None, ge=1, description="inference threads (default: all cores)")
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8080, ge=0, le=65535, description="port to listen on")
    max_batch: int = Field(64, ge=1, le=4096, description="most texts in one request")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="request body size limit")
    max_explain_texts: int = Field(
        8,
        ge=1,
        description="most texts in one POST /v1/explain (about a second each on a CPU; one "
        "explanation runs at a time, others get 503)",
    )
    max_document_chars: int = Field(
        2_000_000, ge=1, description="longest text POST /v1/classify-document accepts"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="uvicorn's log level"
    )
    api_keys_file: Path | None = Field(
        None,
        description="file of API keys, one per line (# comments); keys also come from "
        "FINLORA_API_KEYS (comma-separated), never from a flag",
    )
    ssl_certfile: Path | None = Field(None, description="TLS certificate (PEM); needs ssl_keyfile")
    ssl_keyfile: Path | None = Field(None, description="TLS private key (PEM)")
    max_queue_texts: int = Field(
        512, ge=1, description="texts waiting for inference before new requests get 503"
    )
    request_timeout_s: float = Field(
        5.0, gt=0, description="longest wait in the queue; past it the request gets 503"
    )
    graceful_timeout_s: float = Field(
        10.0, ge=0, description="on SIGTERM, how long in-flight requests may take to finish"
    )


def load_settings(overrides: dict[str, Any] | None = None) -> ServeSettings:
    """Settings from the environment with `overrides` (command-line flags) on top."""
    try:
        return ServeSettings(**(overrides or {}))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        model_missing = any(e["loc"][:1] == ("model_dir",) for e in exc.errors())
        fix = "pass --model DIR or set FINLORA_MODEL_DIR" if model_missing else "fix them"
        raise FinloraError(
            f"invalid serve settings ({problems}); {fix}, see `finlora serve --help`"
        ) from exc
