"""The event stream's reading of the wire: AMQP 0-9-1 frames split out of large reads, deliveries assembled.

py-amqp reads each frame with three `recv`s (its header, its payload, its end octet) and keeps what a
larger read returns in a bytes buffer that it slices again for every one of them: on a live event stream
that is a wakeup per message and a copy of the buffer per frame part. It then decodes every property of
every delivery (the headers table included) into a `Message`. The event stream reads what has arrived in
one call and splits it here (`FrameBuffer`), and takes from each delivery of its consumer only what it
uses: the delivery tag, the content type and the body (`Deliveries`). Every other frame (connection and
channel methods, heartbeats, acks' errors) goes to py-amqp's own handler (`Connection.on_inbound_frame`).
Measured in bench/README.md ("The event stream's reader").
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final

from amqp.exceptions import UnexpectedFrame

# type (octet), channel (short), payload size (long); the payload; then the frame-end octet.
_HEADER: Final = struct.Struct(">BHI")
_FRAME_END: Final = 0xCE
_METHOD, _HEADER_FRAME, _BODY = 1, 2, 3
# Basic.Deliver: class 60, method 60.
_BASIC_DELIVER: Final = struct.pack(">HH", 60, 60)
# A content header: class, weight, body size, property flags; the content type, when its flag is set,
# is the first property.
_CONTENT_HEADER: Final = struct.Struct(">HHQH")
_CONTENT_TYPE_FLAG: Final = 0x8000
_FLAGS: Final = struct.Struct(">H")
_DELIVERY_TAG: Final = struct.Struct(">Q")

Frame = tuple[int, int, bytes]


class FrameBuffer:
    """Bytes read from the broker and not yet split into whole frames.

    Kept as `bytes`, not a bytearray: a frame's payload is then one slice, and a read that ends on a
    frame boundary (the usual case) is kept as it came, without a copy.
    """

    def __init__(self, initial: bytes = b"") -> None:
        self._buffer = initial

    def feed(self, data: bytes) -> None:
        self._buffer = self._buffer + data if self._buffer else data

    def frames(self) -> list[Frame]:
        """Every whole frame in the buffer, in order, as py-amqp's `read_frame` returns them; a partial
        frame stays for the next read."""
        buffer = self._buffer
        out: list[Frame] = []
        append, unpack = out.append, _HEADER.unpack_from
        start = 0
        end = len(buffer)
        while end - start >= _HEADER.size:
            frame_type, channel, size = unpack(buffer, start)
            payload_at = start + _HEADER.size
            frame_end_at = payload_at + size
            if frame_end_at >= end:
                break
            if buffer[frame_end_at] != _FRAME_END:
                raise UnexpectedFrame(f"Received frame_end {buffer[frame_end_at]:#04x} while expecting 0xce")
            append((frame_type, channel, buffer[payload_at:frame_end_at]))
            start = frame_end_at + 1
        self._buffer = buffer[start:] if start else buffer
        return out

    def take_rest(self) -> bytes:
        """What is left (part of a frame, or frames not split yet); the buffer is empty again."""
        rest, self._buffer = self._buffer, b""
        return rest

    def __len__(self) -> int:
        return len(self._buffer)


# What a delivery hands on: its delivery tag, content type (None when absent) and body.
DeliveryHandler = Callable[[int, str | None, bytes], None]


class Deliveries:
    """Assembles the deliveries of one channel (Basic.Deliver, its content header, its body frames) and
    hands each to `on_delivery`; every other frame goes to `on_other` (py-amqp's frame handler).

    `count_frame` is called once per frame kept here, as py-amqp counts the frames it reads (its
    heartbeat check needs them).
    """

    def __init__(self, channel: int, on_delivery: DeliveryHandler, on_other: Callable[[Frame], object],
                 count_frame: Callable[[], None]) -> None:
        self._channel = channel
        self._on_delivery = on_delivery
        self._on_other = on_other
        self._count_frame = count_frame
        self._tag = 0
        self._content_type: str | None = None
        self._size = 0
        self._parts: list[bytes] = []
        self._state = _METHOD  # the frame type this channel's next content frame must have

    def feed(self, frame: Frame) -> None:
        frame_type, channel, payload = frame
        if channel != self._channel:
            self._on_other(frame)
            return
        if self._state == _METHOD:
            if frame_type != _METHOD or payload[:4] != _BASIC_DELIVER:
                # Any other method, or the content of one py-amqp began before this reader took over.
                self._on_other(frame)
                return
        elif frame_type != self._state:
            raise UnexpectedFrame(f"Received frame {frame_type} while expecting type: {self._state}")
        self._count_frame()
        if frame_type == _METHOD:
            self._start(payload)
        elif frame_type == _HEADER_FRAME:
            self._header(payload)
        else:
            self._parts.append(payload)
            self._size -= len(payload)
            if self._size <= 0:
                self._deliver()

    def _start(self, payload: bytes) -> None:
        # Arguments: consumer tag (short string), delivery tag, redelivered, exchange, routing key.
        self._tag = _DELIVERY_TAG.unpack_from(payload, 5 + payload[4])[0]
        self._state = _HEADER_FRAME

    def _header(self, payload: bytes) -> None:
        _class, _weight, size, flags = _CONTENT_HEADER.unpack_from(payload, 0)
        at = _CONTENT_HEADER.size
        word = flags
        while word & 1:  # more property flags follow; the properties come after all of them
            word = _FLAGS.unpack_from(payload, at)[0]
            at += 2
        if flags & _CONTENT_TYPE_FLAG:
            self._content_type = payload[at + 1:at + 1 + payload[at]].decode("utf-8", "replace")
        else:
            self._content_type = None
        self._size = size
        if size:
            self._state = _BODY
        else:
            self._deliver()

    def _deliver(self) -> None:
        parts = self._parts
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        self._parts = []
        self._state = _METHOD
        self._on_delivery(self._tag, self._content_type, body)
