"""Decoding of Lua script replies, whatever ``decode_responses`` the client was built with.

Scripts return flat arrays of integers and strings; redis-py hands strings back as ``bytes``
unless the client decodes them. These helpers accept both, and fail loudly on anything else
(a reply of the wrong shape is a bug, not an expected failure).
"""

from __future__ import annotations

from collections.abc import Sequence


def as_list(reply: object) -> Sequence[object]:
    assert isinstance(reply, list), f"script reply is not an array: {reply!r}"
    return reply


def text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise AssertionError(f"script reply field is not a string: {value!r}")


def integer(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, bytes | str):
        return int(value)
    raise AssertionError(f"script reply field is not an integer: {value!r}")
