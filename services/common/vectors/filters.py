"""Search filter expressions and the id / label checks they rely on: every value is validated, then escaped."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Final

from couturier.services.common.errors import InvalidInput
from couturier.services.common.vectors.spaces import _CATEGORY, _COLOUR, _PK

MAX_PRODUCT_ID_BYTES: Final = 512  # VARCHAR max_length of the primary key (UTF-8 bytes): 128 chars of any script
MAX_LABEL_BYTES: Final = 128  # category, colour, model, model_version (UTF-8 bytes)
MAX_FILTER_VALUES: Final = 1_024  # values in one category / colour filter
MAX_EXCLUDED_IDS: Final = 65_536  # ids excluded from one search (in the filter: the server took 100k, k=1000)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _check_text(value: str, what: str, max_bytes: int, *, required: bool) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string, got {type(value).__name__}")
    if required and not value:
        raise InvalidInput(f"{what} is empty")
    size = len(value.encode("utf-8"))
    if size > max_bytes:
        raise InvalidInput(f"{what} is {size} bytes in UTF-8; at most {max_bytes}")
    if _CONTROL.search(value):
        raise InvalidInput(f"{what} {value!r} contains a control character")
    return value


def _check_ids(ids: Iterable[str], what: str = "product id") -> list[str]:
    """Validated ids in their first-seen order, duplicates removed."""
    if isinstance(ids, str):
        raise InvalidInput(f"{what}s must be a list of strings, got one string")
    seen: dict[str, None] = {}
    for product_id in ids:
        seen.setdefault(_check_text(product_id, what, MAX_PRODUCT_ID_BYTES, required=True), None)
    return list(seen)


def _quote(value: str) -> str:
    """A Milvus filter string literal. Control characters are refused by validation, so escaping the
    backslash and the double quote is enough for both the server's and milvus-lite's parser."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _in_list(field_name: str, values: Sequence[str], *, negate: bool = False) -> str:
    return f"{field_name} {'not in' if negate else 'in'} [{', '.join(_quote(v) for v in values)}]"


def build_filter(categories: Sequence[str] = (), colours: Sequence[str] = (), exclude_ids: Sequence[str] = ()) -> str:
    """The filter expression of a search (empty when nothing is filtered); every value is escaped."""
    clauses = []
    for field_name, values in ((_CATEGORY, categories), (_COLOUR, colours)):
        if isinstance(values, str):
            raise InvalidInput(f"{field_name} filter must be a list of strings, got one string")
        if len(values) > MAX_FILTER_VALUES:
            raise InvalidInput(f"{field_name} filter has {len(values)} values; at most {MAX_FILTER_VALUES}")
        what = f"{field_name} filter value"
        unique = list(dict.fromkeys(_check_text(v, what, MAX_LABEL_BYTES, required=False) for v in values))
        if unique:
            clauses.append(_in_list(field_name, unique))
    excluded = _check_ids(exclude_ids, "excluded product id")
    if len(excluded) > MAX_EXCLUDED_IDS:
        raise InvalidInput(f"{len(excluded)} products are excluded from the search; at most {MAX_EXCLUDED_IDS}")
    if excluded:
        clauses.append(_in_list(_PK, excluded, negate=True))
    return " and ".join(f"({clause})" for clause in clauses) if len(clauses) > 1 else "".join(clauses)
