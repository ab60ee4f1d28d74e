"""Load and soak test of `finlora serve` with Debian's `wrk` (loopback only, bounded).

Starts the service, runs `wrk` (one thread, so the load generator leaves the CPU to the
server) at each concurrency for a fixed time, then an optional soak of N requests, and prints
a Markdown table: throughput, p50/p99, 200s, 503s, other statuses, responses with a wrong
request ID or prediction count, and the server's RSS before and after.

The soak fails (exit 1, with the reason on stderr) if the server's RSS grew by more than
`--max_rss_growth` percent (10) after its first 10 s chunk (the warm-up), or if any answer was
neither a 200 nor the designed 503, or carried a wrong request ID or prediction count.

    apt-get install wrk
    python bench/serve_load.py --model outputs/pb_lora --texts phrasebank --seconds 10 \\
        --concurrency 1 8 32 128 --soak 100000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
ONE_SENTENCE = "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn in the same period."


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bodies(kind: str, data_dir: str | None) -> list[str]:
    if kind == "one":
        return [json.dumps({"texts": [ONE_SENTENCE]})]
    root = Path(data_dir or os.environ.get("FINLORA_DATA_DIR", "."))
    path = root / "FinancialPhraseBank-v1.0" / "Sentences_AllAgree.txt"
    lines = path.read_text(encoding="iso-8859-1").splitlines()[:500]
    return [json.dumps({"texts": [line.rsplit("@", 1)[0].strip()]}) for line in lines]


def wrk(url: str, body_file: Path, connections: int, seconds: float, key=None):
    command = [
        "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s",
        "-s", str(HERE / "wrk_predict.lua"), url, "--", str(body_file), "0",
    ]  # fmt: skip
    if key:
        command.append(key)
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("{")))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--texts", choices=["one", "phrasebank"], default="phrasebank")
    parser.add_argument("--data_dir")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--soak", type=int, default=0, help="requests in the soak (0: none)")
    parser.add_argument("--key", help="API key (the server must have it in FINLORA_API_KEYS)")
    parser.add_argument("--soak_concurrency", type=int, default=32)
    parser.add_argument(
        "--max_rss_growth",
        type=float,
        default=10.0,
        help="percent of RSS growth after the soak's first chunk that fails the run (10)",
    )
    parser.add_argument("--serve_args", default="", help="extra `finlora serve` flags")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install wrk")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    work = Path(tempfile.mkdtemp(prefix="finlora-load-"))
    body_file = work / "bodies.txt"
    body_file.write_text("\n".join(bodies(args.texts, args.data_dir)) + "\n")
    log_file = open(work / "server.log", "w")  # noqa: SIM115 (the server writes it until the end)
    server = subprocess.Popen(
        [sys.executable, "-m", "finlora", "serve", "--model", args.model, "--port", str(port),
         *args.serve_args.split()],
        stdout=log_file, stderr=subprocess.STDOUT,
        env={**os.environ, "FINLORA_LOG_LEVEL": "warning"},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while True:
            if server.poll() is not None:
                sys.exit((work / "server.log").read_text())
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                sys.exit("server not ready")
            time.sleep(0.5)
        wrk(url, body_file, 4, 3, args.key)  # warm-up
        rows = []
        for c in args.concurrency:
            before = rss_mb(server.pid)
            result = wrk(url, body_file, c, args.seconds, args.key)
            rows.append((f"c={c}", result, before, rss_mb(server.pid)))
        if args.soak:  # 10-second wrk runs until N answers; RSS after the first is the base
            total: dict = {}
            base = None
            while total.get("ok", 0) + total.get("refused", 0) + total.get("other_status", 0) < (
                args.soak
            ):
                result = wrk(url, body_file, args.soak_concurrency, 10, args.key)
                base = base or rss_mb(server.pid)
                for name, value in result.items():
                    if name in ("p50_ms", "p99_ms", "max_ms"):
                        total[name] = max(total.get(name, 0), value)
                    else:
                        total[name] = total.get(name, 0) + value
            total["rps"] = total["requests"] / total["duration_s"]
            rows.append((f"soak {total['requests']} (worst chunk p50/p99)", total, base,
                         rss_mb(server.pid)))  # fmt: skip
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
    print(f"texts: {args.texts}; wrk -t1, {args.seconds:g} s per level; server exit {code}\n")
    print(
        "| run | req/s | p50 ms | p99 ms | 200 | 503 | other | wrong id/count | socket errors "
        "| RSS MB before → after |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r, before, after in rows:
        print(f"| {name} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['ok']} | "
              f"{r['refused']} | {r['other_status']} | {r['wrong_id']}/{r['wrong_count']} | "
              f"{r['socket_errors']} | {before:.0f} → {after:.0f} |")  # fmt: skip
    if not args.soak:
        return 0
    _, soak, base, after = rows[-1]
    failures = soak_failures(soak, base, after, args.max_rss_growth)
    growth = 100 * (after / base - 1)
    print(
        f"\nsoak RSS growth after the first 10 s: {growth:+.1f}% "
        f"(limit: {args.max_rss_growth:+g}%): {'FAILED' if failures else 'ok'}"
    )
    for failure in failures:
        print(f"serve_load: soak failed: {failure}", file=sys.stderr)
    return 1 if failures else 0


def soak_failures(soak: dict, base_mb: float, after_mb: float, max_growth: float) -> list[str]:
    """Why the soak failed, if it did: RSS growth past `max_growth` percent after warm-up,
    answers other than 200 and the designed 503, wrong request IDs or prediction counts."""
    failures = []
    growth = 100 * (after_mb / base_mb - 1)
    if not growth <= max_growth:  # NaN (no /proc entry) fails too
        failures.append(
            f"RSS grew {growth:+.1f}% after warm-up ({base_mb:.0f} → {after_mb:.0f} MB), "
            f"more than {max_growth:+g}%"
        )
    if soak.get("other_status"):
        failures.append(f"{soak['other_status']} answers were neither 200 nor 503")
    if soak.get("wrong_id") or soak.get("wrong_count"):
        failures.append(
            f"{soak.get('wrong_id', 0)} answers carried a wrong request ID and "
            f"{soak.get('wrong_count', 0)} a wrong prediction count"
        )
    return failures


if __name__ == "__main__":
    sys.exit(main())
