"""S3 in and out: `s3://bucket/key` URIs wherever finlora takes a path.

boto3 with the standard credential chain (env, profile, SSO, instance/container role) and
region; `AWS_ENDPOINT_URL` or `--s3_endpoint_url` points it at MinIO, LocalStack or any
S3-compatible store. Throttling and transient errors are retried by botocore (adaptive mode,
10 attempts unless AWS_RETRY_MODE / AWS_MAX_ATTEMPTS say otherwise); large files go up and
down in parallel multipart transfers.

Every write checks first that its bucket exists (`require_bucket`): servers that create a
missing bucket on upload (SeaweedFS by default) would otherwise turn a mistyped bucket name
into a new bucket instead of an error.

A directory is published with `upload_dir`: every file goes to a staging prefix first, is then
copied server-side under the target prefix, and only then is `_SUCCESS` written there. Readers
(`download_dir`) refuse a prefix without `_SUCCESS`, so an upload that died half-way never
looks complete.
"""

from __future__ import annotations

import base64
import contextlib
import difflib
import hashlib
import json
import logging
import os
import posixpath
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
)

from finlora.errors import FinloraError

log = logging.getLogger(__name__)

SUCCESS_MARKER = "_SUCCESS"
MB = 1024 * 1024
# Parts of 64 MiB, 4 in flight: a 90 MB model goes up as two parts in parallel.
TRANSFER = TransferConfig(
    multipart_threshold=64 * MB, multipart_chunksize=64 * MB, max_concurrency=4
)


def is_s3_uri(path: object) -> bool:
    return isinstance(path, str) and path.startswith("s3://")


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        if not is_s3_uri(uri):
            raise FinloraError(f"{uri!r} is not an s3://bucket/key URI")
        bucket, _, key = uri[len("s3://") :].partition("/")
        if not bucket:
            raise FinloraError(f"{uri!r} names no bucket; use s3://bucket/key")
        return cls(bucket, key)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def prefix(self) -> str:
        """The key as a 'directory' prefix: '' or ending in '/'."""
        return self.key.rstrip("/") + "/" if self.key.strip("/") else ""

    def child(self, name: str) -> S3Uri:
        return S3Uri(self.bucket, self.prefix + name.lstrip("/"))


# The check before training gives up quickly: an unreachable endpoint fails in seconds.
PROBE = Config(retries={"mode": "standard", "max_attempts": 2}, connect_timeout=3, read_timeout=10)


def client(endpoint_url: str | None = None, region: str | None = None, probe: bool = False):
    """An S3 client from the standard chain, with retries and the endpoint override; a
    `probe` client has few retries and short timeouts (transfers get the patient one)."""
    endpoint_url = (
        endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    )
    config = Config(
        retries={
            "mode": os.environ.get("AWS_RETRY_MODE", "adaptive"),
            "max_attempts": int(os.environ.get("AWS_MAX_ATTEMPTS", "10")),
        },
        # Custom endpoints (MinIO, an IP and port) rarely serve bucket subdomains.
        s3={"addressing_style": "path"} if endpoint_url else None,
    )
    if probe:
        config = config.merge(PROBE)
    session = boto3.session.Session(region_name=region)
    s3 = session.client("s3", endpoint_url=endpoint_url, config=config)
    s3.meta.events.register("before-call.s3.DeleteObjects", _content_md5)
    return s3


def _content_md5(params, **kwargs) -> None:
    """DeleteObjects with a Content-MD5 header, as before botocore 1.36: since then botocore
    sends only a CRC32 checksum, which AWS, SeaweedFS and moto accept, while older MinIO,
    Ceph RGW and other S3-compatible stores refuse the request with MissingContentMD5
    (even with AWS_REQUEST_CHECKSUM_CALCULATION=when_required). The body is a small XML list
    of keys, so the extra digest costs nothing."""
    body = params.get("body")
    if isinstance(body, (bytes, bytearray)):
        digest = hashlib.md5(body, usedforsecurity=False).digest()
        params["headers"]["Content-MD5"] = base64.b64encode(digest).decode("ascii")


