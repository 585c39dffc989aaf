"""What the fork server pays once so that each program it forks does not (standard library only)."""

from __future__ import annotations

import contextlib
import gc
import sys

import plain

# Compiled once in the server (never run): the first compile in a process initialises the parser, and
# every child would otherwise redo (and copy) that work. Covers the common statement and expression kinds.
_WARMUP = '''
import math, re
from collections import defaultdict
class A(object):
    x: int = 0
    def f(self, a, *args, b=None, **kw):
        """doc"""
        global g
        try:
            with open(a) as h:
                return [i for i in h] if b else {k: v for k, v in kw.items() if k}
        except (OSError, ValueError) as e:
            raise RuntimeError(f"{e!r:>10}") from e
        finally:
            pass
def g(n: int) -> list[int]:
    lo, hi = 0, n
    while lo < hi and not (lo % 2 == 1 or hi // 3 >= 2):
        lo += 1; hi -= 1
    for i in range(n):
        if i in (1, 2) or i is None: continue
        elif i: break
    else:
        yield from sorted(set(x ** 2 for x in range(n)), key=lambda t: -t)
    assert g is not None, "g"
    return [*range(3), 1.5e3, 0x1F, 1j, b"x", r"\\d+", True, False, None, ...][::-1]
assert g(1) == [1]
'''


def prewarm(preload: list[str]) -> None:
    """Pay once, in the server, what each child would otherwise pay (and copy) on first use.

    ``preload`` names standard-library modules that benchmark programs commonly import (``typing``,
    ``math``, ...): imported here, an ``import`` in a child costs a dict lookup instead of ~1-5 ms.

    Compiling ``_WARMUP`` initialises the parser; interning spare names resizes the interpreter's table of
    interned strings now, so new names in a child rarely trigger a copy-and-rehash of it; freezing moves
    every object out of the garbage collector's reach, so a collection in a child never touches (and so
    copies) the server's memory.
    """
    import importlib

    for name in preload:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    compile(_WARMUP, "<warmup>", "exec")
    plain.decode(plain.encode([(1, "a"), {2: {3.5}}, b"x", 1j]))
    globals()["_INTERNED_HEADROOM"] = [sys.intern(f"_textbooks_sandbox_{i}") for i in range(10000)]
    gc.collect()
    gc.freeze()
