"""Generated tokens/s of the local LLM server (``llm=local``) with 4 and 8 requests in flight, against the
same server answering one request at a time.

One ``llama-server`` (SmolLM2-135M-Instruct Q4_1, ``--parallel 8``: eight slots decoded together by
continuous batching) serves every level; the client is ``textbooks.llm.client.LLMClient`` with a fresh
response cache per level (nothing is answered from the cache) and ``concurrency`` = 1 (**baseline**), 4 and
8. Every request asks for exactly ``--max-tokens`` tokens (``ignore_eos``), so each level generates the same
number of tokens; the server's own counter (``/metrics``) is checked against the client's. Rounds
alternate the levels so that a busy machine slows them alike; medians are reported.
Usage: ``python benchmarks/llm_local.py [--rounds 2] [--requests 16] [--max-tokens 64] [--threads 1]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from textbooks.llm.client import LLMClient
from textbooks.llm.config import LLMConfig, LocalServerConfig
from textbooks.llm.server import local_server

MODEL = "SmolLM2-135M-Instruct-Q4_1"
TOPICS = ("lists", "dicts", "sets", "tuples", "strings", "files", "classes", "generators")


def level(url: str, cache: Path, concurrency: int, n: int, max_tokens: int, seed: int) -> tuple[float, int]:
    """Seconds and generated tokens for ``n`` new requests with ``concurrency`` in flight."""
    cfg = LLMConfig(
        base_url=url,
        model=MODEL,
        cache=str(cache),
        concurrency=concurrency,
        max_tokens=max_tokens,
        temperature=0.0,
        extra_body={"ignore_eos": True},
        progress=False,
    )
    with LLMClient(cfg) as client:
        prompts = [f"Teach me Python {TOPICS[i % len(TOPICS)]}, lesson {seed}.{i}." for i in range(n)]
        t0 = time.perf_counter()
        results = client.run([client.request(p) for p in prompts])
        wall = time.perf_counter() - t0
    assert all(r.ok and r.completion_tokens == max_tokens for r in results), [r.error for r in results]
    assert client.stats.http_requests == n  # nothing came from a cache
    return wall, sum(r.completion_tokens for r in results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--levels", default="1,4,8")
    ap.add_argument("--threads", type=int, default=LocalServerConfig.threads, help="server threads (0: all)")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    print(f"load average at start: {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs")
    speeds: dict[int, list[float]] = {c: [] for c in levels}
    with tempfile.TemporaryDirectory() as tmp:
        server_cfg = LocalServerConfig(
            parallel=max(levels), ctx_size=512 * max(levels), threads=args.threads or None, log_dir=tmp
        )
        t0 = time.perf_counter()
        with local_server(server_cfg, alias=MODEL) as server:
            print(f"server ready in {time.perf_counter() - t0:.2f}s: {server.describe()}")
            for r in range(args.rounds):
                for c in levels:
                    before = server.metrics()["llamacpp:tokens_predicted_total"]
                    cache = Path(tmp) / f"cache-{r}-{c}.sqlite"
                    wall, tokens = level(server.base_url, cache, c, args.requests, args.max_tokens, r)
                    assert server.metrics()["llamacpp:tokens_predicted_total"] - before == tokens
                    speeds[c].append(tokens / wall)
                    print(
                        f"round {r} concurrency {c}: {tokens} tokens in {wall:.2f}s = {tokens / wall:.1f} tok/s"
                    )
    base = statistics.median(speeds[levels[0]])
    print(f"\n{'concurrency':>11} {'tok/s (median)':>15} {'vs 1 at a time':>15}")
    for c in levels:
        med = statistics.median(speeds[c])
        print(f"{c:>11} {med:>15.1f} {med / base:>14.2f}x")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
