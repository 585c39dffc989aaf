"""Plain data: the only values that cross from a program under test to whoever judges it.

A program's outputs are serialised here, inside the program, and rebuilt on the trusted side by
``decode``, which only ever creates ``None``, ``bool``, ``int``, ``float``, ``complex``, ``str``, ``bytes``,
``bytearray``, ``list``, ``tuple``, ``dict``, ``set``, ``frozenset`` and the built-in types themselves
(``int``, ``str``, ...). Whatever object the program built, the trusted side compares values with the
standard types' own ``==``: an answer object that "equals everything" arrives as an ``Opaque`` stand-in that
equals only itself, and a subclass of ``int`` or ``list`` arrives as a plain ``int`` or ``list`` (its
overridden ``__eq__`` stays behind). Subclasses of ``dict`` (``Counter``, ``defaultdict``) become ``dict``,
of ``tuple`` (named tuples) ``tuple``.

The wire format is JSON (C-parsed, no code runs while reading it): ``None``, booleans, strings, floats
(``NaN``/``Infinity`` included) and ints up to ``MAX_INT_DIGITS`` digits are JSON's own; everything else is
a one-key object, ``{"t": [...]}`` a tuple, ``{"s": [...]}`` a set, ``{"f": [...]}`` a frozenset, ``{"d":
[[k, v], ...]}`` a dict, ``{"c": [re, im]}`` a complex, ``{"b": "..."}`` bytes (latin-1), ``{"y": "..."}`` a
bytearray, ``{"x": "-ff"}`` a larger int (hex), ``{"T": "int"}`` a built-in type, ``{"o": "Match"}`` an
object that is not plain data (``{"i": ["generator", [...]]}`` with the items of an iterable one),
``{"z": [sha256, bytes]}`` a value too large to send (``Digest``) and
``{"h": [id, type, truth]}`` a reference the judging side may pass back (see ``_judge.py``). Arrays are
lists.

A value whose ``marshal`` form (version 0: no sharing, a function of the value alone) is over
``DIGEST_OVER`` bytes travels as the SHA-256 of that form (``digest``): two such values are equal when
their digests are, and a program cannot produce the digest of an expected output it does not know. It
is exact for the large outputs benchmarks have (long strings, lists of numbers or tuples); equal values
built differently (a set filled in another order, ``1`` for ``1.0``) get different digests.

Standard library only: the fork server and the programs import this module too.
"""

from __future__ import annotations

import hashlib
import json
import marshal
from collections.abc import Callable
from typing import Any

MAX_INT_DIGITS = 4000  # below the interpreter's int/str conversion limit (4300)
_INT_LIMIT = 10**MAX_INT_DIGITS
MAX_HEX_DIGITS = 1 << 20  # ints up to ~4 million bits
DIGEST_OVER = 1 << 20  # values larger than this (marshal bytes) travel as their digest
BUILTIN_TYPES: dict[str, type] = {
    t.__name__: t
    for t in (
        bool,
        int,
        float,
        complex,
        str,
        bytes,
        bytearray,
        list,
        tuple,
        dict,
        set,
        frozenset,
        object,
        type,
    )
}
_TYPE_NAMES = {t: n for n, t in BUILTIN_TYPES.items()}


class PlainDataError(ValueError):
    """A value is not plain data (encoding) or bytes are not a valid encoding (decoding)."""


class Opaque:
    """Stands for an object that is not plain data (a generator, a ``re.Match``, a custom class).

    It equals only itself, so it never matches an expected value; it is truthy, like most objects. When the
    object was iterable, its items were taken (plain data again) and iterating the stand-in gives them, as
    iterating the object would have (``set(generator)`` works).
    """

    __slots__ = ("items", "type_name")

    def __init__(self, type_name: str, items: list | None = None) -> None:
        self.type_name, self.items = type_name, items

    def __iter__(self) -> Any:
        if self.items is None:
            raise TypeError(f"'{self.type_name}' object is not iterable")
        return iter(self.items)

    def __repr__(self) -> str:
        return f"<{self.type_name} object>"


class Digest:
    """Stands for a value too large to send: equal to another ``Digest`` of the same value only."""

    __slots__ = ("sha256", "size")

    def __init__(self, sha256: str, size: int) -> None:
        self.sha256, self.size = sha256, size

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Digest) and other.sha256 == self.sha256 and other.size == self.size

    def __hash__(self) -> int:
        return hash(self.sha256)

    def __repr__(self) -> str:
        return f"<a value of {self.size:,} bytes, sha256 {self.sha256[:12]}>"


def digest(obj: Any, over: int = DIGEST_OVER) -> dict[str, Any] | None:
    """``{"z": [sha256, size]}`` for a value whose marshal form is over ``over`` bytes; None for a smaller
    value or one that marshal cannot write (then it is sent as plain data, or found not to be)."""
    try:
        data = marshal.dumps(obj, 0)
    except (ValueError, TypeError, RecursionError, MemoryError):
        return None
    if len(data) <= over:
        return None
    return {"z": [hashlib.sha256(data).hexdigest(), len(data)]}


