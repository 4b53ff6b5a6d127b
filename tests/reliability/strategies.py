"""Hypothesis strategies that build request wire bytes for any message type from its descriptor.

:func:`request_bytes` draws one request of a type as raw bytes, in one of these shapes:

* a message with random field values (known ids and categories, random text, numbers including NaN,
  infinities and extremes, valid and invalid images of every format), some fields over their cap;
* such a message with a string field (at any depth) holding bytes that are not UTF-8;
* such a message cut short, or random bytes.

With a valid seed request (reliability.seeds), most requests are the seed with a field or two
changed (:func:`mutated`), so the fuzzing also reaches the handlers behind validation. The bytes go
to a server unchanged (identity serializers), so invalid wire data reaches it.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st
from PIL import Image

from couturier.services.common.validation import field_limit

from .stack import PRODUCTS, USERS

#: Strings that mean something to the services (so some requests get past validation).
KNOWN_STRINGS = (
    "",
    *USERS,
    *PRODUCTS,
    "u404",
    "p404",
    "tops",
    "shoes",
    "bags",
    "hats",
    "red",
    "1",
    "2",
    "99",
    "same but in red",
    "image/png",
    "item_encoder",
    " ",
    "é" * 3,
    "\x00",
)
INT_VALUES = (0, 1, 2, 3, 5, -1, 2**31 - 1, -(2**31))
FLOAT_VALUES = (0.0, 0.5, 1.0, -1.0, 4.0, 1e30, -1e30, math.nan, math.inf, -math.inf)


def _image(fmt: str, size: int = 8) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(size).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


#: Valid images of the accepted formats, images of refused formats, broken ones.
IMAGES = (
    _image("PNG"),
    _image("PNG", 16),
    _image("JPEG"),
    _image("WEBP"),
    _image("BMP"),
    _image("GIF"),
    _image("TIFF"),
    _image("ICO"),
    _image("PPM"),
    _image("PNG")[:40],
    b"\x89PNG\r\n\x1a\n" + b"\x00" * 32,
    b"",
)


def _over(cap: int) -> st.SearchStrategy[int]:
    """Lengths at and just over a cap (and, for small caps, far over)."""
    lengths = [cap, cap + 1]
    if cap < 100_000:
        lengths.append(cap * 3 + 7)
    return st.sampled_from(lengths)


def _text(field: FieldDescriptor) -> st.SearchStrategy[str]:
    cap = field_limit(field) if not field.is_repeated else 128
    return st.one_of(
        st.sampled_from(KNOWN_STRINGS),
        st.text(max_size=12),
        _over(cap).map(lambda n: "é" * n),
    )


def _bytes(field: FieldDescriptor) -> st.SearchStrategy[bytes]:
    oversized = b"\xff" * (field_limit(field) + 1)  # one choice among many: megabytes cost time to send
    return st.one_of(st.sampled_from([*IMAGES, oversized]), st.binary(max_size=48))


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return _text(field)
    if kind == FieldDescriptor.TYPE_BYTES:
        return _bytes(field)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return st.one_of(st.sampled_from(FLOAT_VALUES), st.floats(-10, 10, width=32))
    if kind == FieldDescriptor.TYPE_ENUM:
        return st.sampled_from([*(v.number for v in field.enum_type.values), 7, -3])
    if kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        top = 2**32 - 1 if kind == FieldDescriptor.TYPE_UINT32 else 2**64 - 1
        return st.sampled_from([0, 1, 2, 7, top])
    if kind in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64):
        return st.sampled_from([*INT_VALUES, 2**63 - 1, -(2**63)])
    return st.sampled_from(INT_VALUES)


def _filler(field: FieldDescriptor) -> Any:
    """A cheap valid element of a repeated field (to fill it past its cap)."""
    if field.message_type is not None:
        return message_factory.GetMessageClass(field.message_type)()
    if field.type == FieldDescriptor.TYPE_STRING:
        return "x"
    if field.type == FieldDescriptor.TYPE_BYTES:
        return b"x"
    if field.type == FieldDescriptor.TYPE_BOOL:
        return False
    if field.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return 0.5
    return 1


def _field(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    entry = field.message_type
    if entry is not None and entry.GetOptions().map_entry:
        key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
        small = st.dictionaries(_scalar(key), _scalar(value), max_size=3)
        return st.one_of(small, _over(field_limit(field)).map(lambda n: {f"k{i}": "v" for i in range(n)}))
    if field.is_repeated:
        element = messages(entry, depth + 1) if entry is not None else _scalar(field)
        fill = _filler(field)
        over = _over(field_limit(field)).map(lambda n: [fill] * n)
        return st.one_of(st.lists(element, max_size=3), st.lists(element, min_size=6, max_size=8), over)
    if entry is not None:
        return messages(entry, depth + 1)
    return _scalar(field)


def _build(cls: type[Message], values: dict[str, Any]) -> Message:
    message = cls()
    for name, value in values.items():
        _assign(message, cls.DESCRIPTOR.fields_by_name[name], value)
    return message


_CACHE: dict[str, st.SearchStrategy[Message]] = {}


def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of ``descriptor``'s type with any subset of fields set to random values."""
    if depth > 6:
        return st.just(message_factory.GetMessageClass(descriptor)())
    key = f"{descriptor.full_name}@{depth}"
    if key not in _CACHE:
        cls = message_factory.GetMessageClass(descriptor)
        fields = {f.name: st.deferred(_lazy(f, depth)) for f in descriptor.fields}
        _CACHE[key] = st.fixed_dictionaries({}, optional=fields).map(lambda values: _build(cls, values))
    return _CACHE[key]


