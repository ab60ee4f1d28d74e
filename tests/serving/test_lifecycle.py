"""`finlora serve` as a real process: TLS, API keys in its log, and a graceful stop under load."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time

import httpx
import pytest

import finlora.serve.app as app_module
from finlora.cli import main

KEY = "tls-test-key-0123456789abcdef"
GRACE_S = 5
# The real `finlora serve`, with every model call 0.15 s slower so requests are in flight
# when SIGTERM arrives.
SLOW_SERVE = """
import sys, time
import finlora.predictor as p
predict = p.Predictor.predict
def slow(self, texts):
    time.sleep(0.15)
    return predict(self, texts)
p.Predictor.predict = slow
from finlora.cli import main
sys.exit(main(sys.argv[1:]))
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(argv, log_path, env=None, script=None):
    """`finlora serve ARGV` in a subprocess, its output in log_path."""
    command = [sys.executable, "-c", script, *argv] if script else [
        sys.executable, "-m", "finlora", *argv
    ]  # fmt: skip
    with open(log_path, "w") as log_file:  # the child keeps its own descriptor
        return subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )


def wait_ready(process, url, log_path, **client_options):
    deadline = time.monotonic() + 180
    with httpx.Client(timeout=2, **client_options) as client:
        while True:
            assert process.poll() is None, log_path.read_text()
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.25)


def self_signed(tmp_path):
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_with_api_keys_from_a_file(exported_dir, tmp_path):
    cert, key = self_signed(tmp_path)
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# service keys\n{KEY}\n")
    port = free_port()
    log_path = tmp_path / "server.log"
    process = start(
        ["serve", "--model", str(exported_dir), "--threads", "1", "--port", str(port),
         "--ssl_certfile", str(cert), "--ssl_keyfile", str(key), "--api_keys_file",
         str(keys_file)],
        log_path,
        env={"FINLORA_LOG_LEVEL": "debug"},
    )  # fmt: skip
    base = f"https://127.0.0.1:{port}"
    verify = ssl.create_default_context(cafile=str(cert))
    try:
        wait_ready(process, f"{base}/readyz", log_path, verify=verify)
        with httpx.Client(base_url=base, verify=verify, timeout=30) as client:
            ok = client.post(
                "/v1/predict",
                json={"texts": ["Profit rose."]},
                headers={"Authorization": f"Bearer {KEY}"},
            )
            assert ok.status_code == 200, ok.text
            refused = client.post(
                "/v1/predict",
                json={"texts": ["Profit rose."]},
                headers={"Authorization": f"Bearer {KEY}x"},
            )
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"] == "Bearer"
        with pytest.raises(httpx.TransportError):  # plain HTTP on the TLS port
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
        with pytest.raises(httpx.ConnectError):  # a client that does not trust the cert
            httpx.get(f"{base}/healthz", timeout=5)
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C: a graceful stop too, exit status 0
        assert process.wait(timeout=30) == 0, log_path.read_text()
    log = log_path.read_text()
    assert "POST /v1/predict 200" in log and "POST /v1/predict 401" in log
    assert "1 API key(s)" in log
    assert KEY not in log


def test_tls_needs_both_files(trained_dir, tmp_path, capsys):
    cert, _ = self_signed(tmp_path)
    argv = ["serve", "--model", str(trained_dir), "--backend", "torch"]
    assert main([*argv, "--ssl_certfile", str(cert)]) == 2
    assert "both --ssl_certfile and --ssl_keyfile" in capsys.readouterr().err
    assert main([*argv, "--ssl_certfile", str(cert), "--ssl_keyfile", str(cert)]) == 2
    assert "cannot load the TLS certificate/key" in capsys.readouterr().err


