"""The journal's short text form of a value never builds the full ``repr`` of a large one."""

from __future__ import annotations

import os
import tracemalloc

import pytest

from flowpool._journal_text import value_text


@pytest.mark.parametrize("kind", [bytes, bytearray, lambda data: [data]])
def test_the_text_of_a_large_bytes_like_value_is_made_from_its_ends_only(kind) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(8_000_000)  # its repr would be about 32 MB
    value = kind(data)
    tracemalloc.start()
    try:
        text = value_text(value)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000
    assert len(text) <= 300
    assert repr(data[:4])[2:-1] in text


def test_the_text_of_bytes_is_unchanged_by_slicing() -> None:
    for size in (0, 10, 40, 41, 100, 300, 301, 1000):
        data = os.urandom(size).replace(b"'", b"a").replace(b'"', b"b")  # (a slice could quote differently)
        for value in (data, bytearray(data)):
            full = repr(value)
            expected = full if len(full) <= 300 else full[:148] + "..." + full[-149:]
            assert value_text(value) == expected