@contextlib.contextmanager
def explained(uri: str, action: str, s3=None) -> Iterator[None]:
    """Turn boto errors into one-line `FinloraError`s that name the object and the fix."""
    try:
        yield
    except (NoCredentialsError, PartialCredentialsError) as exc:
        raise FinloraError(
            f"no AWS credentials to {action} {uri}: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
            "AWS_PROFILE, or run on a machine with an IAM role"
        ) from exc
    except EndpointConnectionError as exc:
        # The client's endpoint, not the request's URL (which names the object again).
        endpoint = s3.meta.endpoint_url if s3 is not None else exc.kwargs.get("endpoint_url")
        raise FinloraError(
            f"cannot reach the S3 endpoint to {action} {uri} ({endpoint}); "
            "check --s3_endpoint_url / AWS_ENDPOINT_URL and the network"
        ) from exc
    except ClientError as exc:
        raise _client_error(exc, uri, action, s3) from exc
    except BotoCoreError as exc:
        raise FinloraError(f"cannot {action} {uri}: {exc}") from exc


def _client_error(exc: ClientError, uri: str, action: str, s3) -> FinloraError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    parsed = S3Uri.parse(uri)
    missing = code in ("NoSuchBucket", "NoSuchKey", "404", "NotFound")
    if missing and (
        code == "NoSuchBucket"
        or exc.operation_name == "HeadBucket"
        or not parsed.key
        or (s3 is not None and not bucket_exists(s3, parsed.bucket))
    ):
        return FinloraError(
            f"bucket {parsed.bucket!r} does not exist (to {action} {uri}); check the name "
            "and region, or create it"
        )
    if missing:
        near = near_matches(s3, parsed) if s3 is not None else []
        hint = (
            f"; similar keys: {', '.join(near)}" if near else "; nothing similar under that prefix"
        )
        return FinloraError(f"{uri} does not exist{hint}")
    if code in ("AccessDenied", "403", "Forbidden", "AllAccessDisabled"):
        return FinloraError(
            f"access denied to {action} {uri}; the credentials in use need s3:GetObject/"
            "s3:PutObject/s3:DeleteObject/s3:ListBucket on that bucket"
        )
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"):
        return FinloraError(f"AWS credentials rejected ({code}) to {action} {uri}; refresh them")
    return FinloraError(f"cannot {action} {uri}: {code} {error.get('Message', '')}".strip())


def bucket_exists(s3, bucket: str) -> bool:
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as exc:
        return exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound")
    return True


def require_bucket(s3, bucket: str) -> None:
    """Raise the missing-bucket ClientError before a write, not after it: SeaweedFS's S3
    gateway (`-s3.autoCreateBucket`, on by default) creates a missing bucket on an admin's
    first put, so a mistyped name would silently become a new bucket. Any other answer (403
    for credentials without s3:ListBucket) is left for the write itself to report."""
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket", "NotFound"):
            raise


def near_matches(s3, uri: S3Uri, limit: int = 5) -> list[str]:
    """Keys under the missing key's parent prefix that look like it (for the error message)."""
    parent = posixpath.dirname(uri.key.rstrip("/"))
    parent = parent + "/" if parent else ""
    try:
        keys = [k for k, _ in list_objects(s3, uri.bucket, parent, max_keys=1000)]
    except (ClientError, BotoCoreError):
        return []
    names = {posixpath.basename(k.rstrip("/")): k for k in keys}
    wanted = posixpath.basename(uri.key.rstrip("/"))
    close = difflib.get_close_matches(wanted, list(names), n=limit, cutoff=0.5)
    picked = [names[c] for c in close] or keys[:limit]
    return [f"s3://{uri.bucket}/{k}" for k in picked]


