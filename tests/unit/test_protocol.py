"""Frame building and parsing, with no sockets."""

from __future__ import annotations

import json

import pytest

from rexec import protocol as p
from rexec.errors import ProtocolError


def test_request_round_trip_keeps_payload_frames_untouched():
    payload = [b"\x80\x05function", memoryview(b"args")]
    frames = p.make_request("abc-1", p.OP_CALL, payload, fn="k", ser="pickle", nb=None)
    header = p.parse_header(frames[0], p.CLIENT_TO_BROKER)
    assert header == {
        "v": p.PROTOCOL_VERSION,
        "t": "request",
        "id": "abc-1",
        "op": "call",
        "fn": "k",
        "ser": "pickle",
    }
    assert frames[1:] == payload


def test_output_content_is_jupyter_content_in_a_payload_frame():
    frames = p.make_output("r1", "stream", {"name": "stdout", "text": "hi\n"})
    assert p.parse_header(frames[0]) == {
        "v": p.PROTOCOL_VERSION,
        "t": "output",
        "id": "r1",
        "mt": "stream",
    }
    assert json.loads(frames[1]) == {"name": "stdout", "text": "hi\n"}


def test_error_reply_carries_code_and_message():
    header = p.parse_header(p.make_error_reply("r9", p.E_WORKER_DIED, "gone")[0])
    assert header["status"] == p.STATUS_ERROR
    assert header["error"] == {"code": "worker_died", "message": "gone"}


@pytest.mark.parametrize(
    "frame, reason",
    [
        (b"x" * (p.MAX_HEADER_BYTES + 1), "exceeds"),
        (b"\x80\x04not json", "not UTF-8 JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"v": 99, "t": "hello"}', "protocol version 99"),
        (b'{"v": 2, "t": "shutdown"}', "unexpected message type"),
        (b'{"v": 2, "t": "request", "id": "../../etc"}', "request id"),
        (b"[" * 5000 + b"]" * 5000, "JSON"),  # nesting beyond the fast parser's limit
        (b'{"v": 2, "t": "hello", "x": "\xff"}', "not UTF-8 JSON"),
    ],
)
def test_malformed_headers_are_refused(frame, reason):
    with pytest.raises(ProtocolError, match=reason):
        p.parse_header(frame, p.CLIENT_TO_BROKER)


def test_values_outside_the_fast_parser_still_round_trip():
    # The fast JSON library refuses these; the standard library takes over.
    header = p.parse_header(p.make_header(p.PING, stats={"big": 2**70, "nan": float("nan")}))
    assert header["stats"]["big"] == 2**70
    assert header["stats"]["nan"] != header["stats"]["nan"]
    content = {"data": {"text/plain": "x"}, "metadata": {"inf": float("inf"), 1: "int key"}}
    parsed = p.parse_json_frame(p.make_json_frame(content))
    assert parsed["metadata"] == {"inf": float("inf"), "1": "int key"}


def test_header_size_is_bounded_when_building():
    with pytest.raises(ProtocolError, match="payload frames"):
        p.make_header(p.HELLO, token="x" * p.MAX_HEADER_BYTES)


def test_worker_names_follow_the_dns_label_rule():
    assert p.valid_worker_name("default") and p.valid_worker_name("gpu-2")
    for bad in ("", "Default", "-x", "x-", "a" * 33, "a/b", "a b", "default\n", "gpu-1\n"):
        assert not p.valid_worker_name(bad)


def test_message_size_counts_every_kind_of_frame():
    import pickle

    buffer = pickle.PickleBuffer(bytearray(100))
    assert p.message_size([b"abc", memoryview(b"12345"), buffer]) == 108


@pytest.mark.parametrize("inline", [False, True])
@pytest.mark.parametrize("buffers", [0, 3])
def test_hot_path_builders_make_the_same_headers_as_the_generic_ones(inline, buffers):
    call = p.make_call("3f2a-17", "ab" * 16, [b"args"], inline=inline, ser="dill", buffers=buffers)
    generic = p.make_request(
        "3f2a-17",
        p.OP_CALL,
        [b"args"],
        fn="ab" * 16,
        fn_inline=inline or None,
        ser="dill",
        nb=buffers or None,
    )
    assert p.parse_header(call[0]) == p.parse_header(generic[0])
    assert call[1:] == [b"args"]
    result = p.make_result("3f2a-17", [b"value"], "pickle", buffers)
    generic = p.make_reply("3f2a-17", p.STATUS_OK, [b"value"], ser="pickle", nb=buffers or None)
    assert p.parse_header(result[0]) == p.parse_header(generic[0])
    assert result[1:] == [b"value"]


@pytest.mark.parametrize("request_id", ["abc\n", " abc", "a" * 65, "ä"])
def test_request_ids_must_match_the_whole_pattern(request_id):
    frame = json.dumps({"v": p.PROTOCOL_VERSION, "t": "request", "id": request_id}).encode()
    with pytest.raises(ProtocolError, match="request id"):
        p.parse_header(frame)


def test_worker_info_is_small_flat_and_plain():
    info = {"python": "3.11.7", "pid": 42, "busy": True, "load": 0.5, "env": None, "ids": [1, "a"]}
    assert p.check_worker_info(info) is info
    bad: list[object] = [
        [1],
        {"x": {"nested": 1}},
        {"x": [1e15] * 3000},  # expands when encoded again: 1e15 -> 1000000000000000.0
        {"x": "y" * (p.MAX_INFO_TEXT + 1)},
        {"x": 2**60},
        {"x": float("nan")},
        {"": 1},
        {f"k{i}": i for i in range(p.MAX_INFO_KEYS + 1)},
        {f"k{i}": "v" * 200 for i in range(30)},  # every value fits, the whole does not
    ]
    for value in bad:
        with pytest.raises(ProtocolError):
            p.check_worker_info(value)