def to_json(obj: Any, ref: Callable[[object], Any] | None = None) -> Any:
    """``obj`` as a JSON-able structure; ``ref(x)`` stands for each value that is not plain data (default:
    an ``Opaque`` tag, with the items of an iterable object). Raises ``PlainDataError`` for a value that
    contains itself."""
    active: set[int] = set()

    def opaque(x: Any) -> dict[str, Any]:
        name = type(x).__name__[:100]
        try:
            items = list(iter(x))
        except Exception:
            return {"o": name}
        return {"i": [name, [enc(v) for v in items]]}

    ref = ref or opaque

    def enc(x: Any) -> Any:
        t = type(x)
        if x is None or t is bool or t is str:
            return x
        if t is int:
            return x if -_INT_LIMIT < x < _INT_LIMIT else {"x": format(x, "x")}
        if t is float:
            return x
        if t is type and x in _TYPE_NAMES:
            return {"T": _TYPE_NAMES[x]}
        if isinstance(x, (list, tuple, dict, set, frozenset)):
            key = id(x)
            if key in active:
                raise PlainDataError(f"a {t.__name__} that contains itself is not plain data")
            active.add(key)
            try:
                if isinstance(x, list):
                    return [enc(v) for v in list.__iter__(x)]
                if isinstance(x, tuple):
                    return {"t": [enc(v) for v in tuple.__iter__(x)]}
                if isinstance(x, dict):
                    return {"d": [[enc(k), enc(v)] for k, v in dict.items(x)]}
                if isinstance(x, frozenset):
                    return {"f": [enc(v) for v in frozenset.__iter__(x)]}
                return {"s": [enc(v) for v in set.__iter__(x)]}
            finally:
                active.discard(key)
        if isinstance(x, bool):  # unreachable (bool cannot be subclassed); kept for clarity
            return bool(x)
        if isinstance(x, int):
            return enc(int.__int__(x))
        if isinstance(x, float):
            return float.__float__(x)
        if isinstance(x, str):
            return str.__str__(x)
        if isinstance(x, complex):
            return {"c": [complex.__complex__(x).real, complex.__complex__(x).imag]}
        if isinstance(x, bytes):
            return {"b": bytes(x).decode("latin-1")}
        if isinstance(x, bytearray):
            return {"y": bytes(x).decode("latin-1")}
        if t is Digest:
            return {"z": [x.sha256, x.size]}
        return ref(x)

    try:
        return enc(obj)
    except RecursionError:
        raise PlainDataError("value nested too deeply to serialise") from None


def encode(obj: Any, ref: Callable[[object], Any] | None = None) -> bytes:
    """``obj`` serialised (see the module docstring); ``ref`` as in ``to_json``."""
    return dumps(to_json(obj, ref))


def dumps(structure: Any) -> bytes:
    """A ``to_json`` structure as bytes (ASCII JSON: lone surrogates travel as escapes)."""
    try:
        return json.dumps(structure, separators=(",", ":")).encode("ascii")
    except RecursionError:
        raise PlainDataError("value nested too deeply to serialise") from None


def _pairs(v: Any) -> list[tuple[Any, Any]]:
    if not isinstance(v, list) or not all(isinstance(p, list) and len(p) == 2 for p in v):
        raise PlainDataError("a dict must be a list of [key, value] pairs")
    return [(p[0], p[1]) for p in v]


def _number(v: Any) -> float:
    if type(v) not in (int, float):
        raise PlainDataError("complex parts must be numbers")
    return v


def make_hook(handle: Callable[[Any], Any] | None = None) -> Callable[[dict[str, Any]], Any]:
    """The ``json.loads`` object hook that rebuilds the tagged values; ``handle(payload)`` turns an
    ``{"h": ...}`` tag into a reference (refused when None)."""

    def hook(d: dict[str, Any]) -> Any:
        if len(d) != 1:
            raise PlainDataError("a tagged value must have exactly one key")
        ((tag, v),) = d.items()
        try:
            if tag == "t" and isinstance(v, list):
                return tuple(v)
            if tag == "s" and isinstance(v, list):
                return set(v)
            if tag == "f" and isinstance(v, list):
                return frozenset(v)
            if tag == "d":
                return dict(_pairs(v))
            if tag == "c" and isinstance(v, list) and len(v) == 2:
                return complex(_number(v[0]), _number(v[1]))
            if tag == "b" and isinstance(v, str):
                return v.encode("latin-1")
            if tag == "y" and isinstance(v, str):
                return bytearray(v.encode("latin-1"))
            if tag == "x" and isinstance(v, str) and len(v) <= MAX_HEX_DIGITS:
                return int(v, 16)
            if tag == "T" and v in BUILTIN_TYPES:
                return BUILTIN_TYPES[v]
            if tag == "o" and isinstance(v, str):
                return Opaque(v[:100])
            if tag == "i" and isinstance(v, list) and len(v) == 2 and isinstance(v[0], str):
                return Opaque(v[0][:100], list(v[1]))
            if (
                tag == "z"
                and isinstance(v, list)
                and len(v) == 2
                and isinstance(v[0], str)
                and type(v[1]) is int
            ):
                return Digest(v[0][:64], v[1])
            if tag == "h" and handle is not None:
                return handle(v)
        except (TypeError, ValueError, UnicodeError) as e:
            raise PlainDataError(f"bad {tag!r} value: {e}") from None
        raise PlainDataError(f"unknown or malformed tag {tag!r}")

    return hook


_HOOK = make_hook()


def decode(data: bytes | str, hook: Callable[[dict[str, Any]], Any] | None = None) -> Any:
    """Rebuild a value from ``encode``'s bytes; any malformed input raises ``PlainDataError``."""
    try:
        return json.loads(data, object_hook=hook or _HOOK)
    except PlainDataError:
        raise
    except (ValueError, TypeError, RecursionError, MemoryError, UnicodeError) as e:
        raise PlainDataError(f"not plain data: {type(e).__name__}: {str(e)[:200]}") from None