@pytest.mark.parametrize("host, keys, warned", [
    ("0.0.0.0", "", True), ("127.0.0.1", "", False), ("0.0.0.0", KEY, False)
])  # fmt: skip
def test_a_public_host_without_keys_warns_loudly(
    trained_dir, monkeypatch, caplog, host, keys, warned
):
    import uvicorn

    def no_serving(self):
        self.started = True

    monkeypatch.setattr(uvicorn.Server, "run", no_serving)
    monkeypatch.setattr(app_module, "configure_logging", lambda level: None)
    monkeypatch.setenv("FINLORA_API_KEYS", keys)
    with caplog.at_level(logging.WARNING, logger="finlora.serve"):
        app_module.run(
            {"model_dir": trained_dir, "backend": "torch", "host": host, "port": free_port()}
        )
    assert ("WITHOUT AUTHENTICATION" in caplog.text) is warned
    assert KEY not in caplog.text


def test_sigterm_under_load_finishes_in_flight_requests_and_exits_0(exported_dir, tmp_path):
    port = free_port()
    log_path = tmp_path / "server.log"
    process = start(
        ["serve", "--model", str(exported_dir), "--threads", "1", "--port", str(port),
         "--max_batch", "4", "--graceful_timeout_s", str(GRACE_S)],
        log_path,
        script=SLOW_SERVE,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    wait_ready(process, f"{base}/readyz", log_path)

    results: dict[str, tuple] = {}  # request id -> ("status", code, done_at) | ("error", name)
    lock = threading.Lock()
    stop = threading.Event()

    def client_loop(worker: int) -> None:
        with httpx.Client(base_url=base, timeout=30) as client:
            for n in range(200):  # bounded: ~12 requests/s per thread at most
                if stop.is_set():
                    return
                request_id = f"w{worker}-{n}"
                try:
                    response = client.post(
                        "/v1/predict",
                        json={"texts": [f"Sales rose {n} percent."]},
                        headers={"X-Request-ID": request_id},
                    )
                    outcome = ("status", response.status_code, time.monotonic())
                except httpx.TransportError as exc:
                    outcome = ("error", type(exc).__name__)
                with lock:
                    results[request_id] = outcome
                if outcome[0] == "error":
                    return  # the server is going or gone

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while sum(1 for r in list(results.values()) if r[:2] == ("status", 200)) < 24:
        assert time.monotonic() < deadline, log_path.read_text()[-3000:]
        time.sleep(0.02)
    sigterm_at = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=GRACE_S + 20)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    exit_s = time.monotonic() - sigterm_at
    log = log_path.read_text()
    outcomes = sorted({str(r[:2]) for r in results.values()})
    assert code == 0, log[-3000:]
    # The server's own clock: from SIGTERM to the end of serving within the grace period; the
    # interpreter's exit after that gets slack for a loaded machine.
    stamps = {
        event: time.strptime(re.search(rf"^(\d\d:\d\d:\d\d) .*{event}", log, re.M)[1], "%H:%M:%S")
        for event in ("Shutting down", "Finished server process")
    }
    served_s = time.mktime(stamps["Finished server process"]) - time.mktime(stamps["Shutting down"])
    assert served_s <= GRACE_S + 1, (served_s, log[-3000:])
    assert exit_s < GRACE_S + 10, (exit_s, outcomes, log[-3000:])
    assert "Application shutdown complete" in log

    # Every request the app saw (it logs each one, whatever the outcome) got its answer.
    seen = dict(re.findall(r"\[(w\d+-\d+)\] POST /v1/predict (\d+)", log))
    assert seen, log[-3000:]
    for request_id, status in seen.items():
        outcome = results.get(request_id, ("lost",))
        assert outcome[:2] == ("status", int(status)), (request_id, status, outcome, outcomes)
    statuses = {r[1] for r in results.values() if r[0] == "status"}
    assert statuses <= {200, 503}, statuses
    # The rest never reached the app: refused or closed connections, not half-answered ones.
    unseen = [r for i, r in results.items() if i not in seen]
    assert all(r[0] == "error" for r in unseen), (unseen, log[-3000:])
    # Some were in flight at SIGTERM (0.15 s batches, 12 clients) and still finished with 200.
    finished_after = [r for r in results.values() if r[:2] == ("status", 200) and r[2] > sigterm_at]
    assert finished_after, ("no request was in flight at SIGTERM", outcomes)
