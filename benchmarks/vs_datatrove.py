"""Our ``dedup`` and ``pack`` stages against datatrove's own pipeline steps on the same corpus and workers.

What a researcher would run instead of this library's stages on The Stack-scale data is datatrove itself
(``MinhashDedupSignature`` -> ``MinhashDedupBuckets`` -> ``MinhashDedupCluster`` -> ``MinhashDedupFilter``, and
``DocumentTokenizer``), so both sides run here on the same ingested corpus, through their own executors
(``textbooks-data`` with the local executor; datatrove's ``LocalPipelineExecutor``), with the same number of
worker processes, each command in a fresh process whose wall time, start-up included, is measured.

* **Dedup settings**: datatrove's defaults (5-grams, 14 bands x 8 rows = 112 permutations, seed 1); ours set to
  them (``num_perm=112 lsh_bands=14``) and ``threshold=0.72``, the LSH curve's midpoint (1/14)^(1/8) = 0.719,
  which datatrove leaves implicit (it keeps every pair sharing a band; ours checks the estimated Jaccard).
  The shingles are the same on both sides: datatrove is given our word tokenizer (ASCII ``\\w+``) and its text
  normalisation is turned off (its default English tokenizer needs spaCy, and lower-casing, ``_`` as
  punctuation and digits as 0 would change the shingle sets). Only the hash functions (ours: BLAKE2b token
  hashes combined in numpy, datasketch's 32-bit ``affine32`` permutations; datatrove: 64-bit hash of the
  joined n-gram, 64-bit permutations modulo 2^61 - 1; SHA-1 instead, its other hash: with ``xxhash`` 4.1 its default
  passes ``str`` to ``xxh64_intdigest``, a TypeError) and the clustering rules differ (ours: the first document of a
  cluster kept, each removal checked against it; datatrove: union-find over band collisions, one per
  connected component kept).
* **Decisions**: documents removed by each side, by both, by one only; each one-side removal's pair (ours:
  the document it duplicates; datatrove: its cluster's kept document) with the exact Jaccard of the two
  documents' 5-gram sets; ``--plant`` near copies of corpus documents (an identifier renamed, lines dropped,
  comments inserted) and the recall of each side on them (copy and original in one cluster).
* **Pack**: ours (``stage=pack``, p50k_base via tiktoken) against ``DocumentTokenizer`` with the same encoding
  as a ``tokenizers`` file built from tiktoken's p50k_base ranks (every document's tokens are compared); one
  tokenizer thread per task on both sides (``stage.num_threads=1``; ``TOKENIZERS_PARALLELISM=false``).

Peak memory: RSS of the largest single process of a command (its workers included), sampled every 50 ms with
psutil. Throughput per core = documents (or MB, tokens) per second of wall time / worker processes; each
command's CPU seconds (user + system, its processes included) are printed too, since on a shared machine the
other jobs move wall times far more than CPU times.

Usage: ``python benchmarks/vs_datatrove.py [--input stdlib|site-packages|DIR] [--workers 1 2] [--plant 60]``
"""

from __future__ import annotations

import argparse
import collections
import functools
import hashlib
import json
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from datatrove.utils.word_tokenizers import WordTokenizer

HERE = Path(__file__).resolve().parent
SHINGLE, BANDS, ROWS, SEED = 5, 14, 8, 1  # datatrove's MinhashConfig defaults
THRESHOLD = 0.72  # (1 / BANDS) ** (1 / ROWS) = 0.719, where datatrove's LSH curve crosses 1/2
TOKEN_PATTERN = r"\w+"  # our stage's default shingle tokens (ASCII)
EOT = "<|endoftext|>"
MEMBERS = 2000  # cluster members searched for a removed document's closest one


# -- datatrove's side (run in its own process: ``python -c "import vs_datatrove; ..."``) ----------------------
class RegexWords(WordTokenizer):
    """A datatrove word tokenizer that splits as our dedup stage does (ASCII ``\\w+``)."""

    def __init__(self) -> None:
        super().__init__("code")
        self.rx = re.compile(TOKEN_PATTERN, re.ASCII)

    def word_tokenize(self, text: str) -> list[str]:
        return self.rx.findall(text)

    def sent_tokenize(self, text: str) -> list[str]:
        return [text]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [(0, len(text))]


