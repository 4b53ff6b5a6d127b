"""Request validation helpers: each raises InvalidInput with the field name and the allowed range.

:func:`check_field_limits` is the one check of every string, bytes and repeated field's cap (run by
the server's request guard on every request before any handler); the helpers below check what a
cap cannot (required fields, ranges, finite numbers). Messages name fields and counts, and quote
caller values only through ``errors.brief``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from couturier.services.common import limits
from couturier.services.common.errors import InvalidInput, brief
from couturier.v1 import common_pb2

_TEXT_TYPES = (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES)


def field_limit(field: FieldDescriptor) -> int:
    """The cap of ``field``: characters (string), bytes (bytes) or entries (repeated / map).

    Its own in ``limits.FIELD_LIMITS``, else the default of its kind."""
    own = limits.FIELD_LIMITS.get(field.full_name)
    if own is not None:
        return own
    if field.is_repeated:
        return limits.MAX_REPEATED
    return limits.MAX_BYTES if field.type == FieldDescriptor.TYPE_BYTES else limits.MAX_STRING_CHARS


def _check_text(field: FieldDescriptor, value: str | bytes, cap: int, where: str) -> None:
    if len(value) <= cap:
        return
    if field.type == FieldDescriptor.TYPE_BYTES:
        raise InvalidInput(f"{where} is {len(value)} bytes; the limit is {cap} bytes")
    raise InvalidInput(f"{where} has {len(value)} characters; at most {cap}")


def _is_map(descriptor: Descriptor | None) -> bool:
    return descriptor is not None and descriptor.GetOptions().map_entry


def check_field_limits(message: Message, prefix: str = "") -> None:
    """Raises InvalidInput naming the first field of ``message`` (nested ones included) over its cap
    (:func:`field_limit`): the one check of every string, bytes and repeated field of a request.

    ``prefix`` goes before field paths (e.g. ``"message 3: "`` for a streamed message)."""
    _check_message(message, prefix)


def _check_message(message: Message, path: str) -> None:
    for field, value in message.ListFields():
        where = f"{path}{field.name}"
        if field.is_repeated:
            cap = field_limit(field)
            if len(value) > cap:
                raise InvalidInput(f"{where} has {len(value)} entries; at most {cap}")
            entry = field.message_type
            if _is_map(entry):
                key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
                for key, item in value.items():
                    at = f"{where}[{brief(key)}]"
                    if key_field.type in _TEXT_TYPES:
                        _check_text(key_field, key, field_limit(key_field), f"{at} (key)")
                    if value_field.message_type is not None:
                        _check_message(item, f"{at}.")
                    elif value_field.type in _TEXT_TYPES:
                        _check_text(value_field, item, field_limit(value_field), at)
            elif entry is not None:
                for index, item in enumerate(value):
                    _check_message(item, f"{where}[{index}].")
            elif field.type in _TEXT_TYPES:
                for index, item in enumerate(value):
                    _check_text(field, item, limits.MAX_LIST_STRING_CHARS, f"{where}[{index}]")
        elif field.message_type is not None:
            _check_message(value, f"{where}.")
        elif field.type in _TEXT_TYPES:
            _check_text(field, value, field_limit(field), where)


def model_version_number(value: str, field: str) -> str:
    """A requested model version: empty (the service chooses) or a version number such as "2"."""
    if value and not (value.isascii() and value.isdigit() and len(value) <= limits.MAX_VERSION_CHARS):
        raise InvalidInput(
            f"{field} must be a version number such as '2' (1-{limits.MAX_VERSION_CHARS} digits) or empty, "
            f"got {brief(value)}"
        )
    return value


def require_id(value: str, field: str) -> str:
    if not value:
        raise InvalidInput(f"{field} is required")
    if len(value) > limits.MAX_ID_LENGTH:
        raise InvalidInput(f"{field} is {len(value)} characters; at most {limits.MAX_ID_LENGTH}")
    return value


def int_in_range(value: int, low: int, high: int, field: str, default: int | None = None) -> int:
    """The value, or ``default`` when it is 0 and a default exists; must lie in [low, high]."""
    if value == 0 and default is not None:
        return default
    if not low <= value <= high:
        raise InvalidInput(f"{field} must be between {low} and {high}, got {value}")
    return value


def float_in_range(
    value: float, low: float, high: float, field: str, default: float | None = None, low_inclusive: bool = True
) -> float:
    """Like int_in_range for floats; NaN and infinities are always rejected."""
    if not math.isfinite(value):
        raise InvalidInput(f"{field} must be a finite number, got {value}")
    if value == 0.0 and default is not None:
        return default
    below = value < low if low_inclusive else value <= low
    if below or value > high:
        bracket = "[" if low_inclusive else "("
        raise InvalidInput(f"{field} must be in {bracket}{low:g}, {high:g}], got {value:g}")
    return value


def require_finite(values: Sequence[float], field: str) -> None:
    for index, value in enumerate(values):
        if not math.isfinite(value):
            raise InvalidInput(f"{field}[{index}] is {value}; only finite numbers are allowed")


def bounded_list(values: Sequence[str], high: int, field: str, *, at_least_one: bool = False) -> list[str]:
    if at_least_one and not values:
        raise InvalidInput(f"{field} needs at least one entry")
    if len(values) > high:
        raise InvalidInput(f"{field} has {len(values)} entries; at most {high}")
    for index, value in enumerate(values):
        require_id(value, f"{field}[{index}]")
    return list(values)


def audience_users(audience: common_pb2.Audience, field: str = "audience") -> list[common_pb2.UserRef]:
    """The users of an audience (one user or a group), validated."""
    kind = audience.WhichOneof("target")
    if kind is None:
        raise InvalidInput(f"{field} must name a user or a group")
    users = [audience.user] if kind == "user" else list(audience.group.users)
    if not users:
        raise InvalidInput(f"{field}.group has no users; send 1-{limits.MAX_GROUP_USERS}")
    if len(users) > limits.MAX_GROUP_USERS:
        raise InvalidInput(f"{field}.group has {len(users)} users; at most {limits.MAX_GROUP_USERS}")
    for index, user in enumerate(users):
        where = f"{field}.user" if kind == "user" else f"{field}.group.users[{index}]"
        require_id(user.user_id, f"{where}.user_id")
        bounded_list(user.liked_product_ids, limits.MAX_EXCLUDED_IDS, f"{where}.liked_product_ids")
    return users


def item_source(item: common_pb2.ItemSource, field: str = "item") -> np.ndarray | None:
    """An item is a product id or a readable image: the decoded RGB pixels of an upload (decoded once
    here, for the caller to use), None for a product id."""
    from couturier.services.common.images import decode_image

    kind = item.WhichOneof("source")
    if kind is None:
        raise InvalidInput(f"{field} must be a product_id or an image")
    if kind == "product_id":
        require_id(item.product_id, f"{field}.product_id")
        return None
    return decode_image(item.image.data, f"{field}.image")


def categorised_item(item: common_pb2.ItemSource, category: str, field: str = "item") -> np.ndarray | None:
    """An item whose category must be known: a product carries its own, an uploaded image needs one.

    Returns the upload's pixels (None for a product id), like :func:`item_source`."""
    pixels = item_source(item, field)
    if pixels is not None and not category:
        raise InvalidInput(f"category is required with an uploaded {field}.image")
    return pixels
