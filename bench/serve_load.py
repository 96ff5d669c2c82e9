"""Throughput and latency of a running guard: /v1/guard/scan at several concurrencies, and the
latency the guard adds in front of an upstream (chat completions through it vs. to the upstream).

    python bench/serve_load.py MODEL_DIR [--concurrency 1,8,32] [--requests 200] [--proxy]

Starts real `headguard serve` processes (uvicorn, HTTP) and writes bench/results/<model>.serve.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from headguard.lab.splits import read_split

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.servers import serve  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def load(url: str, path: str, bodies: list[dict], concurrency: int) -> dict:
    latencies: list[float] = []
    errors = 0
    queue = list(bodies)

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while queue:
            body = queue.pop()
            started = time.perf_counter()
            r = await client.post(url + path, json=body)
            latencies.append(time.perf_counter() - started)
            errors += r.status_code >= 500

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=300) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    wall = time.perf_counter() - started
    return {"concurrency": concurrency, "requests": len(latencies), "errors": errors,
            "throughput_rps": round(len(latencies) / wall, 2), "p50_ms": round(1000 * percentile(latencies, 0.5), 1),
            "p99_ms": round(1000 * percentile(latencies, 0.99), 1),
            "mean_ms": round(1000 * statistics.fmean(latencies), 1)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--proxy", action="store_true", help="also measure the guard's added latency as a proxy")
    args = parser.parse_args()
    texts = [ex.text for ex in read_split(args.model, "test")]
    bodies = [{"input": texts[i % len(texts)]} for i in range(args.requests)]
    report: dict = {"model": args.model.name, "scan": []}
    with tempfile.TemporaryDirectory() as tmp:
        with serve(args.model, Path(tmp), name="bench") as guard:
            asyncio.run(load(guard.url, "/v1/guard/scan", bodies[:16], 4))  # warm-up
            for c in map(int, args.concurrency.split(",")):
                row = asyncio.run(load(guard.url, "/v1/guard/scan", bodies, c))
                print(json.dumps(row), flush=True)
                report["scan"].append(row)
        if args.proxy:
            # Same model on both sides; the upstream in monitor mode so it only serves.
            env = {"HEADGUARD_MODE": "monitor", "HEADGUARD_MAX_NEW_TOKENS": "4"}
            with serve(args.model, Path(tmp), env, name="upstream") as upstream:
                model = httpx.get(f"{upstream.url}/v1/models").json()["data"][0]["id"]
                with serve(args.model, Path(tmp), {**env, "HEADGUARD_MODE": "enforce",
                                                    "HEADGUARD_UPSTREAM_URL": f"{upstream.url}/v1"},
                           name="front") as front:
                    chats = [{"model": model, "temperature": 0, "max_tokens": 4,
                              "messages": [{"role": "user", "content": t}]} for t in texts[:50]]
                    direct = asyncio.run(load(upstream.url, "/v1/chat/completions", chats, 1))
                    via = asyncio.run(load(front.url, "/v1/chat/completions", chats, 1))
            report["proxy"] = {"direct": direct, "through_guard": via,
                               "added_p50_ms": round(via["p50_ms"] - direct["p50_ms"], 1)}
            print(json.dumps(report["proxy"]), flush=True)
    (RESULTS / f"{args.model.name}.serve.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
