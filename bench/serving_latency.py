"""Serving latency and throughput of a trained model: PyTorch eager vs ONNX fp32 vs ONNX int8
in-process, and the HTTP service on loopback.

    python bench/serving_latency.py --model outputs/pb_lora [--threads 2] [--output FILE.json]

Needs a `finlora train` output dir (default recipe: `finlora train --config
config/phrasebank_lora.yaml`); exports it to ONNX with int8 first if it has no export yet.
Texts are the run's own test split (PhraseBank test sentences for the default recipe).
Each in-process backend runs in a fresh process; every timing includes tokenization and
the softmax/label records of `Predictor.predict`; HTTP timings are measured by the client,
JSON and loopback included.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from finlora.artifacts import EXPORT_INFO, read_json
from finlora.export.onnx import export_onnx, verification_data
from finlora.predictor import Predictor, find_onnx_dir


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(ms.mean()), 3),
    }


def bench_in_process(
    predictor: Predictor, texts: list[str], n: int, rounds: int, warmup_s: float
) -> dict:
    # Warm up for a fixed time, not a fixed count: with a 20-call (50 ms) warm-up the int8
    # batch-1 p50 of one model varied 1.8-3.8 ms between runs on this VM.
    deadline = time.perf_counter() + warmup_s
    i = 0
    while time.perf_counter() < deadline:
        predictor.predict([texts[i % len(texts)]])
        i += 1
    single = []
    for i in range(n):
        start = time.perf_counter()
        predictor.predict([texts[i % len(texts)]])
        single.append(time.perf_counter() - start)
    predictor.predict(texts[:32])
    start = time.perf_counter()
    done = 0
    for _ in range(rounds):
        for i in range(0, len(texts) - 31, 32):
            predictor.predict(texts[i : i + 32])
            done += 32
    elapsed = time.perf_counter() - start
    return {"batch1": percentiles(single), "batch32_texts_per_s": round(done / elapsed, 1)}


def measure_backend(
    model: Path,
    backend: str,
    precision: str,
    threads: int,
    texts: list[str],
    n: int,
    rounds: int,
    warmup_s: float,
) -> dict:
    predictor = Predictor.load(
        model, batch_size=32, backend=backend, precision=precision, threads=threads
    )
    return bench_in_process(predictor, texts, n, rounds, warmup_s)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_http(model: Path, threads: int, texts: list[str], n: int, concurrent_n: int) -> dict:
    import httpx

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "finlora", "-q", "serve", "--model", str(model),
         "--backend", "onnx", "--precision", "int8", "--threads", str(threads),
         "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while True:
            if server.poll() is not None:
                raise SystemExit(
                    "the server exited during start-up; run `finlora serve` to see why"
                )
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the server did not become ready in 300 s")
            time.sleep(0.2)
        with httpx.Client(base_url=base) as client:
            for text in texts[:50]:
                client.post("/v1/predict", json={"texts": [text]}).raise_for_status()
            single = []
            for i in range(n):
                start = time.perf_counter()
                client.post("/v1/predict", json={"texts": [texts[i % len(texts)]]})
                single.append(time.perf_counter() - start)

        async def concurrent(workers: int) -> tuple[float, list[float], int]:
            latencies: list[float] = []
            errors = 0
            counter = iter(range(concurrent_n))
            limits = httpx.Limits(max_connections=workers)
            async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:

                async def worker() -> None:
                    nonlocal errors
                    for i in counter:
                        start = time.perf_counter()
                        r = await client.post(
                            "/v1/predict", json={"texts": [texts[i % len(texts)]]}
                        )
                        latencies.append(time.perf_counter() - start)
                        errors += r.status_code != 200

                start = time.perf_counter()
                await asyncio.gather(*(worker() for _ in range(workers)))
                return time.perf_counter() - start, latencies, errors

        elapsed, latencies, errors = asyncio.run(concurrent(16))
        return {
            "concurrency1": percentiles(single),
            "concurrency16": {
                "requests_per_s": round(concurrent_n / elapsed, 1),
                **percentiles(latencies),
                "errors": errors,
            },
        }
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="outputs/pb_lora", help="`finlora train` output dir")
    parser.add_argument("--threads", type=int, default=2, help="inference threads")
    parser.add_argument("--n", type=int, default=1000, help="batch-1 calls per backend")
    parser.add_argument("--rounds", type=int, default=3, help="passes over the test set at 32")
    parser.add_argument("--warmup_s", type=float, default=3.0, help="batch-1 warm-up per backend")
    parser.add_argument("--http_n", type=int, default=1000, help="requests at concurrency 1")
    parser.add_argument("--concurrent_n", type=int, default=2000, help="requests at 16")
    parser.add_argument("--skip_http", action="store_true")
    parser.add_argument("--output", help="also write the results as JSON here")
    args = parser.parse_args()

    model = Path(args.model)
    if not (model / "config.json").is_file():
        raise SystemExit(
            f"{model} is not a trained model; train the default one with\n"
            f"  finlora train --config config/phrasebank_lora.yaml --output_dir {model}"
        )
    labels = read_json(model / "config.json")["id2label"]
    if not verification_data(model, list(labels.values())).test_texts:
        raise SystemExit(
            f"cannot rebuild the test split of {model}; point FINLORA_DATA_DIR (or the run's "
            "data path) at its dataset: the benchmark runs on the model's test sentences"
        )
    onnx_dir = find_onnx_dir(model)
    if onnx_dir is None or "model.int8.onnx" not in read_json(onnx_dir / EXPORT_INFO)["files"]:
        print("exporting to ONNX with int8 first ...", file=sys.stderr)
        export_onnx(model, quantize="int8")
    export = read_json(model / "onnx" / EXPORT_INFO)
    labels = export["labels"]
    data = verification_data(model, labels)
    texts = data.test_texts or data.texts
    _, mask, _ = Predictor.load(model, backend="onnx").encode(texts)
    print(f"{len(texts)} {data.source if not data.test_texts else 'test'} texts", file=sys.stderr)

    results: dict = {
        "model": str(model),
        "texts": len(texts),
        "mean_tokens": round(float(mask.sum(1).mean()), 1),
        "threads": args.threads,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.processor()}",
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "in_process": {},
    }
    # Each backend in a fresh interpreter, as a service would run it: no thread pool or
    # allocator state left over from the backend measured before.
    spawn = multiprocessing.get_context("spawn")
    for name, backend, precision in (
        ("torch_fp32", "torch", "auto"),
        ("onnx_fp32", "onnx", "fp32"),
        ("onnx_int8", "onnx", "int8"),
    ):
        with spawn.Pool(1) as pool:
            results["in_process"][name] = pool.apply(
                measure_backend,
                (
                    model,
                    backend,
                    precision,
                    args.threads,
                    texts,
                    args.n,
                    args.rounds,
                    args.warmup_s,
                ),
            )
        print(name, results["in_process"][name], file=sys.stderr)
    torch_tput = results["in_process"]["torch_fp32"]["batch32_texts_per_s"]
    results["int8_throughput_vs_torch"] = round(
        results["in_process"]["onnx_int8"]["batch32_texts_per_s"] / torch_tput, 2
    )
    int8 = export["parity"].get("int8", {})
    results["int8_test_macro_f1_loss"] = int8.get("test_macro_f1_loss")
    results["int8_label_agreement"] = int8.get("label_agreement")
    if not args.skip_http:
        results["http_onnx_int8"] = bench_http(
            model, args.threads, texts, args.http_n, args.concurrent_n
        )
    results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(results, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