def list_objects(
    s3, bucket: str, prefix: str, max_keys: int | None = None
) -> list[tuple[str, int]]:
    """(key, size) of every object under a prefix."""
    out: list[tuple[str, int]] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out += [(o["Key"], o["Size"]) for o in page.get("Contents", [])]
        if max_keys and len(out) >= max_keys:
            break
    return out


def download_file(uri: str, dest_dir: str | Path, endpoint_url: str | None = None) -> Path:
    """Download one object into dest_dir (keeping its file name, so its suffix); return the path."""
    parsed = S3Uri.parse(uri)
    if not parsed.key or parsed.key.endswith("/"):
        raise FinloraError(f"{uri} names a prefix, not a file; give the object's full key")
    s3 = client(endpoint_url)
    dest = Path(dest_dir) / posixpath.basename(parsed.key)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with explained(uri, "download", s3):
        s3.head_object(Bucket=parsed.bucket, Key=parsed.key)
        s3.download_file(parsed.bucket, parsed.key, str(dest), Config=TRANSFER)
    log.info("downloaded %s (%.1f MB)", uri, dest.stat().st_size / MB)
    return dest


def upload_file(path: str | Path, uri: str, endpoint_url: str | None = None) -> None:
    """Upload one file (a single object appears atomically on S3)."""
    parsed = S3Uri.parse(uri)
    s3 = client(endpoint_url)
    with explained(uri, "upload", s3):
        require_bucket(s3, parsed.bucket)
        s3.upload_file(str(path), parsed.bucket, parsed.key, Config=TRANSFER)


def upload_dir(
    local_dir: str | Path,
    uri: str,
    endpoint_url: str | None = None,
    transfer: TransferConfig = TRANSFER,
) -> int:
    """Publish a directory under a prefix: staging prefix, copy, then `_SUCCESS`. Returns bytes.

    The target's old `_SUCCESS` is removed before anything there changes and the new one is
    written last, so at no moment does a partial upload carry the marker.
    """
    local_dir = Path(local_dir)
    target = S3Uri.parse(uri)
    s3 = client(endpoint_url)
    files = sorted(p for p in local_dir.rglob("*") if p.is_file())
    relative = [p.relative_to(local_dir).as_posix() for p in files]
    staging = S3Uri(target.bucket, f"{target.prefix.rstrip('/')}.staging-{uuid.uuid4().hex[:12]}/")
    total = 0
    started = time.perf_counter()
    try:
        with explained(uri, "upload to", s3):
            s3.head_bucket(Bucket=target.bucket)
            for path, name in zip(files, relative, strict=True):
                s3.upload_file(str(path), staging.bucket, staging.prefix + name, Config=transfer)
                total += path.stat().st_size
            s3.delete_objects(
                Bucket=target.bucket, Delete={"Objects": [{"Key": target.prefix + SUCCESS_MARKER}]}
            )
            stale = {k for k, _ in list_objects(s3, target.bucket, target.prefix)}
            stale -= {target.prefix + name for name in relative}
            _delete_keys(s3, target.bucket, sorted(stale))
            for name in relative:
                s3.copy(
                    {"Bucket": staging.bucket, "Key": staging.prefix + name},
                    target.bucket,
                    target.prefix + name,
                    Config=transfer,
                )
            manifest = {
                "files": dict(zip(relative, (p.stat().st_size for p in files), strict=True))
            }
            s3.put_object(
                Bucket=target.bucket,
                Key=target.prefix + SUCCESS_MARKER,
                Body=json.dumps(manifest, indent=1).encode(),
            )
    finally:
        with contextlib.suppress(ClientError, BotoCoreError):
            _delete_keys(s3, staging.bucket, [staging.prefix + name for name in relative])
    log.info(
        "uploaded %d files (%.1f MB) to %s in %.1fs",
        len(files),
        total / MB,
        uri,
        time.perf_counter() - started,
    )
    return total


