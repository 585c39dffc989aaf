"""Every answer an endpoint gave, by request content, in SQLite: what makes a rerun ask nothing twice.

On one machine all tasks share one file (WAL mode; SQLite's locking serialises the writers). Tasks on a
cluster's shared filesystem cannot (SQLite's WAL needs shared memory, and network filesystems lock poorly), so
there each task writes a shard of its own next to the cache (``<cache>.shards/<host>-<pid>.sqlite``, one writer
per file) and reads the main file and every shard as immutable snapshots; the stage's publishing step folds the
shards into the main file (``merge_shards``). Either way an answer received once is never asked for again.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from textbooks.llm.config import LLMError
from textbooks.llm.replies import Parsed

log = logging.getLogger(__name__)

OPEN_TIMEOUT_S = 60.0  # how long a process waits for another one holding the cache's lock

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY, model TEXT, request TEXT, response TEXT, text TEXT,
    finish_reason TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, created REAL);
CREATE TABLE IF NOT EXISTS failures (
    key TEXT PRIMARY KEY, request TEXT, kind TEXT, error TEXT, attempts INTEGER, created REAL);
"""


def shard_dir(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p.with_name(p.name + ".shards")


class ResponseCache:
    """Successful responses (and the last failure of requests given up) by request key, in SQLite.

    ``sharded=False``: one file shared by the tasks of one machine (WAL, one commit per response; safe for the
    many coroutines of one event loop, a loop in another thread, and several processes). ``sharded=True``:
    this process writes its own shard and reads the main file and the shards that exist when it opens (as
    immutable snapshots), for tasks on several machines of a shared filesystem.
    """

    def __init__(self, path: str | os.PathLike, *, sharded: bool = False) -> None:
        self.path = Path(path)
        self.sharded = sharded
        self._readers: list[sqlite3.Connection] = []
        own = self.path
        try:
            if sharded:
                shards = shard_dir(self.path)
                shards.mkdir(parents=True, exist_ok=True)
                own = shards / f"{socket.gethostname()}-{os.getpid()}.sqlite"
                for other in [self.path, *sorted(shards.glob("*.sqlite"))]:
                    if other != own and other.is_file():
                        self._readers.append(
                            sqlite3.connect(f"file:{other}?immutable=1", uri=True, check_same_thread=False)
                        )
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(own, timeout=OPEN_TIMEOUT_S, check_same_thread=False)
            self._set_up(sharded)
        except sqlite3.Error as e:
            raise LLMError(
                f"cannot open the LLM response cache {own}: {e}; set llm.cache to a writable file"
            ) from e
        self._lock = threading.Lock()

    def _set_up(self, sharded: bool) -> None:
        """Journal mode and tables, retried while another process sets up the same new file: switching a
        file to WAL can answer "database is locked" at once, without waiting for the busy timeout."""
        deadline = time.monotonic() + OPEN_TIMEOUT_S
        while True:
            try:
                self._conn.execute(f"PRAGMA journal_mode={'DELETE' if sharded else 'WAL'}")
                self._conn.execute("PRAGMA synchronous=NORMAL")
                self._conn.executescript(SCHEMA)
                self._conn.commit()
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                self._conn.rollback()
                time.sleep(0.05)

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        keys = list(dict.fromkeys(keys))
        out: dict[str, Any] = {}
        with self._lock:
            for conn in [self._conn, *self._readers]:
                todo = [k for k in keys if k not in out]
                for i in range(0, len(todo), 500):
                    part = todo[i : i + 500]
                    try:
                        rows = conn.execute(
                            "SELECT key, text, finish_reason, model, prompt_tokens, completion_tokens FROM responses "
                            f"WHERE key IN ({','.join('?' * len(part))})",
                            part,
                        ).fetchall()
                    except sqlite3.Error as e:  # a shard another task is still creating, or a damaged one
                        log.warning("LLM cache: skipping unreadable %s (%s)", conn, e)
                        break
                    out.update({r[0]: r for r in rows})
        return out

    def put(
        self, key: str, model: str, request: Mapping[str, Any], response: Mapping[str, Any], parsed: Parsed
    ) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key,
                    model,
                    json.dumps(request, ensure_ascii=False),
                    json.dumps(response, ensure_ascii=False),
                    parsed.text,
                    parsed.finish_reason,
                    parsed.prompt_tokens,
                    parsed.completion_tokens,
                    time.time(),
                ),
            )
            self._conn.execute("DELETE FROM failures WHERE key = ?", (key,))
            self._conn.commit()

    def record_failure(
        self, key: str, request: Mapping[str, Any], kind: str, error: str, attempts: int
    ) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?, ?, ?)",
                (key, json.dumps(request), kind, error, attempts, time.time()),
            )
            self._conn.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            for conn in [self._conn, *self._readers]:
                conn.close()


def merge_shards(path: str | os.PathLike) -> int:
    """Fold the shards of the cache at ``path`` into it (then delete them); returns the answers added.

    Runs in one task (a stage's publishing step) while no other task writes; the main file is left in
    rollback-journal mode, so tasks on other machines can read it as a snapshot."""
    shards = sorted(shard_dir(path).glob("*.sqlite")) if shard_dir(path).is_dir() else []
    if not shards:
        return 0
    conn = sqlite3.connect(path, timeout=60.0)
    try:
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.executescript(SCHEMA)
        before = conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
        for shard in shards:
            conn.execute("ATTACH DATABASE ? AS shard", (str(shard),))
            conn.execute("INSERT OR IGNORE INTO responses SELECT * FROM shard.responses")
            conn.execute(
                "INSERT OR REPLACE INTO failures SELECT * FROM shard.failures "
                "WHERE key NOT IN (SELECT key FROM responses)"
            )
            conn.commit()
            conn.execute("DETACH DATABASE shard")
        added = conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0] - before
    finally:
        conn.close()
    for shard in shards:
        shard.unlink(missing_ok=True)
    return added
