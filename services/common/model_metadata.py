"""What an exported model says about itself: ONNX ``metadata_props`` under the ``couturier.`` prefix.

The exporter writes these keys into each ONNX file. Publishing copies the keys of
:data:`PUBLISHED_KEYS` into the model's ``config.pbtxt`` ``parameters`` as well, because Triton shows a
model's config (``get_model_config``) but not its ONNX metadata. Both inference backends return them
through ``InferenceBackend.model_metadata`` with the prefix stripped.

The category list (``couturier.categories``, a JSON list of names in one-hot order) comes from the
dataset the generator was trained on; a model that takes a category one-hot carries it, and the
services map category names to indices with it (:class:`ModelCategories`). No onnx here.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Final

from couturier.services.common.errors import InvalidInput, PreconditionFailed

if TYPE_CHECKING:
    from couturier.services.common.inference import InferenceBackend

#: Prefix of couturier's keys in ONNX ``metadata_props`` and in ``config.pbtxt`` ``parameters``.
METADATA_PREFIX: Final = "couturier."
#: Category names in the order of the model's one-hot ``category`` input: a JSON list of strings.
CATEGORIES_KEY: Final = "categories"
#: Keys that describe a model's inputs, so every version of one model name must agree on them:
#: publishing copies them into ``config.pbtxt`` (where Triton shows them) and refuses a change.
PUBLISHED_KEYS: Final = (CATEGORIES_KEY,)
#: How many names an error message lists before it says how many more there are.
LISTED_NAMES: Final = 12


def encode_categories(names: Sequence[str]) -> str:
    """The metadata value of a category list: JSON, in one-hot order. ValueError for an invalid list."""
    return json.dumps(list(_checked(names)))


def decode_categories(text: str) -> tuple[str, ...]:
    """The category list of a metadata value; ValueError when it is not a JSON list of distinct names."""
    try:
        names = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(names, list):
        raise ValueError(f"expected a JSON list of names, got {type(names).__name__}")
    return _checked(names)


def _checked(names: Iterable[object]) -> tuple[str, ...]:
    out: list[str] = []
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"category names must be non-empty strings, got {name!r}")
        out.append(name)
    if not out:
        raise ValueError("the category list is empty")
    repeated = sorted(n for n, count in Counter(out).items() if count > 1)
    if repeated:
        raise ValueError(f"category names repeat: {', '.join(repeated)}")
    return tuple(out)


def listed(names: Sequence[str], limit: int = LISTED_NAMES) -> str:
    """``a, b, c`` for an error message; a long list is cut after ``limit`` names (``... and 40 more``)."""
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... and {len(names) - limit} more"


def categories_from(metadata: Mapping[str, str], model: str, version: str) -> tuple[str, ...]:
    """The category list in a model's metadata (prefix stripped).

    PreconditionFailed when it is missing (a model exported before categories travelled with the
    models) or malformed: either way the model must be exported again."""
    text = metadata.get(CATEGORIES_KEY)
    where = f"model {model} v{version}" if version else f"model {model}"
    if text is None:
        raise PreconditionFailed(
            f"{where} carries no category list (ONNX metadata {METADATA_PREFIX}{CATEGORIES_KEY}): it was exported "
            "before the categories travelled with the models; re-export with couturier export and publish it"
        )
    try:
        return decode_categories(text)
    except ValueError as exc:
        raise PreconditionFailed(
            f"{where} has an invalid category list ({METADATA_PREFIX}{CATEGORIES_KEY}: {exc}); "
            "re-export with couturier export and publish it"
        ) from None


def category_index(categories: Sequence[str], name: str, model: str = "the generator") -> int:
    """Index of ``name`` in ``categories`` (the one-hot position); InvalidInput naming the valid ones."""
    try:
        return list(categories).index(name)
    except ValueError:
        raise InvalidInput(f"unknown category {name!r}; {model} knows {listed(categories)}") from None


class ModelCategories:
    """Category lists of served models, read from their metadata once per ``(model, version)``.

    Versions are immutable, so an entry never goes stale; a new version is read when a request
    resolves to it. :meth:`common` also checks that models used together agree on the list.
    """

    def __init__(self, backend: InferenceBackend) -> None:
        self.backend = backend
        self._cache: dict[tuple[str, str], tuple[str, ...]] = {}

    async def of(self, model: str, version: str) -> tuple[str, ...]:
        """The categories of ``model`` at ``version`` (a resolved version, not "")."""
        key = (model, version)
        if key not in self._cache:
            metadata = await self.backend.model_metadata(model, version)
            self._cache[key] = categories_from(metadata, model, version)
        return self._cache[key]

    async def common(self, versions: Mapping[str, str]) -> tuple[str, ...]:
        """The one category list of every ``model -> version`` in ``versions``.

        PreconditionFailed when two of them differ: they were exported from different training runs."""
        lists = {model: await self.of(model, version) for model, version in versions.items()}
        (first, names), *rest = lists.items()
        for model, other in rest:
            if other != names:
                raise PreconditionFailed(
                    f"models {first} v{versions[first]} and {model} v{versions[model]} have different categories "
                    f"({listed(names)} vs {listed(other)}): publish models of one export together "
                    "(`couturier export`)"
                )
        return names
