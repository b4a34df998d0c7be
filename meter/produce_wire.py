"""Kafka ``Produce`` v3 on the wire: encode a request, decode its response. Pure functions.

Version 3 is the first to carry record batches (magic 2, what every current client writes)
and the oldest one Apache Kafka 4 still accepts, so it is understood by every broker this
product runs on (Apache Kafka, Redpanda, Tansu). The record batches themselves are built by
aiokafka's C batch builder (:func:`record_batch`); this module frames them.

Layouts (big-endian; ``string`` = int16 length + bytes, ``nullable`` = -1 for null):

* request header v1: api_key int16 (0), api_version int16 (3), correlation_id int32,
  client_id string.
* request v3: transactional_id nullable string, acks int16, timeout_ms int32,
  [topic string, [partition int32, records bytes (int32 length)]].
* response header v0: correlation_id int32.
* response v3: [topic string, [partition int32, error_code int16, base_offset int64,
  log_append_time int64]], throttle_time_ms int32.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from aiokafka.record.default_records import DefaultRecordBatchBuilder

PRODUCE_API_KEY: Final = 0
PRODUCE_VERSION: Final = 3
ACKS_ALL: Final = -1
_MAGIC: Final = 2
_NO_COMPRESSION: Final = 0
_NO_PRODUCER: Final = -1  # not idempotent: no producer id, epoch or sequence

_I16: Final = struct.Struct(">h")
_I32: Final = struct.Struct(">i")
_HEADER: Final = struct.Struct(">hhi")  # api_key, api_version, correlation_id
_ACKS_TIMEOUT: Final = struct.Struct(">hi")
_PARTITION_RESULT: Final = struct.Struct(">ihqq")  # partition, error, base_offset, append_time

Message = tuple[bytes | None, bytes, int]
"""One record: key, value, timestamp in milliseconds."""


class MalformedResponse(ValueError):
    """The broker's answer does not parse as a ``Produce`` v3 response."""


@dataclass(frozen=True, slots=True)
class PartitionResult:
    """The broker's answer for one partition's batch: ``error_code`` 0 means written, and the
    batch's first record got ``base_offset`` (the others follow it in order)."""

    topic: str
    partition: int
    error_code: int
    base_offset: int


def record_bytes(message: Message) -> int:
    """An upper bound on the bytes ``message`` takes in a batch (its key, value and framing)."""
    key, value, _ = message
    return len(value) + len(key or b"") + 64


def record_batch(messages: Sequence[Message]) -> bytes:
    """One uncompressed, non-transactional record batch (magic 2) holding ``messages``."""
    size = sum(record_bytes(message) for message in messages)
    builder = DefaultRecordBatchBuilder(
        _MAGIC, _NO_COMPRESSION, 0, _NO_PRODUCER, _NO_PRODUCER, _NO_PRODUCER, size
    )
    for offset, (key, value, timestamp_ms) in enumerate(messages):
        if builder.append(offset, timestamp_ms, key, value, []) is None:  # pragma: no cover
            raise AssertionError("the batch builder refused a record it was sized for")
    return bytes(builder.build())


def _string(text: str) -> bytes:
    raw = text.encode()
    return _I16.pack(len(raw)) + raw


def encode_produce_request(
    correlation_id: int,
    client_id: str,
    timeout_ms: int,
    batches: Mapping[str, Mapping[int, bytes]],
    *,
    acks: int = ACKS_ALL,
) -> bytes:
    """A size-prefixed ``Produce`` v3 request: ``batches[topic][partition]`` is a record batch."""
    parts = [
        _HEADER.pack(PRODUCE_API_KEY, PRODUCE_VERSION, correlation_id),
        _string(client_id),
        _I16.pack(-1),  # transactional_id: null
        _ACKS_TIMEOUT.pack(acks, timeout_ms),
        _I32.pack(len(batches)),
    ]
    for topic, partitions in batches.items():
        parts += (_string(topic), _I32.pack(len(partitions)))
        for partition, records in partitions.items():
            parts += (_I32.pack(partition), _I32.pack(len(records)), records)
    body = b"".join(parts)
    return _I32.pack(len(body)) + body


def response_correlation_id(frame: bytes | memoryview) -> int:
    """The correlation id a response frame (without its size prefix) answers."""
    if len(frame) < 4:
        raise MalformedResponse("a response frame shorter than its header")
    correlation_id: int = _I32.unpack_from(frame, 0)[0]
    return correlation_id


def decode_produce_response(frame: bytes | memoryview) -> list[PartitionResult]:
    """Every partition result of a ``Produce`` v3 response frame (without its size prefix)."""
    try:
        return _decode(frame)
    except (struct.error, UnicodeDecodeError) as exc:
        raise MalformedResponse(f"unreadable Produce response: {exc}") from exc


def _decode(frame: bytes | memoryview) -> list[PartitionResult]:
    at = 4  # after the correlation id
    (topics,) = _I32.unpack_from(frame, at)
    at += 4
    results: list[PartitionResult] = []
    for _ in range(topics):
        (length,) = _I16.unpack_from(frame, at)
        if length < 0 or at + 2 + length > len(frame):
            raise MalformedResponse("a topic name runs past the response")
        topic = bytes(frame[at + 2 : at + 2 + length]).decode()
        at += 2 + length
        (partitions,) = _I32.unpack_from(frame, at)
        at += 4
        for _ in range(partitions):
            partition, error_code, base_offset, _ = _PARTITION_RESULT.unpack_from(frame, at)
            at += _PARTITION_RESULT.size
            results.append(PartitionResult(topic, partition, error_code, base_offset))
    if at + 4 != len(frame):  # throttle_time_ms closes the response
        raise MalformedResponse(f"a Produce v3 response of {len(frame)} bytes ends at {at + 4}")
    return results
