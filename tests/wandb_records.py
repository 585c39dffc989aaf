"""Read the records of an offline W&B run file (``run-*.wandb``): a LevelDB-style log of protobuf records.

W&B's own reader lives in its Go core; this small reader lets tests check what a run really recorded
(name, group, tags, metric definitions, history rows, summary) without a W&B account.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768  # the log's block size; a record header is crc32 (4) + length (2) + type (1)
FULL, LAST = 1, 4


def records(path: str | Path) -> Iterator[pb.Record]:
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    pos, buf = 7, b""  # the file header (":W&B", magic, version) takes 7 bytes
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # a header never straddles blocks: the rest of the block is padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if length == 0 and kind == 0:
            pos += left
            continue
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (FULL, LAST):
            r = pb.Record()
            r.ParseFromString(buf)
            yield r
            buf = b""


def key(item) -> str:
    return "/".join(item.nested_key) or item.key


def summarize(path: str | Path) -> dict:
    """The run record, metric definitions, history keys and final summary of a run file."""
    run, metrics, history_keys, summary = None, [], set(), {}
    for r in records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run = r.run
        elif kind == "metric":
            metrics.append((r.metric.name or r.metric.glob_name, r.metric.step_metric))
        elif kind == "history":
            history_keys.update(key(i) for i in r.history.item)
        elif kind == "summary":
            summary.update({key(i): i.value_json for i in r.summary.update})
    return {"run": run, "metrics": metrics, "history_keys": history_keys, "summary": summary}