def datatrove_dedup(inp: str, out: str, workers: int) -> None:
    """datatrove's four MinHash steps on the Parquet files in ``inp``, as its documentation chains them."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.writers import ParquetWriter
    from datatrove.utils.hashing import HashConfig
    from datatrove.utils.text import TextNormConfig

    norm = TextNormConfig(
        lowercase=False,
        norm_whitespace=False,
        remove_punctuation=False,
        norm_unicode_diacritics=False,
        norm_numbers=False,
    )
    cfg = MinhashConfig(
        n_grams=SHINGLE,
        num_buckets=BANDS,
        hashes_per_bucket=ROWS,
        seed=SEED,
        norm_config=norm,
        hash_config=HashConfig(
            precision=64, hash_fc="sha1"
        ),  # its default xxhash64 fails on str with xxhash 4
    )
    o = out.rstrip("/")

    def reader() -> ParquetReader:
        return ParquetReader(inp, glob_pattern="*.parquet", text_key="text", id_key="id")

    steps = [
        ([reader(), MinhashDedupSignature(f"{o}/sigs", config=cfg, language=RegexWords())], workers),
        ([MinhashDedupBuckets(f"{o}/sigs", f"{o}/buckets", config=cfg)], BANDS),
        ([MinhashDedupCluster(f"{o}/buckets", f"{o}/remove", config=cfg, save_cluster_id=True)], 1),
        (
            [
                reader(),
                MinhashDedupFilter(
                    f"{o}/remove",
                    exclusion_writer=ParquetWriter(f"{o}/removed", expand_metadata=True),
                    load_cluster_ids=True,
                ),
                ParquetWriter(f"{o}/kept", expand_metadata=True),
            ],
            workers,
        ),
    ]
    for i, (pipeline, tasks) in enumerate(steps):
        LocalPipelineExecutor(
            pipeline, tasks=tasks, workers=min(workers, tasks), logging_dir=f"{o}/logs-{i}"
        ).run()


def datatrove_tokenize(inp: str, out: str, workers: int, tokenizer_file: str, batch: int) -> None:
    """``DocumentTokenizer`` over the Parquet files in ``inp``, documents in input order (no shuffling),
    ``batch`` documents per ``encode_batch`` (its default, 10,000, holds every token's ``Encoding`` fields at
    once: 14.7 GB RSS for 10,000 site-packages files here)."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.tokens import DocumentTokenizer

    pipeline = [
        ParquetReader(inp, glob_pattern="*.parquet", text_key="text", id_key="id"),
        DocumentTokenizer(
            out,
            tokenizer_name_or_path=tokenizer_file,
            eos_token=EOT,
            shuffle_documents=False,
            batch_size=batch,
        ),
    ]
    LocalPipelineExecutor(pipeline, tasks=workers, workers=workers, logging_dir=f"{out}-logs").run()


# -- measuring a command ------------------------------------------------------------------------------------
def measured(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, float]:
    """Wall seconds of ``cmd``, CPU seconds of it and its reaped descendants (user + system; what the other
    jobs on a shared machine do not change), and the peak RSS (MB) of its largest process, sampled every 50 ms."""
    peak = 0
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err: list[bytes] = []
    drain = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)  # type: ignore[union-attr]
    drain.start()
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            for p in [root, *root.children(recursive=True)]:
                peak = max(peak, p.memory_info().rss)
        except psutil.Error:
            pass
        time.sleep(0.05)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    drain.join()
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{b''.join(err).decode()[-3000:]}")
    return seconds, cpu, peak / 1e6


def ours(root: Path, stage: str, tasks: int, *args: str) -> list[str]:
    """The ``textbooks-data`` command a user runs, with ``tasks`` tasks on as many worker processes."""
    return [
        sys.executable, "-m", "textbooks.data.app", f"paths.root={root}", "progress=false", f"stage={stage}",
        f"executor.tasks={tasks}", f"executor.workers={tasks}", *args,
    ]  # fmt: skip


def theirs(call: str) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    return [sys.executable, "-c", f"import vs_datatrove as m; m.{call}"], env


# -- the corpus and the planted near copies ----------------------------------------------------------------
def words(text: str) -> list[str]:
    return re.findall(TOKEN_PATTERN, text, re.ASCII)


