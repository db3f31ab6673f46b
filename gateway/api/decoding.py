"""Request bytes to messages, for every RPC of our services, without ever raising.

gRPC decodes a request before any handler of ours runs; with the generated
`add_*Servicer_to_server` a malformed request never reaches us and the client gets
UNKNOWN naming the parser's exception. Here the deserializer only keeps the bytes
and the parse result (`Received`); `open_request`, called by `status.rpc` once the
caller is authorized, turns a failure into `UndecodableRequest` with a plain reason
found by `wire_problem`, which reads the wire format against the message descriptor.
It also refuses a known field sent with the wrong wire type, which protobuf parsers
silently keep as an unknown field: the gateway must see the request the agent meant,
not a parser's best guess. Unknown field numbers are accepted (and dropped), so that
newer clients keep working.

`add_servicer` registers a servicer from its service descriptor and refuses one
whose methods are not all declared with `rpc`/`stream_rpc`, so every RPC in the
contract authenticates and authorizes before anything else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from gateway.errors import UndecodableRequest

# protobuf's default recursion limit for nested messages.
MAX_NESTING = 100
# A walk over a pathological message (many tiny fields) stops after this many fields
# (about 15 ms), so that it cannot stall the event loop for long; such a message is
# refused, as what lies beyond cannot be checked.
MAX_FIELDS_EXAMINED = 10_000

_VARINT, _I64, _LEN, _SGROUP, _EGROUP, _I32 = range(6)
WIRE_TYPE_NAMES = {
    _VARINT: "varint",
    _I64: "64-bit",
    _LEN: "length-delimited",
    _SGROUP: "group start",
    _EGROUP: "group end",
    _I32: "32-bit",
}
_F = FieldDescriptor
_WIRE_TYPE_OF = {
    **dict.fromkeys((_F.TYPE_DOUBLE, _F.TYPE_FIXED64, _F.TYPE_SFIXED64), _I64),
    **dict.fromkeys((_F.TYPE_FLOAT, _F.TYPE_FIXED32, _F.TYPE_SFIXED32), _I32),
    **dict.fromkeys(
        (
            _F.TYPE_INT32,
            _F.TYPE_INT64,
            _F.TYPE_UINT32,
            _F.TYPE_UINT64,
            _F.TYPE_SINT32,
            _F.TYPE_SINT64,
            _F.TYPE_BOOL,
            _F.TYPE_ENUM,
        ),
        _VARINT,
    ),
    **dict.fromkeys((_F.TYPE_STRING, _F.TYPE_BYTES, _F.TYPE_MESSAGE), _LEN),
    _F.TYPE_GROUP: _SGROUP,
}
# Hints from the parser's own error text, for what the walk does not pin down. Only
# used to choose among our plain reasons; the parser's words never reach the client.
_PARSER_HINTS = (
    ("UTF-8", "invalid UTF-8 in a string field"),
    ("MaxDepth", f"messages nested deeper than the limit of {MAX_NESTING} levels"),
)
MALFORMED = "not a valid message (truncated or corrupt)"


@dataclass(frozen=True, slots=True)
class Received:
    """A request as it came off the wire: its bytes, and the message if they parsed."""

    data: bytes
    message: Message | None
    parser_error: str = ""  # for the log only


def request_deserializer(message_class: type[Message]) -> Callable[[bytes], Received]:
    def deserialize(data: bytes) -> Received:
        try:
            return Received(data, message_class.FromString(data))
        # Anything raised here would reach the client as UNKNOWN naming the
        # exception; the failure is reported by `open_request` instead.
        except Exception as e:
            return Received(data, None, f"{type(e).__name__}: {e}")

    return deserialize


def open_request(received: Received, descriptor: Descriptor) -> Message:
    """The request message; raises UndecodableRequest when the bytes are not one."""
    message = received.message
    if message is None:
        why = wire_problem(descriptor, received.data)
        if why is None:
            hints = (text for marker, text in _PARSER_HINTS if marker in received.parser_error)
            why = next(hints, MALFORMED)
        raise UndecodableRequest(why, _detail(received))
    # A parsed message re-encodes to the same size unless the request carried unknown
    # fields (or a valid but unusual encoding); only then is the walk needed.
    message.DiscardUnknownFields()
    if message.ByteSize() != len(received.data):
        why = wire_problem(descriptor, received.data)
        if why is not None:
            raise UndecodableRequest(why, _detail(received))
    return message


def _detail(received: Received) -> str:
    parsed = received.parser_error or "parsed, with a known field of the wrong wire type"
    return f"{len(received.data)} bytes; {parsed}"


class _Problem(Exception):
    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class _GiveUp(Exception):
    """The walk examined MAX_FIELDS_EXAMINED fields without finding a problem."""


def wire_problem(descriptor: Descriptor, data: bytes) -> str | None:
    """The first reason `data` is not a valid encoding of `descriptor`, in plain words
    naming the request's top-level field; None when none is found."""
    walk = _Walk(data)
    try:
        walk.message(descriptor, 0, len(data), depth=0, top="")
    except _Problem as p:
        return p.why
    except _GiveUp:
        # Not "no problem found": a field past the limit could have the wrong wire
        # type, and protobuf would quietly drop it. No real request has this many.
        return f"more than {MAX_FIELDS_EXAMINED} fields"
    return None


