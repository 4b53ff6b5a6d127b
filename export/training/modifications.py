"""Templated modification texts: (reference item, "change", real target item) triples.

The words come from the dataset's own labels (:class:`TextVocabulary`): the *kind* of product
(the Fashion-MNIST class on the simulated world, else the category) and one categorical *attribute*
(the colour where the dataset has one, else its most useful categorical attribute). Every change is
derived from those labels, so the target really differs as described:

* ``attribute``     — same kind, another attribute value ("same but in red").
* ``class_within``  — another kind of the same group, same attribute value ("make it a sandal").
* ``class_across``  — a kind of another group, same attribute value ("turn it into a dress").

The target is a REAL catalogue item with the required labels; among those, the one whose silhouette
(colour-independent ink map) is closest to the reference, i.e. the same shape family where the
catalogue has one. Everything is deterministic in (seed, reference row). A dataset without a usable
attribute has no vocabulary (:func:`text_vocabulary` returns None): no multimodal model is trained.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from couturier.export.training.data_access import FM_NOUNS

COLOUR_TEMPLATES = (
    "same but in {c}",
    "make it {c}",
    "I want this in {c}",
    "the same {n} in {c}",
    "change the colour to {c}",
    "like this one but {c}",
)
#: Attribute changes other than colour ("striped", "leather", ...).
ATTRIBUTE_TEMPLATES = (
    "same but {c}",
    "make it {c}",
    "I want this {c}",
    "the same {n} but {c}",
    "like this one but {c}",
)
CLASS_TEMPLATES = (
    "make it {a} {n}",
    "turn it into {a} {n}",
    "same {t} but as {a} {n}",
    "I'd like {a} {n} like this",
    "show me {a} {n} in this {t}",
)
#: fm_class -> classes a shopper may ask to turn it into (bags have no sensible move).
CLASS_MOVES: dict[int, tuple[int, ...]] = {
    0: (6, 3, 2),
    1: (3,),
    2: (4, 0),
    3: (0, 4),
    4: (2, 3),
    5: (7, 9),
    6: (0, 2),
    7: (5, 9),
    8: (),
    9: (7, 5),
}
#: fm_class -> category group (mirrors the data layer's FM_CLASS_TO_CATEGORY).
FM_TO_GROUP = (0, 2, 1, 3, 1, 4, 0, 4, 5, 4)
#: An attribute is usable for texts when it has this many values (each on >= 2 products).
USABLE_VALUES = (2, 64)
_COLOUR_NAMES = ("colour", "color")


@dataclass(frozen=True)
class TextVocabulary:
    """What modification texts may say about a catalogue, and the label arrays behind the words."""

    kind_label: str  # "fm_class" (simulated garment classes) or "category"
    nouns: tuple[str, ...]  # kind code -> noun
    groups: tuple[int, ...]  # kind code -> group (class_within vs class_across)
    moves: Mapping[int, tuple[int, ...]]  # kind code -> kinds one may ask to turn it into
    attribute: str  # the attribute texts change ("colour", "material", ...)
    values: tuple[str, ...]  # attribute code -> word
    templates: tuple[str, ...] = field(default=COLOUR_TEMPLATES)

    def kinds(self, catalogue: Any) -> np.ndarray:
        """Kind code per product."""
        return np.asarray(getattr(catalogue, self.kind_label), dtype=np.int64)

    def attribute_codes(self, catalogue: Any) -> np.ndarray:
        """Attribute code per product (-1 = unknown)."""
        if self.attribute == "colour" and self.attribute not in (getattr(catalogue, "attributes", None) or {}):
            return np.asarray(catalogue.colour, dtype=np.int64)
        return np.asarray(catalogue.attributes[self.attribute], dtype=np.int64)

    def caption(self, kind: int, value: int) -> str:
        """A product described by its labels, e.g. "a red dress" (for text-only search)."""
        return f"a {self.values[value]} {self.nouns[kind]}" if value >= 0 else f"a {self.nouns[kind]}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind_label": self.kind_label,
            "kinds": list(self.nouns),
            "attribute": self.attribute,
            "values": list(self.values),
        }


def _usable(codes: np.ndarray, n_values: int) -> bool:
    counts = np.bincount(codes[codes >= 0], minlength=n_values)
    return USABLE_VALUES[0] <= int((counts >= 2).sum()) and n_values <= USABLE_VALUES[1]


def text_vocabulary(catalogue: Any) -> TextVocabulary | None:
    """The vocabulary of a catalogue, or None when no categorical attribute is usable for texts.

    Simulated world (Fashion-MNIST class known for every product): classes as nouns, the curated class
    moves, colours. Otherwise: categories as nouns (any other category is a move), and the dataset's
    colour attribute, else its categorical attribute with the most usable values.
    """
    values: Mapping[str, Sequence[str]] = dict(getattr(catalogue, "attribute_values", None) or {})
    codes: dict[str, np.ndarray] = {
        k: np.asarray(v, np.int64) for k, v in (getattr(catalogue, "attributes", None) or {}).items()
    }
    colour_names = tuple(getattr(catalogue, "colour_names", ()) or ())
    colour = np.asarray(getattr(catalogue, "colour", np.zeros(0)), dtype=np.int64)
    if colour_names and "colour" not in values and len(colour) and (colour >= 0).any():
        values, codes = {**values, "colour": colour_names}, {**codes, "colour": colour}
    usable = [name for name in values if name in codes and _usable(codes[name], len(values[name]))]
    if not usable:
        return None
    colourish = [name for name in usable if name.lower() in _COLOUR_NAMES]
    attribute = (
        colourish[0]
        if colourish
        else max(usable, key=lambda n: (int((np.bincount(codes[n][codes[n] >= 0]) >= 2).sum()), n))
    )
    templates = COLOUR_TEMPLATES if colourish else ATTRIBUTE_TEMPLATES
    fm = np.asarray(getattr(catalogue, "fm_class", np.zeros(0)), dtype=np.int64)
    if len(fm) and (fm >= 0).all():
        return TextVocabulary(
            "fm_class", FM_NOUNS, FM_TO_GROUP, CLASS_MOVES, attribute, tuple(values[attribute]), templates
        )
    names = tuple(str(n) for n in catalogue.category_names)
    moves = {k: tuple(j for j in range(len(names)) if j != k) for k in range(len(names))}
    return TextVocabulary(
        "category", names, tuple(range(len(names))), moves, attribute, tuple(values[attribute]), templates
    )


@dataclass(frozen=True)
class Modification:
    """One request: reference row (in the reference set), target row (in the catalogue), text."""

    reference: int
    target: int
    kind: str  # "attribute" | "class_within" | "class_across"
    text: str
    target_value: int  # attribute code of the target
    target_kind: int  # kind code of the target

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _article(noun: str) -> str:
    return "an" if noun[0] in "aeiou" else "a"


def attribute_text(vocab: TextVocabulary, template: int, value: int, kind: int) -> str:
    """Attribute-change phrasing number ``template`` (mod the number of templates)."""
    t = vocab.templates[template % len(vocab.templates)]
    return t.format(c=vocab.values[value], n=vocab.nouns[kind].removeprefix("pair of "))


def class_text(vocab: TextVocabulary, template: int, kind: int) -> str:
    """Kind-change phrasing number ``template`` toward ``kind``."""
    noun = vocab.nouns[kind]
    t = CLASS_TEMPLATES[template % len(CLASS_TEMPLATES)]
    return t.format(a=_article(noun), n=noun, t=vocab.attribute)


def shape_descriptors(images: np.ndarray, side: int = 32, chunk: int = 2048) -> np.ndarray:
    """Colour-independent silhouette: ink = 1 - luminance/255 (white background -> 0), average-pooled to
    at most ``side`` px, L2-normalised; (N, side*side) float32, computed in chunks (bounded memory)."""
    size = images.shape[1]
    f = max(size // side, 1)
    out = np.empty((len(images), (size // f) ** 2), dtype=np.float32)
    for start in range(0, len(images), chunk):
        block = np.asarray(images[start : start + chunk], dtype=np.float32)
        ink = 1.0 - block.mean(axis=3) / 255.0
        if f > 1:
            ink = (
                ink[:, : size // f * f, : size // f * f].reshape(len(ink), size // f, f, size // f, f).mean(axis=(2, 4))
            )
        flat = ink.reshape(len(ink), -1)
        out[start : start + chunk] = flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-8)
    return out


def make_modifications(
    reference: Any,
    catalogue: Any,
    vocab: TextVocabulary,
    per_reference: int = 2,
    seed: int = 0,
    rows: Sequence[int] | None = None,
) -> list[Modification]:
    """Up to ``per_reference`` modifications for each reference row (alternating attribute / kind).

    ``reference`` and ``catalogue`` carry ``images`` and the vocabulary's labels; when they are the
    same object, a target is never the reference itself. References with an unknown attribute value
    are skipped.
    """
    ref_desc, cat_desc = shape_descriptors(reference.images), shape_descriptors(catalogue.images)
    cat_kind, cat_val = vocab.kinds(catalogue), vocab.attribute_codes(catalogue)
    ref_kind, ref_val = vocab.kinds(reference), vocab.attribute_codes(reference)
    pools: dict[tuple[int, int], np.ndarray] = {}
    for f, c in set(zip(cat_kind.tolist(), cat_val.tolist())):
        if c >= 0:
            pools[(f, c)] = np.flatnonzero((cat_kind == f) & (cat_val == c))
    n_val = len(vocab.values)
    same = reference is catalogue
    out: list[Modification] = []
    for i in range(len(ref_kind)) if rows is None else rows:
        rng = np.random.default_rng([seed, int(i)])
        fm, col = int(ref_kind[i]), int(ref_val[i])
        if col < 0:
            continue
        values = [c for c in rng.permutation(n_val).tolist() if c != col and (fm, c) in pools]
        allowed = list(vocab.moves.get(fm, ()))
        moves = [m for m in rng.permutation(allowed).tolist() if (m, col) in pools] if allowed else []
        want = ["attribute" if k % 2 == 0 else "class" for k in range(per_reference)]
        for kind in want:
            if kind == "class" and moves:
                tf, tc = int(moves.pop(0)), col
                text = class_text(vocab, int(rng.integers(len(CLASS_TEMPLATES))), tf)
                kind = "class_within" if vocab.groups[tf] == vocab.groups[fm] else "class_across"
            elif values:
                tf, tc = fm, int(values.pop(0))
                text = attribute_text(vocab, int(rng.integers(len(vocab.templates))), tc, fm)
                kind = "attribute"
            else:
                continue
            pool = pools[(tf, tc)]
            if same:
                pool = pool[pool != i]
                if len(pool) == 0:
                    continue
            target = int(pool[np.argmax(cat_desc[pool] @ ref_desc[i])])
            out.append(Modification(int(i), target, kind, text, tc, tf))
    return out


def describe(mods: Sequence[Modification]) -> dict[str, Any]:
    """Counts per kind and the number of distinct phrasings."""
    kinds: dict[str, int] = {}
    for m in mods:
        kinds[m.kind] = kinds.get(m.kind, 0) + 1
    return {"n": len(mods), "by_kind": kinds, "distinct_texts": len({m.text for m in mods})}