def shingles(text: str) -> set[tuple[str, ...]]:
    """The exact 5-gram set both sides hash (a shorter document is one n-gram of all its tokens)."""
    t = words(text)
    k = min(SHINGLE, len(t))
    return {tuple(t[i : i + k]) for i in range(len(t) - k + 1)} if t else set()


def near_copy(text: str, kind: int, rng: random.Random) -> str:
    """A light edit of the kind near-dedup exists for: a renamed identifier, dropped lines, added comments."""
    lines = text.splitlines(keepends=True)
    if kind == 0:
        names = [
            w for w, n in collections.Counter(words(text)).most_common(40) if not w.isdigit() and len(w) > 3
        ]
        name = rng.choice(names) if names else "self"
        return re.sub(rf"\b{re.escape(name)}\b", name + "_x", text)
    if kind == 1:
        return "".join(line for line in lines if rng.random() >= 0.04)
    return "".join(line + ("# reviewed\n" if i % 30 == 29 else "") for i, line in enumerate(lines))


def plant(corpus: Path, out: Path, n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Write ``n`` near copies of distinct mid-sized corpus documents to ``out``; (original id, copy id) pairs."""
    table = pq.read_table(sorted(corpus.glob("part-*.parquet")))
    rows = table.to_pylist()
    rng = random.Random(seed)
    fit = [r for r in rows if 300 <= len(words(r["text"])) <= 20_000]
    chosen = rng.sample(fit, min(n, len(fit)))
    copies, pairs = [], []
    for i, r in enumerate(chosen):
        c = dict(r, id=f"planted-{i:03d}-{r['id']}", text=near_copy(r["text"], i % 3, rng))
        copies.append(c)
        pairs.append((r["id"], c["id"]))
    pq.write_table(pa.Table.from_pylist(copies, schema=table.schema), out)
    return pairs


# -- decisions ---------------------------------------------------------------------------------------------
def read_rows(folder: Path, columns: list[str], pattern: str = "*.parquet") -> list[dict[str, Any]]:
    """Rows of the Parquet files in ``folder``; a column a file lacks reads as -1 (datatrove writes no
    ``minhash_cluster_id`` for a task that had nothing to remove)."""
    rows = []
    for f in sorted(folder.glob(pattern)):
        have = [c for c in columns if c in pq.read_schema(f).names]
        rows += [{c: -1 for c in columns} | r for r in pq.read_table(f, columns=have).to_pylist()]
    return rows


def our_decisions(out: Path) -> tuple[dict[str, int], dict[str, str]]:
    """(document id -> cluster) for every document, and (removed id -> the kept id it duplicates)."""
    kept = read_rows(out, ["id", "minhash_cluster"], "part-*.parquet")
    removed = read_rows(out / "removed", ["id", "duplicate_of", "minhash_cluster"])
    cluster = {r["id"]: r["minhash_cluster"] for r in kept + removed}
    return cluster, {r["id"]: r["duplicate_of"] for r in removed}


def their_decisions(out: Path) -> tuple[dict[str, int], dict[str, str]]:
    """The same from datatrove's kept and excluded documents (``minhash_cluster_id``; -1: no duplicates)."""
    kept = read_rows(out / "kept", ["id", "minhash_cluster_id"])
    removed = read_rows(out / "removed", ["id", "minhash_cluster_id"])
    cluster = {r["id"]: r["minhash_cluster_id"] for r in kept + removed}
    rep = {r["minhash_cluster_id"]: r["id"] for r in kept if r["minhash_cluster_id"] != -1}
    # a task with nothing to remove loads no cluster ids, so with several tasks a removed document's kept
    # partner may be unknown (None); the decisions are compared on the runs with one worker
    return cluster, {r["id"]: rep.get(r["minhash_cluster_id"]) for r in removed}


def summary(values: list[float]) -> str:
    if not values:
        return "-"
    return f"min {min(values):.3f}, median {statistics.median(values):.3f}, max {max(values):.3f}"


def short_name(source: str, doc: str) -> str:
    """A readable name: the path below site-packages or the stdlib, marked when it is a planted copy."""
    name = re.sub(r"^.*?/(site-packages|python3\.\d+)/", "", source)
    return f"{name} (planted copy)" if doc.startswith("planted-") else name


def compare(
    text: dict[str, str],
    src: dict[str, str],
    o: tuple[dict[str, int], dict[str, str]],
    d: tuple[dict[str, int], dict[str, str]],
    pairs: list[tuple[str, str]],
    examples: int,
) -> dict[str, Any]:
    """Removed by each, both, one only; each one-side removal explained by exact Jaccard similarities."""
    (oc, orem), (dc, drem) = o, d
    n = len(text)
    both = orem.keys() & drem.keys()
    only_o, only_d = sorted(orem.keys() - drem.keys()), sorted(drem.keys() - orem.keys())
    sets: dict[
        str, set[int]
    ] = {}  # the n-grams' 64-bit hashes: exact but for hash collisions (~1e-19 a pair)

    def jac(a: str, b: str) -> float:
        x, y = (
            sets[i] if i in sets else sets.setdefault(i, set(map(hash, shingles(text[i])))) for i in (a, b)
        )
        return len(x & y) / len(x | y) if x or y else 1.0

    def together(clusters: dict[str, int], a: str, b: str, singleton: int | None) -> bool:
        return clusters[a] == clusters[b] and clusters[a] != singleton

    res: dict[str, Any] = {
        "documents": n,
        "removed_ours": len(orem),
        "removed_datatrove": len(drem),
        "removed_both": len(both),
        "ours_only": len(only_o),
        "datatrove_only": len(only_d),
        "agreement": 1 - (len(only_o) + len(only_d)) / n,
    }
    print(
        f"removed: ours {len(orem)}, datatrove {len(drem)}, both {len(both)}, ours only {len(only_o)}, "
        f"datatrove only {len(only_d)}; documents with the same decision: {res['agreement']:.2%} of {n}"
    )
    for label, only, rem, own_c, own_single, other_c, other_single in (
        ("ours only", only_o, orem, oc, None, dc, -1),
        ("datatrove only", only_d, drem, dc, -1, oc, None),
    ):
        members = collections.defaultdict(list)
        for x, c in own_c.items():
            if c != own_single:
                members[c].append(x)
        why: dict[str, list[str]] = collections.defaultdict(list)
        pair_j, best_j = {}, {}
        for x in only:
            pair_j[x] = jac(x, rem[x]) if rem[x] is not None else float("nan")
            near = [y for y in members[own_c[x]][:MEMBERS] if y != x]  # a cluster's first MEMBERS documents
            best_j[x] = max(map(functools.partial(jac, x), near), default=float("nan"))
            if any(together(other_c, x, y, other_single) for y in [rem[x], *near] if y is not None):
                why["the other side groups it with a member of its cluster and keeps it instead"].append(x)
            elif len(words(text[x])) < SHINGLE:
                why[f"under {SHINGLE} tokens: datatrove makes no shingles, never removes it"].append(x)
            elif best_j[x] >= THRESHOLD:
                why[
                    f"a cluster member at exact Jaccard >= {THRESHOLD} the other side does not group it with"
                ].append(x)
            else:
                why[
                    f"no cluster member at exact Jaccard >= {THRESHOLD} (joined by LSH collisions alone)"
                ].append(x)
        res[label] = {
            "reasons": {k: len(v) for k, v in why.items()},
            "pair_jaccard": summary([pair_j[x] for x in only]),
            "best_jaccard_in_cluster": summary([best_j[x] for x in only]),
        }
        print(
            f"  {label}: {len(only)}; exact Jaccard to the kept document {res[label]['pair_jaccard']}; "
            f"to the closest member of its cluster {res[label]['best_jaccard_in_cluster']}"
        )
        for reason, xs in why.items():
            print(f"    {len(xs)}: {reason}")
            xs = sorted(xs, key=lambda x: best_j[x])
            for x in dict.fromkeys(xs[:examples] + xs[-examples:]):
                print(
                    f"      J={pair_j[x]:.3f} (closest {best_j[x]:.3f})  {short_name(src[x], x)}  ~  "
                    f"{short_name(src[rem[x]], rem[x]) if rem[x] else '?'}"
                )
    # a planted pair is resolved when the output does not keep both documents (the original may go as a
    # duplicate of a third document, and the copy then stays if it is not close enough to that one)
    pj = [jac(a, b) for a, b in pairs]
    done_o = [a in orem or b in orem for a, b in pairs]
    done_d = [a in drem or b in drem for a, b in pairs]
    above = [j >= THRESHOLD for j in pj]
    res["planted"] = {
        "pairs": len(pairs),
        "above_threshold": sum(above),
        "ours": sum(done_o),
        "datatrove": sum(done_d),
        "ours_above": sum(x and y for x, y in zip(done_o, above)),
        "datatrove_above": sum(x and y for x, y in zip(done_d, above)),
        "jaccard": summary(pj),
    }
    if pairs:
        p = res["planted"]
        print(
            f"planted near copies: {len(pairs)} (exact Jaccard {summary(pj)}; {p['above_threshold']} at >= "
            f"{THRESHOLD}); pairs not both kept: ours {p['ours']} ({p['ours_above']} of those >= {THRESHOLD}), "
            f"datatrove {p['datatrove']} ({p['datatrove_above']})"
        )
        for (a, _), j, x, y in zip(pairs, pj, done_o, done_d):
            if not (x and y):
                found = "ours only" if x else "datatrove only" if y else "neither"
                print(f"    J={j:.3f} resolved by {found}: {short_name(src[a], a)}")
    return res


# -- tokens ------------------------------------------------------------------------------------------------
def hf_tokenizer(name: str, path: Path) -> Path:
    """A ``tokenizers`` file that encodes as tiktoken's ``name`` (byte-level BPE from its ranks, tiktoken's
    split pattern, whole pieces in the vocabulary taken as they are); no download."""
    import tiktoken
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    enc = tiktoken.get_encoding(name)
    ranks: dict[bytes, int] = enc._mergeable_ranks
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    others = [b for b in range(256) if b not in printable]
    byte_char = {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(others)}

    def s(token: bytes) -> str:
        return "".join(byte_char[b] for b in token)

    merges = []
    for token, rank in ranks.items():
        splits = [
            (token[:i], token[i:]) for i in range(1, len(token)) if token[:i] in ranks and token[i:] in ranks
        ]
        merges += sorted(((a, b, rank) for a, b in splits), key=lambda m: (ranks[m[0]], ranks[m[1]]))
    merges.sort(key=lambda m: m[2])
    vocab = {s(t): r for t, r in ranks.items()} | dict(enc._special_tokens)
    tok = Tokenizer(
        models.BPE(vocab, [(s(a), s(b)) for a, b, _ in merges], fuse_unk=False, ignore_merges=True)
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(enc._pat_str), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.save(str(path))
    return path


def our_documents(out: Path, eot: int) -> tuple[collections.Counter, int]:
    """Digests of every document's tokens in our shards (split at ``<|endoftext|>``), and the token count."""
    digests: collections.Counter = collections.Counter()
    total = 0
    for f in sorted(out.glob("shard-*.bin")):
        meta = json.loads(f.with_suffix(".json").read_text())
        ids = np.fromfile(f, dtype=meta["dtype"])
        total += len(ids)
        ends = np.flatnonzero(ids == eot) + 1
        for a, b in zip([0, *ends[:-1]], ends):
            digests[hashlib.sha1(ids[a:b].astype(np.uint32).tobytes()).digest()] += 1
    return digests, total


def their_documents(out: Path) -> tuple[collections.Counter, int]:
    """The same from ``DocumentTokenizer``'s ``.ds`` files and their ``.ds.index`` of document ends."""
    digests: collections.Counter = collections.Counter()
    total = 0
    for f in sorted(out.glob("*.ds")):
        ids = np.fromfile(f, dtype=np.uint16)
        total += len(ids)
        ends = np.fromfile(f"{f}.index", dtype=np.uint64).astype(np.int64)
        for a, b in zip([0, *ends[:-1]], ends):
            digests[hashlib.sha1(ids[a:b].astype(np.uint32).tobytes()).digest()] += 1
    return digests, total


def size(folder: Path, keep: Callable[[Path], bool] = lambda p: True) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and keep(p))


def decisions_of(root: Path, workers: int, examples: int) -> None:
    """The decisions of a run kept with ``--keep`` (its inputs, planted copies and both sides' outputs)."""
    rows = read_rows(root / "input", ["id", "text", "source"])
    planted = root / "input" / "zz-planted.parquet"
    ids = pq.read_table(planted, columns=["id"]).column("id").to_pylist() if planted.exists() else []
    pairs = [(i.split("-", 2)[2], i) for i in ids]  # planted-<k>-<original id>
    o, d = our_decisions(root / f"ours-dedup-{workers}"), their_decisions(root / f"dt-dedup-{workers}")
    compare({r["id"]: r["text"] for r in rows}, {r["id"]: r["source"] for r in rows}, o, d, pairs, examples)


# -- main --------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--input", default="stdlib", help="a source directory, or stdlib / site-packages")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument(
        "--plant", type=int, default=60, help="near copies of corpus documents added to the input"
    )
    ap.add_argument("--examples", type=int, default=3, help="disagreements printed at each end of the range")
    ap.add_argument("--tokenizer", default="p50k_base")
    ap.add_argument(
        "--dt-batch", type=int, default=10_000, help="DocumentTokenizer's batch_size (its default)"
    )
    ap.add_argument("--skip", choices=["dedup", "pack"], nargs="*", default=[])
    ap.add_argument("--keep", help="a directory to keep the outputs in (default: a temporary one)")
    ap.add_argument("--decisions", metavar="DIR", help="only compare the decisions of a run kept in DIR")
    a = ap.parse_args()
    if a.decisions:
        return decisions_of(Path(a.decisions), min(a.workers), a.examples)
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.keep or tmp)
        root.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        subprocess.run(
            ours(root, "ingest", 2, f"stage.inputs=[{a.input}]"), check=True, stdout=subprocess.DEVNULL
        )
        corpus = root / "data" / "corpus"
        m = json.loads((corpus / "manifest.json").read_text())
        print(
            f"input {a.input}: {m['documents']} documents after ingest, {m['bytes'] / 1e6:.1f} MB "
            f"({time.perf_counter() - t:.0f} s); {os.cpu_count()} CPUs, 1-min load average at start {load0:.2f}"
        )
        # both sides read the same Parquet files: the corpus's parts, then the planted copies
        inp = root / "input"
        inp.mkdir(exist_ok=True)
        for f in sorted(corpus.glob("part-*.parquet")):
            (inp / f.name).symlink_to(f)
        pairs = plant(corpus, inp / "zz-planted.parquet", a.plant) if a.plant else []
        inputs = [corpus, inp / "zz-planted.parquet"] if pairs else [corpus]
        rows = read_rows(inp, ["id", "text", "source"])
        text = {r["id"]: r["text"] for r in rows}
        src = {r["id"]: r["source"] for r in rows}
        docs, mb = len(rows), sum(len(t.encode("utf-8", "surrogatepass")) for t in text.values()) / 1e6
        results: dict[str, Any] = {"input": a.input, "documents": docs, "MB": mb, "load_start": load0}

        if "dedup" not in a.skip:
            print(
                f"\ndedup: {docs} documents ({len(pairs)} planted), {mb:.1f} MB; {SHINGLE}-grams of {TOKEN_PATTERN}, "
                f"{BANDS} bands x {ROWS} rows, threshold {THRESHOLD} (ours), seed {SEED}"
            )
            print(f"{'workers':>7s} {'side':10s} {'s':>7s} {'CPU s':>7s} {'docs/s/core':>11s} {'MB/s/core':>9s} "
                  f"{'peak MB':>8s} {'removed':>8s}")  # fmt: skip
            decided = {}
            for w in a.workers:
                oo, do = root / f"ours-dedup-{w}", root / f"dt-dedup-{w}"
                so, co, po = measured(ours(root, "dedup", w, f"stage.inputs=[{','.join(map(str, inputs))}]",
                                       f"stage.out_dir={oo}", f"stage.num_perm={BANDS * ROWS}",
                                       f"stage.lsh_bands={BANDS}", f"stage.threshold={THRESHOLD}",
                                       f"stage.seed={SEED}"))  # fmt: skip
                sd, cd, pd = measured(*theirs(f"datatrove_dedup({str(inp)!r}, {str(do)!r}, {w})"))
                decided[w] = (our_decisions(oo), their_decisions(do))
                for side, s, c, p, d in (("ours", so, co, po, decided[w][0]),
                                         ("datatrove", sd, cd, pd, decided[w][1])):  # fmt: skip
                    print(f"{w:7d} {side:10s} {s:7.1f} {c:7.1f} {docs / s / w:11.0f} {mb / s / w:9.2f} {p:8.0f} "
                          f"{len(d[1]):8d}")  # fmt: skip
                print(
                    f"{w:7d} ratio ours/datatrove throughput: {sd / so:.2f}x (goal >= 2x); CPU time: {cd / co:.2f}x"
                )
                results[f"dedup_{w}"] = {"ours_s": so, "datatrove_s": sd, "ours_cpu_s": co, "datatrove_cpu_s": cd,
                                         "ours_peak_MB": po, "datatrove_peak_MB": pd, "ratio": sd / so}  # fmt: skip
            w0 = min(a.workers)
            for w in a.workers[1:]:
                for side, k in (("ours", 0), ("datatrove", 1)):
                    x, y = decided[w][k][1].keys(), decided[w0][k][1].keys()
                    print(f"{side} with {w} workers: {len(x)} removed, {len(x ^ y)} documents decided otherwise "
                          f"than with {w0} (the same clusters may keep another document)")  # fmt: skip
            print(f"\ndecisions ({w0} worker{'s' if w0 > 1 else ''}):")
            results["decisions"] = compare(text, src, *decided[w0], pairs, a.examples)

        if "pack" not in a.skip:
            from textbooks.tokenizer import load_tokenizer

            tok_file = hf_tokenizer(a.tokenizer, root / f"{a.tokenizer}.tokenizers.json")
            eot = load_tokenizer(a.tokenizer).eot_token
            nc = m["documents"]
            print(
                f"\npack: {nc} documents, {m['bytes'] / 1e6:.1f} MB (the corpus); {a.tokenizer}, 1 thread per task; "
                f"DocumentTokenizer batch_size={a.dt_batch}"
            )
            print(f"{'workers':>7s} {'side':10s} {'s':>7s} {'CPU s':>7s} {'tokens/s/core':>13s} {'MB/s/core':>9s} "
                  f"{'peak MB':>8s} {'written MB':>10s}")  # fmt: skip
            for w in a.workers:
                oo, do = root / f"ours-pack-{w}", root / f"dt-pack-{w}"
                so, co, po = measured(ours(root, "pack", w, f"stage.inputs=[{corpus}]", f"stage.out_dir={oo}",
                                       f"stage.tokenizer={a.tokenizer}", "stage.num_threads=1"))  # fmt: skip
                cmd, env = theirs(
                    f"datatrove_tokenize({str(corpus)!r}, {str(do)!r}, {w}, {str(tok_file)!r}, {a.dt_batch})"
                )
                sd, cd, pd = measured(cmd, dict(env, TOKENIZERS_PARALLELISM="false"))
                (og, ot), (dg, dt) = our_documents(oo, eot), their_documents(do)
                mbc = m["bytes"] / 1e6
                for side, s, c, p, n, out in (
                    ("ours", so, co, po, ot, oo),
                    ("datatrove", sd, cd, pd, dt, do),
                ):
                    print(f"{w:7d} {side:10s} {s:7.1f} {c:7.1f} {n / s / w:13.0f} {mbc / s / w:9.2f} {p:8.0f} "
                          f"{size(out) / 1e6:10.1f}")  # fmt: skip
                print(
                    f"{w:7d} ratio ours/datatrove throughput: {sd / so:.2f}x (goal >= 1x), CPU time {cd / co:.2f}x; tokens: ours {ot:,}, "
                    f"datatrove {dt:,}; every document's tokens equal: {og == dg}"
                )
                results[f"pack_{w}"] = {"ours_s": so, "datatrove_s": sd, "ours_cpu_s": co, "datatrove_cpu_s": cd,
                                        "ratio": sd / so, "tokens_ours": ot,
                                        "tokens_datatrove": dt, "equal": og == dg, "ours_peak_MB": po,
                                        "datatrove_peak_MB": pd, "ours_written": size(oo),
                                        "datatrove_written": size(do)}  # fmt: skip
        results["load_end"] = os.getloadavg()[0]
        print(f"\n1-min load average at end {results['load_end']:.2f}")
        (root / "results.json").write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
