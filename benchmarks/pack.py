"""`pack` throughput vs raw tiktoken on the same input.

Baseline: ``encode_ordinary_batch`` on the texts already in memory (what tokenizing costs at best).
Ours: the whole ``pack`` stage from the directory: reading and decoding the files, encoding, appending
``<|endoftext|>``, writing the uint16 shards and sidecars, the manifest. Both use the same thread count.
Prints MB/s of each and the ratio (goal >= 0.8x).

    python benchmarks/pack.py [--tokenizer p50k_base] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from textbooks.data.engine.reader import read_texts
from textbooks.data.stages.pack import PackConfig, pack
from textbooks.io import stdlib_dir
from textbooks.tokenizer import load_tokenizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", default=str(stdlib_dir()))
    p.add_argument("--tokenizer", default="p50k_base")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    a = p.parse_args()
    enc = load_tokenizer(a.tokenizer)
    texts = list(read_texts([a.input]))
    mb = sum(len(t.encode()) for t in texts) / 1e6
    base, ours, tokens = [], [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):  # alternate, so drifting machine load hits both alike
            t0 = time.perf_counter()
            ids = enc.encode_ordinary_batch(texts, num_threads=a.threads)
            base.append(time.perf_counter() - t0)
            tokens = sum(map(len, ids)) + len(ids)
            t0 = time.perf_counter()
            m = pack(
                PackConfig(
                    inputs=[a.input], out_dir=f"{tmp}/{r}", tokenizer=a.tokenizer, num_threads=a.threads
                ),
                progress=False,
            )
            ours.append(time.perf_counter() - t0)
            assert m["tokens"] == tokens, (m["tokens"], tokens)
    b, o = mb / statistics.median(base), mb / statistics.median(ours)
    print(
        f"{len(texts)} files, {mb:.1f} MB, {tokens:,} tokens ({a.tokenizer}), {a.threads} threads, "
        f"median of {a.rounds} rounds"
    )
    print(f"tiktoken encode_ordinary_batch (in memory) : {b:6.2f} MB/s")
    print(f"textbooks pack (files -> shards, manifest)  : {o:6.2f} MB/s")
    print(f"ratio pack/encode = {o / b:.2f}x  (goal >= 0.8x)")


if __name__ == "__main__":
    main()