def _lazy(field: FieldDescriptor, depth: int) -> Callable[[], st.SearchStrategy[Any]]:
    return lambda: _field(field, depth)


# -- wire-level damage ---------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def string_paths(descriptor: Descriptor, depth: int = 0) -> list[list[FieldDescriptor]]:
    """Paths (field chains through message fields) to every string field of ``descriptor``'s type."""
    paths: list[list[FieldDescriptor]] = []
    for field in descriptor.fields:
        entry = field.message_type
        if field.type == FieldDescriptor.TYPE_STRING:
            paths.append([field])
        elif entry is not None and not entry.GetOptions().map_entry and depth < 5:
            paths.extend([field, *rest] for rest in string_paths(entry, depth + 1))
    return paths


def with_invalid_utf8(base: bytes, path: list[FieldDescriptor], junk: bytes) -> bytes:
    """``base`` plus the string field at ``path`` holding ``junk`` (not UTF-8): protobuf merges the
    appended fields into the message, so only that string is bad."""
    payload = _length_delimited(path[-1].number, junk)
    for field in reversed(path[:-1]):
        payload = _length_delimited(field.number, payload)
    return base + payload


INVALID_UTF8 = (b"\xff", b"\xc3\x28", b"ok\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"caf\xe9")


def field_paths(descriptor: Descriptor, depth: int = 0) -> list[list[FieldDescriptor]]:
    """Paths to every field of ``descriptor``'s type, through its singular message fields."""
    paths: list[list[FieldDescriptor]] = []
    for field in descriptor.fields:
        paths.append([field])
        entry = field.message_type
        if entry is not None and not field.is_repeated and depth < 4:
            paths.extend([field, *rest] for rest in field_paths(entry, depth + 1))
    return paths


@st.composite
def mutated(draw: st.DrawFn, seed: Message) -> Message:
    """``seed`` with one or two fields (at any depth) set to random values (or cleared)."""
    message = type(seed)()
    message.CopyFrom(seed)
    paths = field_paths(message.DESCRIPTOR)
    for _ in range(draw(st.integers(1, 2))):
        path = draw(st.sampled_from(paths))
        parent = message
        for field in path[:-1]:
            parent = getattr(parent, field.name)
        leaf = path[-1]
        parent.ClearField(leaf.name)
        if draw(st.booleans()) or leaf.message_type is None:  # else: leave it cleared
            value = draw(_field(leaf, len(path)))
            _assign(parent, leaf, value)
    return message


def _assign(parent: Message, field: FieldDescriptor, value: Any) -> None:
    target = getattr(parent, field.name)
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        target.update(value)
    elif field.is_repeated:
        target.extend(value)
    elif field.message_type is not None:
        target.CopyFrom(value)
    else:
        setattr(parent, field.name, value)


@st.composite
def request_bytes(draw: st.DrawFn, descriptor: Descriptor, seed: Message | None = None) -> bytes:
    """One request of ``descriptor``'s type as wire bytes (see the module docstring for the shapes).

    With a valid ``seed`` request, most requests are the seed itself or the seed with a field or two
    changed, so the fuzzing reaches past validation into the handlers."""
    shapes = ["random", "utf8", "cut", "noise"]
    if seed is not None:
        shapes += ["seed", "seed", *["mutated"] * 6]
    shape = draw(st.sampled_from(shapes))
    if shape == "noise":
        return draw(st.binary(max_size=64))
    if seed is not None and shape != "random":
        base = seed if shape == "seed" else draw(mutated(seed))
    else:
        base = draw(messages(descriptor))
    data = base.SerializeToString()
    if shape == "cut" and data:
        return data[: draw(st.integers(0, len(data) - 1))]
    paths = string_paths(descriptor)
    if shape == "utf8" and paths:
        path = draw(st.sampled_from(paths))
        return with_invalid_utf8(data, path, draw(st.sampled_from(INVALID_UTF8)))
    return data