class _Walk:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.fields = 0

    def message(
        self, descriptor: Descriptor | None, pos: int, end: int, depth: int, top: str
    ) -> int:
        """Checks the fields in data[pos:end] against `descriptor`, or, when it is None,
        those of a group up to its end tag; returns the position after them."""
        in_group = descriptor is None
        while pos < end:
            self.fields += 1
            if self.fields > MAX_FIELDS_EXAMINED:
                raise _GiveUp
            tag_at = pos
            tag, pos = self.varint(pos, end, top)
            number, wire = tag >> 3, tag & 7
            if wire == _EGROUP and in_group:
                return pos
            if number == 0 or wire not in WIRE_TYPE_NAMES or wire == _EGROUP:
                self.fail(top, f"invalid field tag at byte {tag_at}")
            field = None if descriptor is None else descriptor.fields_by_number.get(number)
            name = top or (field.name if field is not None else f"field {number}")
            if field is not None:
                self.check_wire_type(field, wire, name)
            pos = self.value(field, wire, pos, end, depth, name)
        if in_group:
            self.fail(top, "truncated")
        return pos

    def check_wire_type(self, field: FieldDescriptor, wire: int, name: str) -> None:
        expected = _WIRE_TYPE_OF[field.type]
        if wire == expected:
            return
        if wire == _LEN and field.is_repeated and expected in (_VARINT, _I64, _I32):
            return  # packed
        self.fail(
            name,
            f"wrong wire type ({WIRE_TYPE_NAMES[wire]} where "
            f"{WIRE_TYPE_NAMES[expected]} is expected)",
        )

    def value(
        self, field: FieldDescriptor | None, wire: int, pos: int, end: int, depth: int, name: str
    ) -> int:
        if wire == _VARINT:
            return self.varint(pos, end, name)[1]
        if wire in (_I64, _I32):
            size = 8 if wire == _I64 else 4
            if pos + size > end:
                self.fail(name, "truncated")
            return pos + size
        if wire == _SGROUP:
            self.nest(depth, name)
            return self.message(None, pos, end, depth + 1, name)
        length, pos = self.varint(pos, end, name)
        stop = pos + length
        if stop > end:
            self.fail(name, "truncated")
        if field is None:
            return stop
        if field.type == _F.TYPE_STRING:
            try:
                self.data[pos:stop].decode("utf-8")
            except UnicodeDecodeError:
                self.fail(name, "invalid UTF-8 in a string field")
        elif field.type == _F.TYPE_MESSAGE:
            self.nest(depth, name)
            self.message(field.message_type, pos, stop, depth + 1, name)
        elif _WIRE_TYPE_OF[field.type] == _VARINT:
            at = pos  # packed varints must end exactly where the field does
            while at < stop:
                at = self.varint(at, stop, name)[1]
        elif _WIRE_TYPE_OF[field.type] in (_I64, _I32) and (stop - pos) % (
            8 if _WIRE_TYPE_OF[field.type] == _I64 else 4
        ):
            self.fail(name, "truncated")
        return stop

    def nest(self, depth: int, name: str) -> None:
        if depth + 1 > MAX_NESTING:
            self.fail(name, f"messages nested deeper than the limit of {MAX_NESTING} levels")

    def varint(self, pos: int, end: int, name: str) -> tuple[int, int]:
        result = shift = 0
        while True:
            if pos >= end:
                self.fail(name, "truncated")
            byte = self.data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result, pos
            shift += 7
            if shift >= 70:
                self.fail(name, "malformed varint")

    @staticmethod
    def fail(name: str, why: str) -> NoReturn:
        raise _Problem(f"{name}: {why}" if name else why)


# --- registration ------------------------------------------------------------------


def message_class(descriptor: Descriptor) -> type[Message]:
    cls: type[Message] = message_factory.GetMessageClass(descriptor)
    return cls


def add_servicer(
    server: grpc.aio.Server,
    servicer: Any,
    service: ServiceDescriptor,
    authorized: Callable[[Any], bool],
) -> None:
    """Registers `servicer` for every method of `service`, with our deserializers.

    Raises TypeError when a method is missing or is not `authorized` (declared with
    `rpc`/`stream_rpc`): a new RPC cannot go out without authentication.
    """
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        behaviour = getattr(servicer, method.name, None)
        if behaviour is None or not authorized(behaviour):
            raise TypeError(
                f"{type(servicer).__name__}.{method.name} must be declared with rpc() or "
                "stream_rpc() naming the roles that may call it"
            )
        if method.client_streaming:
            raise TypeError(f"{service.full_name}/{method.name}: client streaming is not supported")
        deserializer = request_deserializer(message_class(method.input_type))
        serializer = message_class(method.output_type).SerializeToString
        make = (
            grpc.unary_stream_rpc_method_handler
            if method.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = make(
            behaviour, request_deserializer=deserializer, response_serializer=serializer
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)
