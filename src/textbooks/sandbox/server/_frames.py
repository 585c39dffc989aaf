"""The fork server's pipes: framed messages, and memory that forked children see as zeros.

Standard library only (imported by ``_server.py``). Answers to the harness are frames ``[u32 n][kind][data]``
on stdout; requests are ``[u32 n][JSON]`` on stdin, followed by payloads that ``splice_into`` moves into a
memfd inside the kernel. Every byte a program produces passes through a ``PrivateBuffer`` (wipe-on-fork),
never through the server's heap, which every later program is forked from.
"""

from __future__ import annotations

import json
import mmap
import os
import struct

MADV_WIPEONFORK = 18


class PrivateBuffer:
    """Anonymous memory a forked child sees as zeros: program data passes here, never through the heap."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.mm = mmap.mmap(-1, size)
        try:
            self.mm.madvise(MADV_WIPEONFORK)
        except (OSError, ValueError):
            self.mm.madvise(mmap.MADV_DONTFORK)
        self.n = 0

    def fill(self, fd: int) -> int:
        """Read what ``fd`` has into the free space; bytes read (0: EOF or full). Raises BlockingIOError."""
        if self.n >= self.size:
            return 0
        k = os.readv(fd, [memoryview(self.mm)[self.n :]])
        self.n += k
        return k

    def view(self, a: int, b: int) -> memoryview:
        return memoryview(self.mm)[a:b]

    def drop_front(self, k: int) -> None:
        if k:
            self.mm.move(0, k, self.n - k)
            self.n -= k

    def clear(self) -> None:
        if self.n:
            length = (self.n + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE
            self.mm.madvise(mmap.MADV_DONTNEED, 0, min(length, self.size))
        self.n = 0


def read_exact(fd: int, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def write_all(fd: int, parts: list) -> None:
    views = [memoryview(p) for p in parts]
    while views:
        k = os.writev(fd, views)
        while views and k >= len(views[0]):
            k -= len(views[0])
            views.pop(0)
        if views and k:
            views[0] = views[0][k:]


def send_frame(kind: bytes, data: bytes | memoryview) -> None:
    write_all(1, [struct.pack(">I", len(data) + 1) + kind, data])


def send_json(kind: bytes, obj: dict) -> None:
    send_frame(kind, json.dumps(obj).encode())


def splice_into(memfd: int, n: int, spare: PrivateBuffer) -> None:
    """Move ``n`` bytes of stdin into ``memfd`` without passing them through this process's memory."""
    left = n
    while left:
        try:
            k = os.splice(0, memfd, left)
        except (AttributeError, OSError):  # no splice: through wipe-on-fork memory instead
            spare.n = 0
            k = os.readv(0, [spare.view(0, min(left, spare.size))])
            write_all(memfd, [spare.view(0, k)])
            spare.clear()
        if k == 0:
            raise EOFError("request cut short")
        left -= k


def read_control() -> dict | None:
    head = read_exact(0, 4)
    if head is None:
        return None
    body = read_exact(0, struct.unpack(">I", head)[0])
    if body is None:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return {}
