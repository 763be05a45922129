"""Load a node's API with concurrent streaming chat clients and check it recovers.

    uv run python tools/load_api.py --url http://127.0.0.1:52415 --clients 32 --seconds 60

Each client sends streaming chat completions back to back until the time is
up; requests still running then are cancelled (so disconnects are exercised
under load too). The report gives errors, requests completed, tokens/s, time
to first token, and the node's RSS and live KV caches (from /health) before
and after. The exit status is 1 if any request failed or KV caches stayed live.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import trio

PROMPTS = (
    "What is the capital of France?",
    "Name three colors.",
    "Write a haiku about the sea.",
    "What is 12 times 12?",
    "Give me a short tip for learning Python.",
    "Why is the sky blue?",
    "Tell me a fun fact about cats.",
    "List two planets.",
)


@dataclass
class Stats:
    completed: int = 0
    cancelled: int = 0
    completion_tokens: int = 0
    ttfts: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass
class Report:
    clients: int
    seconds: float
    completed: int
    cancelled: int
    errors: int
    first_errors: list[str]
    completion_tokens: int
    tokens_per_s: float
    ttft_p50_s: float | None
    ttft_p95_s: float | None
    health_before: dict[str, Any]
    health_after: dict[str, Any]
    settled_s: float

    @property
    def ok(self) -> bool:
        after = self.health_after
        return self.errors == 0 and after["kv_caches"] == 0 and after["active_requests"] == 0


async def one_request(
    client: httpx.AsyncClient, body: dict[str, Any], stats: Stats, started: float
) -> None:
    """Stream one chat completion, checking the stream's shape as it goes."""
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            stats.errors.append(f"HTTP {response.status_code}: {response.text[:200]}")
            return
        usage, done, first = None, False, None
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            chunk = json.loads(line[6:])
            if "error" in chunk:
                stats.errors.append(f"error event: {chunk['error'].get('message')}")
                return
            if chunk.get("usage"):
                usage = chunk["usage"]
            elif first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.monotonic() - started
        if not done or usage is None:
            stats.errors.append("stream ended without usage and [DONE]")
            return
        stats.completed += 1
        stats.completion_tokens += usage["completion_tokens"]
        if first is not None:
            stats.ttfts.append(first)


async def client_loop(
    client: httpx.AsyncClient, number: int, model: str, max_tokens: int, stats: Stats
) -> None:
    for sequence in range(sys.maxsize):
        body = {
            "model": model,
            "messages": [{"role": "user", "content": PROMPTS[(number + sequence) % len(PROMPTS)]}],
            "temperature": 0.7,
            "seed": number * 1000 + sequence,
            "max_tokens": max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        started = time.monotonic()
        try:
            await one_request(client, body, stats, started)
        except trio.Cancelled:
            stats.cancelled += 1
            raise
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            stats.errors.append(f"{type(exc).__name__}: {exc}")


async def health(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/health")
    response.raise_for_status()
    return response.json()


async def wait_settled(client: httpx.AsyncClient, timeout: float) -> tuple[dict[str, Any], float]:
    """Wait for no live request and no KV cache; return the last /health and the wait."""
    started = time.monotonic()
    with trio.move_on_after(timeout):
        while True:
            report = await health(client)
            if report["active_requests"] == 0 and report["kv_caches"] == 0:
                break
            await trio.sleep(0.1)
    return await health(client), time.monotonic() - started


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


async def run_load(
    url: str,
    api_key: str | None,
    clients: int,
    seconds: float,
    max_tokens: int = 32,
    model: str | None = None,
    settle_timeout: float = 120.0,
) -> Report:
    """Run the load and return its report (see the module docstring)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=clients + 4)
    timeout = httpx.Timeout(30.0, read=600.0)
    async with httpx.AsyncClient(
        base_url=url, headers=headers, limits=limits, timeout=timeout
    ) as client:
        before = await health(client)
        if model is None:
            models = (await client.get("/v1/models")).raise_for_status().json()
            model = models["data"][0]["id"]
        stats = Stats()
        started = time.monotonic()
        with trio.move_on_after(seconds):
            async with trio.open_nursery() as nursery:
                for number in range(clients):
                    nursery.start_soon(client_loop, client, number, model, max_tokens, stats)
        elapsed = time.monotonic() - started
        after, settled = await wait_settled(client, settle_timeout)
    return Report(
        clients=clients,
        seconds=round(elapsed, 1),
        completed=stats.completed,
        cancelled=stats.cancelled,
        errors=len(stats.errors),
        first_errors=stats.errors[:5],
        completion_tokens=stats.completion_tokens,
        tokens_per_s=round(stats.completion_tokens / elapsed, 2),
        ttft_p50_s=percentile(stats.ttfts, 0.5),
        ttft_p95_s=percentile(stats.ttfts, 0.95),
        health_before=before,
        health_after=after,
        settled_s=round(settled, 2),
    )


def print_report(report: Report) -> None:
    before, after = report.health_before, report.health_after
    mib = 2**20

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f} s"

    print(f"clients            {report.clients} for {report.seconds} s")
    print(f"requests completed {report.completed} (+{report.cancelled} cancelled at the end)")
    print(f"errors             {report.errors}")
    for error in report.first_errors:
        print(f"  {error}")
    print(f"completion tokens  {report.completion_tokens} ({report.tokens_per_s} tokens/s)")
    print(f"TTFT p50 / p95     {seconds(report.ttft_p50_s)} / {seconds(report.ttft_p95_s)}")
    print(
        f"RSS before / after {before['rss_bytes'] / mib:.0f} / {after['rss_bytes'] / mib:.0f} MiB"
    )
    print(f"KV caches before / after  {before['kv_caches']} / {after['kv_caches']}")
    print(f"settled after      {report.settled_s} s")
    print("OK" if report.ok else "FAILED")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:52415")
    parser.add_argument("--api-key", default=os.environ.get("EXOQUIC_API_KEY"))
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--model", help="default: the first model the node lists")
    parser.add_argument(
        "--settle-timeout",
        type=float,
        default=120.0,
        help="how long the node may take to free every KV cache after the load (seconds)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    report = trio.run(
        run_load,
        args.url,
        args.api_key,
        args.clients,
        args.seconds,
        args.max_tokens,
        args.model,
        args.settle_timeout,
    )
    if args.json:
        print(json.dumps({**asdict(report), "ok": report.ok}))
    else:
        print_report(report)
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
