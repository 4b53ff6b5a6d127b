"""Templated modification texts: (reference item, "change", real target item) triples.

Every change is derived from catalogue attributes, so the target really differs as described:

* ``colour``        — same Fashion-MNIST class, another palette colour ("same but in red").
* ``class_within``  — same category group, another class, same colour ("make it a sandal").
* ``class_across``  — another category group, same colour ("turn it into a dress").

The target is a REAL catalogue item with the required attributes; among those, the one whose
silhouette (colour-independent ink map) is closest to the reference, i.e. the same shape family
where the catalogue has one. Everything is deterministic in (seed, reference row).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
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
CLASS_TEMPLATES = (
    "make it {a} {n}",
    "turn it into {a} {n}",
    "same colour but as {a} {n}",
    "I'd like {a} {n} like this",
    "show me {a} {n} in this colour",
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


@dataclass(frozen=True)
class Modification:
    """One request: reference row (in the reference set), target row (in the catalogue), text."""

    reference: int
    target: int
    kind: str  # "colour" | "class_within" | "class_across"
    text: str
    target_colour: int
    target_fm_class: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _article(noun: str) -> str:
    return "an" if noun[0] in "aeiou" else "a"


def colour_text(template: int, colour: str, fm_class: int) -> str:
    """Colour-change phrasing number ``template`` (mod the number of templates)."""
    t = COLOUR_TEMPLATES[template % len(COLOUR_TEMPLATES)]
    return t.format(c=colour, n=FM_NOUNS[fm_class].removeprefix("pair of "))


def class_text(template: int, fm_class: int) -> str:
    """Class-change phrasing number ``template`` toward ``fm_class``."""
    noun = FM_NOUNS[fm_class]
    return CLASS_TEMPLATES[template % len(CLASS_TEMPLATES)].format(a=_article(noun), n=noun)


def shape_descriptors(images: np.ndarray) -> np.ndarray:
    """Colour-independent silhouette: ink = 1 - luminance/255 (white background -> 0), L2-normalised."""
    ink = 1.0 - images.astype(np.float32).mean(axis=3).reshape(len(images), -1) / 255.0
    return ink / np.maximum(np.linalg.norm(ink, axis=1, keepdims=True), 1e-8)


def make_modifications(
    reference: Any,
    catalogue: Any,
    colour_names: Sequence[str],
    per_reference: int = 2,
    seed: int = 0,
    rows: Sequence[int] | None = None,
) -> list[Modification]:
    """Up to ``per_reference`` modifications for each reference row (alternating colour / class).

    ``reference`` and ``catalogue`` have ``images``, ``fm_class``, ``colour`` (and ``product_ids``);
    when they are the same object, a target is never the reference itself.
    """
    ref_desc, cat_desc = shape_descriptors(reference.images), shape_descriptors(catalogue.images)
    cat_fm, cat_col = np.asarray(catalogue.fm_class), np.asarray(catalogue.colour)
    ref_fm, ref_col = np.asarray(reference.fm_class), np.asarray(reference.colour)
    pools: dict[tuple[int, int], np.ndarray] = {}
    for f, c in set(zip(cat_fm.tolist(), cat_col.tolist())):
        pools[(f, c)] = np.flatnonzero((cat_fm == f) & (cat_col == c))
    n_col = len(colour_names)
    same = reference is catalogue
    out: list[Modification] = []
    for i in range(len(ref_fm)) if rows is None else rows:
        rng = np.random.default_rng([seed, int(i)])
        fm, col = int(ref_fm[i]), int(ref_col[i])
        colours = [c for c in rng.permutation(n_col).tolist() if c != col and (fm, c) in pools]
        moves = (
            [m for m in rng.permutation(list(CLASS_MOVES[fm])).tolist() if (m, col) in pools] if CLASS_MOVES[fm] else []
        )
        want = ["colour" if k % 2 == 0 else "class" for k in range(per_reference)]
        for kind in want:
            if kind == "class" and moves:
                tf, tc = int(moves.pop(0)), col
                text = class_text(int(rng.integers(len(CLASS_TEMPLATES))), tf)
                kind = "class_within" if FM_TO_GROUP[tf] == FM_TO_GROUP[fm] else "class_across"
            elif colours:
                tf, tc = fm, int(colours.pop(0))
                text = colour_text(int(rng.integers(len(COLOUR_TEMPLATES))), colour_names[tc], fm)
                kind = "colour"
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