def check_writable(uri: str, endpoint_url: str | None = None, inside: bool = False) -> None:
    """Before a long job: credentials, endpoint and bucket all let us write (and delete)
    where the job will, under the prefix `uri` (`inside`) or beside it.

    An empty marker is put and deleted, so the check covers permissions (head_bucket alone
    would not) and never touches an existing object. The bucket is checked first: a put
    into a missing bucket creates it on SeaweedFS (`require_bucket`).
    """
    parsed = S3Uri.parse(uri)
    s3 = client(endpoint_url, probe=True)
    marker = f".write-check-{uuid.uuid4().hex[:12]}"
    prefix = parsed.prefix.rstrip("/")
    key = f"{prefix}/{marker}" if inside else f"{prefix}{marker}"
    with explained(uri, "write to", s3):
        require_bucket(s3, parsed.bucket)
        s3.put_object(Bucket=parsed.bucket, Key=key, Body=b"")
        s3.delete_object(Bucket=parsed.bucket, Key=key)


def _delete_keys(s3, bucket: str, keys: list[str]) -> None:
    for start in range(0, len(keys), 1000):
        batch = [{"Key": k} for k in keys[start : start + 1000]]
        if batch:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})


def download_dir(
    uri: str, dest_dir: str | Path, endpoint_url: str | None = None, require_success: bool = True
) -> Path:
    """Download everything under a prefix; by default only a prefix that carries `_SUCCESS`."""
    parsed = S3Uri.parse(uri)
    s3 = client(endpoint_url)
    dest = Path(dest_dir)
    with explained(uri, "download", s3):
        s3.head_bucket(Bucket=parsed.bucket)
        objects = list_objects(s3, parsed.bucket, parsed.prefix)
        keys = {k for k, _ in objects}
        if require_success and parsed.prefix + SUCCESS_MARKER not in keys:
            if not keys:
                raise FinloraError(
                    f"{uri} holds no objects{_near_hint(s3, parsed)}; check the prefix"
                )
            raise FinloraError(
                f"{uri} has no {SUCCESS_MARKER} marker: its upload did not finish; rerun the job "
                "that writes it"
            )
        for key, _ in objects:
            name = key[len(parsed.prefix) :]
            if name == SUCCESS_MARKER or not name or name.endswith("/"):
                continue
            path = dest / name
            path.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(parsed.bucket, key, str(path), Config=TRANSFER)
    return dest


def _near_hint(s3, parsed: S3Uri) -> str:
    near = near_matches(s3, S3Uri(parsed.bucket, parsed.key.rstrip("/")))
    return f" (similar: {', '.join(near)})" if near else ""


def delete_prefix(uri: str, endpoint_url: str | None = None) -> None:
    """Delete a prefix, its `_SUCCESS` marker first so it never looks complete half-deleted."""
    parsed = S3Uri.parse(uri)
    s3 = client(endpoint_url)
    with explained(uri, "delete", s3):
        keys = [k for k, _ in list_objects(s3, parsed.bucket, parsed.prefix)]
        marker = parsed.prefix + SUCCESS_MARKER
        _delete_keys(s3, parsed.bucket, [marker])
        _delete_keys(s3, parsed.bucket, [k for k in keys if k != marker])


def subdirs(uri: str, endpoint_url: str | None = None, complete_only: bool = False) -> list[str]:
    """Names of the 'subdirectories' of a prefix (only those with `_SUCCESS` if asked)."""
    parsed = S3Uri.parse(uri)
    s3 = client(endpoint_url)
    with explained(uri, "list", s3):
        keys = [k for k, _ in list_objects(s3, parsed.bucket, parsed.prefix)]
    names = set()
    for key in keys:
        head, sep, tail = key[len(parsed.prefix) :].partition("/")
        if sep and (tail == SUCCESS_MARKER or not complete_only):
            names.add(head)
    return sorted(names)


def exists(uri: str, endpoint_url: str | None = None) -> bool:
    parsed = S3Uri.parse(uri)
    s3 = client(endpoint_url)
    try:
        s3.head_object(Bucket=parsed.bucket, Key=parsed.key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise _client_error(exc, uri, "read", s3) from exc
    return True
