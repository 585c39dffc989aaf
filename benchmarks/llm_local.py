"""Generated tokens/s of the local LLM server (``llm=local``) against slots and threads, and how close the LLM
stages come to the server's peak, measured in the same run.

Part 1, the server: for each ``--threads`` value one ``llama-server`` with the default local model and
``--parallel`` = the largest slot count; ``LLMClient`` runs with 1 (**baseline**: one request at a time), 2, 4
and 8 requests in flight, each level with a fresh response cache and every request generating exactly
``--max-tokens`` tokens (``ignore_eos``), checked against the server's ``/metrics`` counter. Rounds alternate
the levels so that a busy machine slows them alike; medians are reported.

Part 1b, servers side by side (``--side-by-side K``): K one-thread servers with the default slots, each sent
``--requests`` requests (as in part 1, all its slots busy) at the same time; their generated tokens/s in all,
against part 1's one server at one and at K threads with as many in flight. This is how a stage uses several
cores (``executor.tasks=K executor.workers=K``: a task starts its own server; the demo does it).

Part 2, the stages: ``textbooks-data stage=exercises`` and ``stage=textbooks`` (synthetic, the default
prompts and sampling) against a server with the default settings (``llm.local``); their generated tokens per
second of generation wall time (the stage's ``llm.seconds``) against two peaks: part 1's at the same threads
and slots (short prompts), and the server's on the stage's own work, its requests replayed (the same messages
and sampling, each generating as many tokens as it did in the stage: ``ignore_eos``) all at once to a fresh
server with the same settings, so with no time spent between the stage's phases or on its checks. Goal:
>= 0.9. Kept exercises per hour are printed too, and where a stage's time went, from the ``timings``
llama-server puts in every answer (read back from the stage's response cache): prompt tokens processed and
found in the slot's prompt cache per generated token, and the slots kept busy on average (the requests'
prompt + generation seconds over the wall seconds; at most ``llm.local.parallel``).

Usage: ``python benchmarks/llm_local.py [--rounds 2] [--requests 16] [--max-tokens 64] [--threads 1,2]
[--side-by-side 2] [--stage-requests 16]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from textbooks.llm.client import LLMClient
from textbooks.llm.config import LLMConfig, LocalServerConfig
from textbooks.llm.requests import ChatRequest
from textbooks.llm.server import local_server

TOPICS = ("lists", "dicts", "sets", "tuples", "strings", "files", "classes", "generators")
ALIAS = "bench"
TIMINGS = ("prompt_n", "cache_n", "predicted_n", "prompt_ms", "predicted_ms")  # llama-server's


def level(url: str, cache: Path, concurrency: int, n: int, max_tokens: int, seed: int) -> tuple[float, int]:
    """Seconds and generated tokens for ``n`` new requests with ``concurrency`` in flight."""
    cfg = LLMConfig(
        base_url=url,
        model=ALIAS,
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


def server_sweep(threads: int, levels: list[int], args: argparse.Namespace, tmp: str) -> dict[int, float]:
    speeds: dict[int, list[float]] = {c: [] for c in levels}
    cfg = LocalServerConfig(parallel=max(levels), ctx_size=1024 * max(levels), threads=threads, log_dir=tmp)
    t0 = time.perf_counter()
    with local_server(cfg, alias=ALIAS) as server:
        print(f"threads {threads}: server ready in {time.perf_counter() - t0:.1f}s")
        for r in range(args.rounds):
            for c in levels:
                before = server.metrics()["llamacpp:tokens_predicted_total"]
                cache = Path(tmp) / f"cache-{threads}-{r}-{c}.sqlite"
                wall, tokens = level(server.base_url, cache, c, args.requests, args.max_tokens, r)
                assert server.metrics()["llamacpp:tokens_predicted_total"] - before == tokens
                speeds[c].append(tokens / wall)
                print(
                    f"  round {r}, {c} in flight: {tokens} tokens in {wall:.1f}s = {tokens / wall:.1f} tok/s"
                )
    return {c: statistics.median(v) for c, v in speeds.items()}


def side_by_side(k: int, args: argparse.Namespace, tmp: str) -> float:
    """Generated tokens/s in all of ``k`` one-thread servers (default slots) answering at the same time, each
    with all its slots busy; the median of ``args.rounds`` rounds."""
    speeds = []
    with contextlib.ExitStack() as stack:
        cfg = LocalServerConfig(threads=1, log_dir=tmp)
        servers = [stack.enter_context(local_server(cfg, alias=ALIAS)) for _ in range(k)]
        for r in range(args.rounds):
            caches = [Path(tmp) / f"side-{k}-{r}-{i}.sqlite" for i in range(k)]
            with ThreadPoolExecutor(k) as pool:
                t0 = time.perf_counter()
                runs = [
                    pool.submit(
                        level, s.base_url, cache, cfg.parallel, args.requests, args.max_tokens, 100 + i
                    )
                    for i, (s, cache) in enumerate(zip(servers, caches))
                ]
                tokens = sum(f.result()[1] for f in runs)
                wall = time.perf_counter() - t0
            speeds.append(tokens / wall)
            print(f"  round {r}, {k} one-thread servers side by side: {tokens / wall:.1f} tok/s")
    return statistics.median(speeds)


def stage_speed(stage: str, n: int, tmp: str) -> dict[str, float]:
    """Generated tokens/s of one LLM stage (its own llm=local server, default settings)."""
    root = Path(tmp) / f"stage-{stage}"
    script = Path(sys.executable).with_name("textbooks-data")
    cmd = [str(script), f"stage={stage}", "llm=local", f"stage.n={n}", f"paths.root={root}", "progress=false"]
    cmd += [f"paths.data={root}/data", f"paths.cache={root}/cache"]
    cmd += ["stage.source=synthetic"] if stage == "exercises" else []
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    manifest = json.loads((root / "data" / stage / "manifest.json").read_text())
    llm = manifest["llm"]
    with sqlite3.connect(root / "cache" / "llm" / "responses.sqlite") as conn:
        query = "SELECT request, response, completion_tokens FROM responses ORDER BY created"
        rows = conn.execute(query).fetchall()
    answers = [json.loads(r[1]) for r in rows]
    replay = [  # the stage's requests in its order, each to generate what it generated there
        ChatRequest(r["messages"], ALIAS, {**r["params"], "max_tokens": tokens, "ignore_eos": True})
        for r, tokens in ((json.loads(row[0]), row[2]) for row in rows)
    ]
    total = {k: sum(a.get("timings", {}).get(k, 0) for a in answers) for k in TIMINGS}
    generated, slot_ms = total["predicted_n"] or 1, total["prompt_ms"] + total["predicted_ms"] or 1
    return {
        "tokens_per_s": llm["completion_tokens"] / llm["seconds"],
        "seconds": llm["seconds"],
        "kept": manifest["documents"],
        "requests": llm["requests"],
        "prompt_per_token": total["prompt_n"] / generated,
        "cached_per_token": total["cache_n"] / generated,
        "prompt_share": total["prompt_ms"] / slot_ms,
        "busy_slots": slot_ms / 1000 / llm["seconds"],
        "replay_tokens_per_s": replay_speed(replay, Path(tmp) / f"replay-{stage}.sqlite", tmp),
    }


def replay_speed(requests: list[ChatRequest], cache: Path, tmp: str) -> float:
    """Generated tokens/s of ``requests`` sent in order to a fresh server with the default settings, as many
    in flight as it has slots (``cache``: a new response cache, so that every request is sent)."""
    server_cfg = LocalServerConfig(log_dir=tmp)
    with local_server(server_cfg, alias=ALIAS) as server:
        cfg = LLMConfig(
            base_url=server.base_url,
            model=ALIAS,
            cache=str(cache),
            concurrency=server_cfg.parallel,
            progress=False,
        )
        with LLMClient(cfg) as client:
            t0 = time.perf_counter()
            results = client.run(requests)
            wall = time.perf_counter() - t0
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    return sum(r.completion_tokens for r in results) / wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--levels", default="1,2,4,8")
    ap.add_argument("--threads", default="1,2", help="server threads to compare")
    ap.add_argument("--side-by-side", type=int, default=0, help="K one-thread servers at once (0: skip)")
    ap.add_argument("--stage-requests", type=int, default=16, help="0: skip the stages")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    default = LocalServerConfig()
    print(f"model {default.model}; load average at start {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        table = {int(t): server_sweep(int(t), levels, args, tmp) for t in args.threads.split(",")}
        side = side_by_side(args.side_by_side, args, tmp) if args.side_by_side else None
        names = ("exercises", "textbooks") if args.stage_requests else ()
        stages = {s: stage_speed(s, args.stage_requests, tmp) for s in names}
    base = table[min(table)][levels[0]]
    print("\ngenerated tok/s (medians; in brackets: against 1 in flight with the fewest threads)")
    print(f"{'threads':>7}" + "".join(f"{f'{c} in flight':>20}" for c in levels))
    for t, row in table.items():
        print(f"{t:>7}" + "".join(f"{f'{row[c]:.1f} ({row[c] / base:.2f}x)':>20}" for c in levels))
    peak = table.get(default.threads or 0, {}).get(default.parallel)
    if side is not None:
        k, slots = args.side_by_side, default.parallel
        against = [
            f"{side / table[t][slots]:.2f}x one server with {t} thread(s)"
            for t in sorted({1, k})
            if slots in table.get(t, {})
        ]
        print(f"{k} one-thread servers side by side, {slots} in flight each: {side:.1f} tok/s = ", end="")
        print("; ".join(against) or f"no part-1 baseline at {slots} in flight")
    for s, m in stages.items():
        ratio = (
            f"{m['tokens_per_s'] / peak:.2f} of the server's peak"
            if peak
            else "no peak measured at the default"
        )
        per_hour = 3600 * m["kept"] / m["seconds"]
        print(
            f"stage {s}: {m['tokens_per_s']:.1f} tok/s = {ratio}; kept {m['kept']} of {m['requests']} ",
            end="",
        )
        print(f"({per_hour:.0f} kept per hour of generation)")
        replay = m["replay_tokens_per_s"]
        print(
            f"  its requests replayed at once: {replay:.1f} tok/s; the stage reached "
            f"{m['tokens_per_s'] / replay:.2f} of the server's speed on its own work"
        )
        print(
            f"  per generated token: {m['prompt_per_token']:.2f} prompt tokens processed, "
            f"{m['cached_per_token']:.2f} from the prompt cache; {m['prompt_share']:.0%} of the slots' time "
            f"on prompts; {m['busy_slots']:.2f} of {default.parallel} slots busy on average"
        )
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
