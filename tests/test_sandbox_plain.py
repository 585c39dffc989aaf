"""Plain data: what may cross from a program to its judge, and what the decoder refuses."""

from __future__ import annotations

import collections
import math

import pytest

from textbooks.sandbox.server import plain


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        0,
        -(10**5000),  # beyond JSON's (and str()'s) digit limit: travels as hex
        1.5,
        -0.0,
        float("inf"),
        3 + 4j,
        "",
        "caf\u00e9 \ud800 \x00",  # a lone surrogate and a NUL survive
        b"\x00\xff",
        bytearray(b"ab"),
        [1, [2, (3, {4: {5.0}})]],
        (),
        (1,),
        {(1, 2): frozenset({"a"}), None: [], 3: {}},
        set(),
        [int, str, tuple, object],
    ],
    ids=lambda v: type(v).__name__,
)
def test_round_trip_keeps_value_and_type(value: object) -> None:
    back = plain.decode(plain.encode(value))
    assert back == value and type(back) is type(value)


def test_nan_round_trips() -> None:
    assert math.isnan(plain.decode(plain.encode(float("nan"))))


def test_subclasses_arrive_as_their_plain_type() -> None:
    class Liar(list):
        def __eq__(self, other: object) -> bool:
            return True

    counter = collections.Counter("aab")
    assert plain.decode(plain.encode(counter)) == {"a": 2, "b": 1}
    assert type(plain.decode(plain.encode(counter))) is dict
    back = plain.decode(plain.encode(Liar([1])))
    assert type(back) is list and back != [2]
    assert type(plain.decode(plain.encode(collections.namedtuple("P", "x y")(1, 2)))) is tuple


def test_other_objects_become_opaque_and_equal_nothing() -> None:
    class Anything:
        def __eq__(self, other: object) -> bool:
            return True

    back = plain.decode(plain.encode([Anything(), (i for i in range(3))]))
    assert all(isinstance(x, plain.Opaque) for x in back)
    assert back[0] != back[1] and back[0] != 1 and back[0] is not None
    assert repr(back[1]) == "<generator object>"


def test_large_values_travel_as_a_digest() -> None:
    big = list(range(300_000))
    z = plain.digest(big)
    assert z is not None and plain.digest(list(range(10))) is None
    a, b = plain.decode(plain.dumps(z)), plain.decode(plain.dumps(plain.digest(list(range(300_000)))))
    assert a == b and a != plain.decode(plain.dumps(plain.digest(list(range(1, 300_001))))) and a != big
    assert plain.decode(plain.encode(a)) == a  # a reference's digest can be stored and read back


def test_self_referencing_and_deep_values_are_refused() -> None:
    loop: list = []
    loop.append(loop)
    with pytest.raises(plain.PlainDataError, match="contains itself"):
        plain.encode(loop)
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(plain.PlainDataError):
        plain.encode(deep)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"[1,",
        b'{"t": 1}',
        b'{"d": [[1]]}',
        b'{"d": [[[1], 2]]}',  # an unhashable key
        b'{"s": [[1]]}',
        b'{"x": "zz"}',
        b'{"c": ["1", 2]}',
        b'{"b": "\\u0100"}',  # not a byte
        b'{"T": "eval"}',
        b'{"h": [1, "f", true]}',  # references only where the judge allows them
        b'{"t": [1], "s": [2]}',
        b"9" * 5000,
        b"[" * 100_000 + b"]" * 100_000,
        b"\xff",
    ],
    ids=lambda d: repr(d[:20]),
)
def test_malformed_input_is_refused(data: bytes) -> None:
    with pytest.raises(plain.PlainDataError):
        plain.decode(data)
