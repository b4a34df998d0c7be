"""The Produce v3 codec, checked against aiokafka's own protocol definitions and batch reader."""

from __future__ import annotations

import io
import struct

import pytest
from aiokafka.protocol.produce import ProduceRequest_v3, ProduceResponse_v3
from aiokafka.record.default_records import DefaultRecordBatch

from meter.produce_wire import (
    MalformedResponse,
    PartitionResult,
    decode_produce_response,
    encode_produce_request,
    record_batch,
    response_correlation_id,
)


def _read_header(frame: bytes) -> tuple[int, int, int, str, bytes]:
    """(api_key, api_version, correlation_id, client_id, body) of a size-prefixed request."""
    (size,) = struct.unpack_from(">i", frame, 0)
    assert size == len(frame) - 4
    api_key, version, correlation_id, id_length = struct.unpack_from(">hhih", frame, 4)
    client_id = frame[14 : 14 + id_length].decode()
    return api_key, version, correlation_id, client_id, frame[14 + id_length :]


def test_request_is_what_aiokafka_reads_as_produce_v3() -> None:
    batches = {"usage": {0: b"batch-zero", 3: b"batch-three"}, "alerts": {1: b"one"}}
    frame = encode_produce_request(77, "credits-api", 15_000, batches)
    api_key, version, correlation_id, client_id, body = _read_header(frame)
    assert (api_key, version, correlation_id, client_id) == (0, 3, 77, "credits-api")
    request = ProduceRequest_v3.decode(io.BytesIO(body))
    assert request.transactional_id is None
    assert (request.required_acks, request.timeout) == (-1, 15_000)
    assert request.topics == [
        ("usage", [(0, b"batch-zero"), (3, b"batch-three")]),
        ("alerts", [(1, b"one")]),
    ]


def _response(
    correlation_id: int, topics: list[tuple[str, list[tuple[int, int, int, int]]]]
) -> bytes:
    body: bytes = ProduceResponse_v3(topics=topics, throttle_time_ms=0).encode()
    return struct.pack(">i", correlation_id) + body


def test_response_written_by_aiokafka_decodes() -> None:
    frame = _response(9, [("usage", [(0, 0, 41, -1), (3, 6, -1, -1)]), ("alerts", [(1, 0, 7, -1)])])
    assert response_correlation_id(frame) == 9
    assert decode_produce_response(frame) == [
        PartitionResult("usage", 0, 0, 41),
        PartitionResult("usage", 3, 6, -1),
        PartitionResult("alerts", 1, 0, 7),
    ]


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\x00\x00\x00\x01",  # a correlation id and nothing else
        _response(1, [("usage", [(0, 0, 5, -1)])])[:-3],  # cut short
        _response(1, [("usage", [(0, 0, 5, -1)])]) + b"\x00",  # a byte too many
        struct.pack(">iih", 1, 1, 200) + b"short",  # a topic name longer than the frame
    ],
)
def test_unreadable_responses_are_refused(frame: bytes) -> None:
    with pytest.raises(MalformedResponse):
        decode_produce_response(frame)


def test_a_frame_too_short_for_a_correlation_id_is_refused() -> None:
    with pytest.raises(MalformedResponse, match="shorter than its header"):
        response_correlation_id(b"\x00\x01")


def test_record_batch_reads_back_with_aiokafkas_reader() -> None:
    messages = [(b"wal_1", b"first", 1_700_000_000_000), (None, b"second", 1_700_000_000_005)]
    batch = DefaultRecordBatch(bytearray(record_batch(messages)))
    batch.validate_crc()
    records = list(batch)
    assert [(r.offset, r.key, r.value, r.timestamp) for r in records] == [
        (0, b"wal_1", b"first", 1_700_000_000_000),
        (1, None, b"second", 1_700_000_000_005),
    ]
    assert (batch.producer_id, batch.is_transactional) == (-1, False)
