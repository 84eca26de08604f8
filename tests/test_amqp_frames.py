"""The event stream's reading of the wire: whole frames out, in order, however the reads cut the bytes; each
delivery of the consumer as py-amqp itself would read it; every other frame left to py-amqp."""

from __future__ import annotations

import itertools
import struct
from types import SimpleNamespace
from typing import Any

import pytest
from amqp.basic_message import Message
from amqp.exceptions import UnexpectedFrame
from amqp.method_framing import frame_handler
from amqp.serialization import dumps, loads
from hypothesis import given
from hypothesis import strategies as st

from drainctl.amqp_frames import Deliveries, Frame, FrameBuffer


def encode(frame_type: int, channel: int, payload: bytes, end: int = 0xCE) -> bytes:
    return struct.pack(">BHI", frame_type, channel, len(payload)) + payload + bytes([end])


frames_strategy = st.lists(
    st.tuples(st.sampled_from([1, 2, 3, 8]), st.integers(0, 65535), st.binary(max_size=300)), max_size=20)


@given(frames=frames_strategy, cuts=st.lists(st.integers(0, 10_000), max_size=30))
def test_frames_come_out_whole_and_in_order_however_the_reads_cut_the_bytes(
        frames: list[tuple[int, int, bytes]], cuts: list[int]) -> None:
    wire = b"".join(encode(*frame) for frame in frames)
    points = sorted({0, len(wire), *(c % (len(wire) + 1) for c in cuts)})
    buffer = FrameBuffer()
    out = []
    for a, b in itertools.pairwise(points):
        buffer.feed(wire[a:b])
        out.extend(buffer.frames())
    assert out == frames
    assert len(buffer) == 0


def test_a_partial_frame_waits_for_its_rest_and_can_be_given_back() -> None:
    wire = encode(3, 1, b'{"type": "worker-heartbeat"}') + encode(1, 1, b"x" * 40)
    buffer = FrameBuffer(wire[:5])
    assert buffer.frames() == []
    buffer.feed(wire[5:-10])
    assert buffer.frames() == [(3, 1, b'{"type": "worker-heartbeat"}')]
    rest = buffer.take_rest()
    assert rest == wire[len(encode(3, 1, b'{"type": "worker-heartbeat"}')):-10]
    assert len(buffer) == 0


def test_a_frame_without_its_end_octet_is_refused() -> None:
    buffer = FrameBuffer(encode(1, 1, b"abc", end=0x00))
    with pytest.raises(UnexpectedFrame, match="frame_end 0x00"):
        buffer.frames()


# --------------------------------------------------------------------------- deliveries

def deliver_frames(channel: int, tag: int, message: Message, frame_max: int) -> list[Frame]:
    """The frames RabbitMQ sends for one Basic.Deliver, encoded with py-amqp's own serializers."""
    args = dumps("sLbss", ["amq.ctag-x", tag, False, "celeryev", "task.multi"])
    header = struct.pack(">HHQ", 60, 0, len(message.body)) + message._serialize_properties()
    body = message.body
    chunks = [body[i:i + frame_max] for i in range(0, len(body), frame_max)]
    return [(1, channel, struct.pack(">HH", 60, 60) + args), (2, channel, header),
            *((3, channel, chunk) for chunk in chunks)]


properties_strategy = st.fixed_dictionaries({}, optional={
    "content_type": st.sampled_from(["application/json", "application/x-python-serialize", ""]),
    "content_encoding": st.just("utf-8"),
    "delivery_mode": st.sampled_from([1, 2]),
    "priority": st.integers(0, 9),
    "headers": st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=3),
})
message_strategy = st.tuples(st.integers(1, 2**63), st.binary(max_size=600), properties_strategy)


@given(messages=st.lists(message_strategy, max_size=8), frame_max=st.integers(1, 700),
       others=st.lists(st.integers(0, 20), max_size=8))
def test_deliveries_are_what_py_amqp_reads_and_every_other_frame_goes_to_it_in_order(
        messages: list[tuple[int, bytes, dict[str, Any]]], frame_max: int, others: list[int]) -> None:
    """Assembled here or by py-amqp's own frame handler: the same tag, content type and body."""
    wire: list[Frame] = []
    other_frames: list[Frame] = []
    for i, (tag, body, properties) in enumerate(messages):
        if i in others:  # a heartbeat, and another method on the channel, between two deliveries
            other_frames += [(8, 0, b""), (1, 1, struct.pack(">HH", 60, 11))]
            wire += other_frames[-2:]
        wire += deliver_frames(1, tag, Message(body, **properties), frame_max)

    expected: list[tuple[int, str | None, bytes]] = []

    def on_method(channel: int, method: tuple[int, int], args: bytes, message: Message | None) -> None:
        if message is not None:
            tag = loads("sLbss", args, 4)[0][1]
            # py-amqp gives an empty body as "" (a str); bodies are bytes here.
            expected.append((tag, message.properties.get("content_type"), message.body or b""))

    reference = frame_handler(SimpleNamespace(bytes_recv=0), on_method)
    for frame in wire:
        reference(frame)

    got: list[tuple[int, str | None, bytes]] = []
    passed_on: list[Frame] = []
    counted = []
    deliveries = Deliveries(1, lambda *d: got.append(d), passed_on.append, lambda: counted.append(1))
    for frame in wire:
        deliveries.feed(frame)
    assert got == expected
    assert passed_on == other_frames
    assert len(counted) + len(passed_on) == len(wire)


def test_the_content_of_a_delivery_py_amqp_began_goes_on_to_py_amqp() -> None:
    frames = deliver_frames(1, 7, Message(b"[]", content_type="application/json"), 100)
    passed_on: list[Frame] = []
    deliveries = Deliveries(1, lambda *d: pytest.fail("not ours"), passed_on.append, lambda: None)
    for frame in frames[1:]:  # py-amqp read the method frame itself
        deliveries.feed(frame)
    assert passed_on == frames[1:]


def test_a_frame_out_of_place_inside_a_delivery_is_refused() -> None:
    frames = deliver_frames(1, 7, Message(b"[]", content_type="application/json"), 100)
    deliveries = Deliveries(1, lambda *d: None, lambda f: None, lambda: None)
    deliveries.feed(frames[0])
    with pytest.raises(UnexpectedFrame, match="while expecting type: 2"):
        deliveries.feed(frames[0])
