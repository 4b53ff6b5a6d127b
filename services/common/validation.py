"""Request validation helpers: each raises InvalidInput with the field name and the allowed range."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from couturier.services.common import limits
from couturier.services.common.errors import InvalidInput
from couturier.v1 import common_pb2


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
