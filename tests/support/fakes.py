"""In-memory stand-ins for the model server and the vector store, for fast unit tests of service logic.

:class:`FakeInferenceBackend` implements :class:`couturier.services.common.inference.InferenceBackend`
for every model of :mod:`couturier.services.common.models`, with the real input and output names and
shapes, by small deterministic numpy networks (:class:`FakeNets`, one set of weights per model
version). The gradient models (``pref_grad``, ``inv_grad``, ``shift_grad``) compute the objectives of
:mod:`couturier.export.objectives` over the fake generator / discriminator / item encoder of the same
version, with analytic gradients, so a latent optimiser can be tested against numpy. The loop models
(``inv_loop``, ``pref_loop``, ``shift_loop``) run their K Adam steps over those in numpy
(:mod:`support.fake_loops`).

:class:`InMemoryVectorStore` implements the methods of
:class:`couturier.services.common.vectors.VectorStore` that the services call (exact search with the
space's metric, category / colour / id filters), so the servicers run without Milvus;
:class:`InMemoryImageStore` keeps the retrieval service's product images in a dict.

Both count their calls and can be switched off (``unavailable = True``) to test health and error paths.
"""

from __future__ import annotations

import asyncio
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from couturier.services.common.errors import DependencyUnavailable, InvalidInput, PreconditionFailed
from couturier.services.common.inference import BackendUnavailable, BadInferenceInput, ModelNotReady
from couturier.services.common.loop_specs import LOOP_SPECS
from couturier.services.common.model_metadata import CATEGORIES_KEY, encode_categories
from couturier.services.common.models import (
    ALL_MODELS,
    CATEGORY_MODELS,
    DISCRIMINATOR,
    GENERATOR,
    INV_GRAD,
    ITEM_ENCODER,
    PREF_GRAD,
    QUERY_GENERATOR,
    RETRIEVAL_ENCODER,
    SHIFT_GRAD,
    TEXT_ENCODER,
)
from couturier.services.common.vectors import EmbeddingSpace, Hit, ProductVector, build_filter
from support.fake_loops import loop_output_dtypes, loop_signatures, run_loop

__all__ = [
    "FakeCall",
    "FakeDims",
    "FakeInferenceBackend",
    "FakeNets",
    "InMemoryImageStore",
    "InMemoryVectorStore",
    "write_tokenizer",
    "write_user_table",
]

_EPS = 1e-8  # as in couturier.export.objectives (unit-normalised Phi features of the diversity term)


# -- the fake networks -----------------------------------------------------------------------------


#: The fake gradient models' realism margin (the real ones measure theirs at export).
FAKE_REALISM_MARGIN = 1.0
#: The categories the fake models are conditioned on (one-hot order), as the simulated world's.
FAKE_CATEGORIES = ("tops", "outerwear", "trousers", "dresses", "shoes", "bags")


@dataclass(frozen=True)
class FakeDims:
    """Sizes of the fake models (small, so everything runs in microseconds)."""

    image_size: int = 8  # S: images are (3, S, S) float32 in [-1, 1]
    item_dim: int = 6  # K: DVBPR item / user vectors
    retrieval_dim: int = 5  # retrieval embeddings (L2-normalised)
    z_dim: int = 4  # Dz: generator latent
    categories: tuple[str, ...] = FAKE_CATEGORIES  # C = len: one-hot category, in the models' metadata
    text_dim: int = 16  # text embeddings (the real MiniLM has 384)
    vocab: int = 997  # token ids are taken modulo this
    perceptual_weight: float = 1.0  # inv_grad: MSE + weight * perceptual
    diversity_sigma: float = 0.5  # shift_grad: RBF width on unit-normalised Phi features

    @property
    def pixels(self) -> int:
        return 3 * self.image_size * self.image_size

    @property
    def n_categories(self) -> int:
        return len(self.categories)


def _rng(seed: int, part: str, version: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(f"{seed}:{part}:{version}".encode()))


class FakeNets:
    """The numpy networks of one model version (float64 inside; the backend returns float32).

    * generator ``G(z, c) = tanh(z A + c B)`` -> (N, 3, S, S);
    * item encoder ``Phi(x) = flat(x) W`` -> (N, K); discriminator ``D(x, c) = flat(x) d + c e`` -> (N,);
    * retrieval encoder ``normalise(flat(x) V)``; text encoder: masked mean of token embeddings, normalised;
    * query generator ``tanh(reference + reshape(text Q))``; perceptual distance
      ``mean_k (Phi(a) - Phi(b))^2``.

    Everything is a fixed function of ``(seed, version)``: another version has other weights.
    """

    def __init__(self, dims: FakeDims, version: str, seed: int = 0) -> None:
        self.dims, self.version = dims, version
        p, k, dz, c = dims.pixels, dims.item_dim, dims.z_dim, dims.n_categories
        self.A = _rng(seed, "generator.z", version).normal(0, 1 / np.sqrt(dz), (dz, p))
        self.B = _rng(seed, "generator.category", version).normal(0, 0.5, (c, p))
        self.W = _rng(seed, "item_encoder", version).normal(0, 1 / np.sqrt(p), (p, k))
        self.d = _rng(seed, "discriminator.image", version).normal(0, 1 / np.sqrt(p), p)
        self.e = _rng(seed, "discriminator.category", version).normal(0.5, 0.1, c)
        self.V = _rng(seed, "retrieval_encoder", version).normal(0, 1 / np.sqrt(p), (p, dims.retrieval_dim))
        self.E = _rng(seed, "text_encoder", version).normal(0, 1, (dims.vocab, dims.text_dim))
        self.Q = _rng(seed, "query_generator", version).normal(0, 0.1, (dims.text_dim, p))

    # forward networks (images NCHW) ---------------------------------------------------------------

    def _flat(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(images, np.float64).reshape(len(images), -1)

    def _image(self, flat: np.ndarray) -> np.ndarray:
        s = self.dims.image_size
        return flat.reshape(len(flat), 3, s, s)

    def generator(self, z: np.ndarray, category: np.ndarray) -> np.ndarray:
        return self._image(self._generate_flat(z, category))

    def _generate_flat(self, z: np.ndarray, category: np.ndarray) -> np.ndarray:
        return np.tanh(np.asarray(z, np.float64) @ self.A + np.asarray(category, np.float64) @ self.B)

    # argument names are the models' input names (the backend calls these with the inputs by name)

    def item_encoder(self, image: np.ndarray) -> np.ndarray:
        return self._flat(image) @ self.W

    def discriminator(self, image: np.ndarray, category: np.ndarray) -> np.ndarray:
        return self._flat(image) @ self.d + np.asarray(category, np.float64) @ self.e

    def retrieval_encoder(self, image: np.ndarray) -> np.ndarray:
        raw = self._flat(image) @ self.V
        return raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)

    def text_encoder(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        mask = np.asarray(attention_mask, np.float64)
        tokens = self.E[np.asarray(input_ids) % self.dims.vocab]  # (B, T, D)
        pooled = (tokens * mask[..., None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1.0)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)

    def query_generator(self, reference: np.ndarray, text_embedding: np.ndarray) -> np.ndarray:
        flat = np.tanh(self._flat(reference) + np.asarray(text_embedding, np.float64) @ self.Q)
        return self._image(flat)

    def perceptual(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return ((self.item_encoder(a) - self.item_encoder(b)) ** 2).mean(axis=1)

    # gradient models: (value, gradient, aux...) as the exported ONNX graphs ---------------------------

    def _pref_terms(
        self,
        z: np.ndarray,
        category: np.ndarray,
        theta: np.ndarray,
        realism_weight: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """``pref = theta_b . Phi(G(z_b)) - rw min(D(G(z_b)) - 1, 0)^2`` and d pref / dz, per row
        (``theta (B,K)``: one user vector per row)."""
        theta = np.asarray(theta, np.float64)
        rw = np.asarray(realism_weight, np.float64).reshape(-1)
        x = self._generate_flat(z, category)
        phi = x @ self.W
        realism = x @ self.d + np.asarray(category, np.float64) @ self.e
        short = np.minimum(realism - FAKE_REALISM_MARGIN, 0.0)  # the one-sided realism term of the real models
        value = (theta * phi).sum(axis=1) - rw * short**2
        grad_x = theta @ self.W.T - (2.0 * rw * short)[:, None] * self.d[None]
        return {
            "value": value,
            "grad_z": (grad_x * (1.0 - x * x)) @ self.A.T,
            "image": self._image(x),
            "realism": realism,
            "x": x,
            "phi": phi,
        }

    def pref_grad(
        self, z: np.ndarray, category: np.ndarray, theta: np.ndarray, realism_weight: np.ndarray
    ) -> dict[str, np.ndarray]:
        out = self._pref_terms(z, category, theta, realism_weight)
        return {name: out[name] for name in ("value", "grad_z", "phi", "image", "realism")}

    def inv_grad(self, z: np.ndarray, category: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
        """``mean (G(z) - target)^2 + perceptual_weight * perceptual(G(z), target)`` and d / dz."""
        lam, k = self.dims.perceptual_weight, self.dims.item_dim
        x = self._generate_flat(z, category)
        t = self._flat(target)
        gap = (x - t) @ self.W
        value = ((x - t) ** 2).mean(axis=1) + lam * (gap**2).mean(axis=1)
        grad_x = 2.0 * (x - t) / x.shape[1] + lam * (2.0 / k) * gap @ self.W.T
        return {"value": value, "grad_z": (grad_x * (1.0 - x * x)) @ self.A.T, "image": self._image(x)}

    def shift_grad(
        self,
        base_z: np.ndarray,
        shifts: np.ndarray,
        category: np.ndarray,
        theta: np.ndarray,
        weights: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """GIGS: ``mean_i pref(G(base + shift_i)) - diversity_weight * mean_{i!=j} exp(-|f_i - f_j|^2 / sigma)``
        with ``f`` the unit-normalised Phi features; gradient with respect to the shifts."""
        shifts = np.asarray(shifts, np.float64)
        weights = np.asarray(weights, np.float64)
        b, n, dz = shifts.shape
        z = (np.asarray(base_z, np.float64)[:, None, :] + shifts).reshape(b * n, dz)
        terms = self._pref_terms(
            z, np.repeat(category, n, axis=0), np.repeat(theta, n, axis=0), np.repeat(weights[:, 1], n)
        )
        phi, x = terms["phi"], terms["x"]
        norm = np.sqrt((phi**2).sum(axis=1, keepdims=True) + _EPS)
        feats = (phi / norm).reshape(b, n, -1)
        diff = feats[:, :, None, :] - feats[:, None, :, :]  # (b, n, n, K)
        mask = 1.0 - np.eye(n)
        pairs = max(n * (n - 1), 1)
        kernel = np.exp(-(diff**2).sum(axis=-1) / self.dims.diversity_sigma) * mask
        diversity = kernel.sum(axis=(1, 2)) / pairs
        pref = terms["value"].reshape(b, n)
        value = pref.mean(axis=1) - weights[:, 0] * diversity
        # d diversity / d f_i = (1 / pairs) sum_j k_ij (-4 / sigma) (f_i - f_j)  (pairs (i,j) and (j,i))
        grad_f = (kernel[..., None] * diff).sum(axis=2) * (-4.0 / (self.dims.diversity_sigma * pairs))
        grad_f = (-weights[:, 0])[:, None, None] * grad_f
        grad_f = grad_f.reshape(b * n, -1)
        grad_phi = grad_f / norm - phi * ((phi * grad_f).sum(axis=1, keepdims=True) / norm**3)
        grad_z = terms["grad_z"] / n + ((grad_phi @ self.W.T) * (1.0 - x * x)) @ self.A.T
        images = terms["image"].reshape(b, n, *terms["image"].shape[1:])
        return {
            "value": value,
            "grad_shifts": grad_z.reshape(b, n, dz),
            "images": images,
            "pref": pref,
            "diversity": diversity,
        }


# -- the fake backend ------------------------------------------------------------------------------

_F, _I = np.float32, np.int64


def _signatures(dims: FakeDims) -> dict[str, tuple[dict[str, tuple[Any, tuple[int, ...]]], dict[str, tuple[int, ...]]]]:
    """model -> ({input: (dtype, shape)}, {output: shape}); -1 = dynamic axis (as ``input_shapes`` reports)."""
    s, k, dz, c = dims.image_size, dims.item_dim, dims.z_dim, dims.n_categories
    image = (-1, 3, s, s)
    return {
        ITEM_ENCODER: ({"image": (_F, image)}, {"embedding": (-1, k)}),
        GENERATOR: ({"z": (_F, (-1, dz)), "category": (_F, (-1, c))}, {"image": image}),
        DISCRIMINATOR: ({"image": (_F, image), "category": (_F, (-1, c))}, {"realism": (-1,)}),
        RETRIEVAL_ENCODER: ({"image": (_F, image)}, {"embedding": (-1, dims.retrieval_dim)}),
        TEXT_ENCODER: (
            {"input_ids": (_I, (-1, -1)), "attention_mask": (_I, (-1, -1))},
            {"sentence_embedding": (-1, dims.text_dim)},
        ),
        QUERY_GENERATOR: ({"reference": (_F, image), "text_embedding": (_F, (-1, dims.text_dim))}, {"image": image}),
        PREF_GRAD: (
            {
                "z": (_F, (-1, dz)),
                "category": (_F, (-1, c)),
                "theta": (_F, (-1, k)),
                "realism_weight": (_F, (-1, 1)),
            },
            {"value": (-1,), "grad_z": (-1, dz), "phi": (-1, k), "image": image, "realism": (-1,)},
        ),
        INV_GRAD: (
            {"z": (_F, (-1, dz)), "category": (_F, (-1, c)), "target": (_F, image)},
            {"value": (-1,), "grad_z": (-1, dz), "image": image},
        ),
        SHIFT_GRAD: (
            {
                "base_z": (_F, (-1, dz)),
                "shifts": (_F, (-1, -1, dz)),
                "category": (_F, (-1, c)),
                "theta": (_F, (-1, k)),
                "weights": (_F, (-1, 2)),
            },
            {
                "value": (-1,),
                "grad_shifts": (-1, -1, dz),
                "images": (-1, -1, 3, s, s),
                "pref": (-1, -1),
                "diversity": (-1,),
            },
        ),
    }


@dataclass(frozen=True)
class FakeCall:
    """One ``infer`` the backend answered."""

    model: str
    version: str  # the version that ran (never "")
    batch: int  # dim 0 of the first input


class FakeInferenceBackend:
    """Every couturier model as numpy, behind the InferenceBackend protocol.

    ``versions`` lists the versions served per model (default: every model at ``"1"``); the newest
    (numerically) is served for version ``""``. :meth:`publish` / :meth:`unload` change them, ``unavailable``
    makes every call fail like a Triton that went away. ``calls`` counts ``infer`` per model, ``history``
    keeps each call. Inputs are checked like onnxruntime does (names, element types, ranks, fixed dims), and share dim 0 as
    Triton's batch axis (every model is served batched).
    ``metadata`` is each model's ``couturier.*`` metadata (every version alike): the models that take a
    category one-hot carry ``dims.categories``; tests edit it to serve models exported without it.
    """

    def __init__(
        self, dims: FakeDims | None = None, *, seed: int = 0, versions: Mapping[str, Sequence[str]] | None = None
    ) -> None:
        self.dims = dims or FakeDims()
        self.seed = seed
        self.name = "fake"
        self.versions: dict[str, list[str]] = {m: ["1"] for m in ALL_MODELS}
        for model, served in (versions or {}).items():
            self.versions[model] = [str(v) for v in served]
        self.unavailable = False
        self.closed = False
        self.calls: Counter[str] = Counter()
        self.history: list[FakeCall] = []
        self._nets: dict[str, FakeNets] = {}
        self._signatures = _signatures(self.dims)
        self._signatures.update(loop_signatures(self._signatures))
        self._output_dtypes = loop_output_dtypes()
        categories = {CATEGORIES_KEY: encode_categories(self.dims.categories)}
        self.metadata: dict[str, dict[str, str]] = {
            m: dict(categories) if m in CATEGORY_MODELS else {} for m in ALL_MODELS
        }

    def nets(self, version: str = "1") -> FakeNets:
        """The networks of ``version`` (what the models of that version compute), for expected values."""
        if version not in self._nets:
            self._nets[version] = FakeNets(self.dims, version, self.seed)
        return self._nets[version]

    def publish(self, model: str, version: str) -> None:
        self._known(model)
        if version not in self.versions[model]:
            self.versions[model].append(version)

    def unload(self, model: str, version: str | None = None) -> None:
        """Stop serving ``version`` of ``model`` (every version when None)."""
        self._known(model)
        self.versions[model] = [] if version is None else [v for v in self.versions[model] if v != version]

    def _known(self, model: str) -> None:
        if model not in self._signatures:
            raise ModelNotReady(f"model {model!r} is not served by the fake backend")

    def _check_reachable(self) -> None:
        if self.closed:
            raise BackendUnavailable("the fake inference backend is closed")
        if self.unavailable:
            raise BackendUnavailable("the fake inference backend is unavailable")

    def _served(self, model: str) -> list[str]:
        self._known(model)
        return sorted(self.versions[model], key=lambda v: (0, int(v), "") if v.isdigit() else (1, 0, v))

    def _version(self, model: str, version: str) -> str:
        served = self._served(model)
        if version:
            if version not in served:
                raise ModelNotReady(f"model {model!r} has no version {version} on the fake backend")
            return version
        if not served:
            raise ModelNotReady(f"model {model!r} has no ready version on the fake backend")
        return served[-1]

    # -- the protocol --------------------------------------------------------------------------------

    async def infer(
        self, model: str, inputs: Mapping[str, np.ndarray], outputs: list[str] | None = None, version: str = ""
    ) -> dict[str, np.ndarray]:
        await asyncio.sleep(0)  # a real backend yields to the event loop
        self._check_reachable()
        ran = self._version(model, version)
        expected, produced = self._signatures[model]
        if set(inputs) != set(expected):
            raise BadInferenceInput(f"model {model!r} takes inputs {sorted(expected)}, got {sorted(inputs)}")
        for key, (dtype, shape) in expected.items():
            array = np.asarray(inputs[key])
            if array.dtype != dtype:
                raise BadInferenceInput(f"input {key!r} of {model!r} must be {np.dtype(dtype)}, got {array.dtype}")
            fits = array.ndim == len(shape) and all(w in (-1, g) for w, g in zip(shape, array.shape, strict=True))
            if not fits:
                raise BadInferenceInput(f"input {key!r} of {model!r} has shape {array.shape}, expected {shape}")
        rows = {key: np.asarray(value).shape[0] for key, value in inputs.items()}
        if len(set(rows.values())) > 1:  # every model is served batched: dim 0 is the batch axis of every input
            raise BadInferenceInput(f"the inputs of {model!r} disagree on the batch size (dim 0): {rows}")
        names = outputs or list(produced)
        unknown = set(names) - set(produced)
        if unknown:
            raise BadInferenceInput(f"model {model!r} has no outputs {sorted(unknown)}")
        arrays = {key: np.asarray(value) for key, value in inputs.items()}
        if model in LOOP_SPECS:  # K optimiser steps around the fake gradient model (support.fake_loops)
            spec = LOOP_SPECS[model]
            result = run_loop(spec, getattr(self.nets(ran), spec.gradient_model), arrays)
        else:
            result = getattr(self.nets(ran), model)(**arrays)
        if not isinstance(result, dict):
            result = {next(iter(produced)): result}
        self.calls[model] += 1
        self.history.append(FakeCall(model, ran, int(np.asarray(next(iter(inputs.values()))).shape[0])))
        return {name: np.asarray(result[name], self._output_dtypes.get((model, name), np.float32)) for name in names}

    async def is_ready(self, model: str) -> bool:
        try:
            self._check_reachable()
            self._version(model, "")
        except (BackendUnavailable, ModelNotReady):
            return False
        return True

    async def resolve_version(self, model: str, pinned: str = "", *, fresh: bool = False) -> str:
        """No version cache here: every answer is fresh (``publish`` / ``unload`` show at once)."""
        self._check_reachable()
        return self._version(model, pinned)

    async def input_shapes(self, model: str, version: str = "") -> dict[str, tuple[int, ...]]:
        self._check_reachable()
        self._version(model, version)
        return {name: shape for name, (_, shape) in self._signatures[model][0].items()}

    async def output_shapes(self, model: str, version: str = "") -> dict[str, tuple[int, ...]]:
        """Output name -> ONNX shape (-1 for a dynamic axis)."""
        self._check_reachable()
        self._version(model, version)
        return dict(self._signatures[model][1])

    async def model_metadata(self, model: str, version: str = "") -> dict[str, str]:
        self._check_reachable()
        self._version(model, version)
        return dict(self.metadata[model])

    async def close(self) -> None:
        self.closed = True


# -- the in-memory vector store --------------------------------------------------------------------


@dataclass
class _Collection:
    space: EmbeddingSpace
    rows: dict[str, ProductVector] = field(default_factory=dict)


class InMemoryVectorStore:
    """The VectorStore methods the services use, over dicts: exact search with the space's metric.

    One collection per embedding space (model, version) as in Milvus; a space whose dimension or
    metric differs from the stored collection is refused, searching or reading a space that was never
    indexed is FAILED_PRECONDITION, and filter values are validated by the real ``build_filter``.
    ``calls`` counts the calls per method; ``unavailable`` makes every call fail like an unreachable Milvus.
    """

    def __init__(self, name: str = "memory") -> None:
        self.uri = f"memory://{name}"
        self.lite = False
        self.unavailable = False
        self.closed = False
        self.calls: Counter[str] = Counter()
        self._collections: dict[str, _Collection] = {}

    def __repr__(self) -> str:
        return f"InMemoryVectorStore({self.uri})"

    def describe(self) -> str:
        return f"in-memory vector store {self.uri}"

    def _enter(self, method: str) -> None:
        self.calls[method] += 1
        if self.closed:
            raise DependencyUnavailable(f"the vector store ({self.describe()}) is closed")
        if self.unavailable:
            raise DependencyUnavailable(f"cannot reach the {self.describe()}")

    def _not_indexed(self, model: str, version: str) -> PreconditionFailed:
        return PreconditionFailed(
            f"no vectors are indexed for {model} v{version} (collection {model}_v{version} does not exist); "
            "run `couturier index` to index the catalogue with this model version"
        )

    def _collection(self, space: EmbeddingSpace, *, create: bool) -> _Collection:
        found = self._collections.get(space.collection)
        if found is None:
            if not create:
                raise self._not_indexed(space.model, space.version)
            found = self._collections[space.collection] = _Collection(space)
            return found
        if found.space.dim != space.dim:
            raise PreconditionFailed(
                f"collection {space.collection} holds {found.space.dim}-d vectors but {space.describe()} "
                f"produces {space.dim}-d vectors"
            )
        if found.space.metric != space.metric:
            raise PreconditionFailed(
                f"collection {space.collection} is indexed for metric {found.space.metric} but "
                f"{space.describe()} is searched with {space.metric}"
            )
        return found

    @staticmethod
    def _ids(ids: Sequence[str]) -> list[str]:
        if isinstance(ids, str):
            raise InvalidInput("product ids must be a list of strings, got one string")
        for value in ids:
            if not isinstance(value, str) or not value:
                raise InvalidInput(f"product id {value!r} must be a non-empty string")
        return list(dict.fromkeys(ids))

    @staticmethod
    def _vector(value: Any, dim: int, what: str) -> np.ndarray:
        vector = np.asarray(value, dtype=np.float32)
        if vector.shape != (dim,):
            raise InvalidInput(f"{what} has shape {vector.shape}; expected ({dim},)")
        if not np.isfinite(vector).all():
            raise InvalidInput(f"{what} contains NaN or infinite values; only finite numbers can be indexed")
        return vector

    # -- collections ---------------------------------------------------------------------------------

    async def ensure(self, space: EmbeddingSpace) -> None:
        self._enter("ensure")
        self._collection(space, create=True)

    async def versions(self, model: str) -> list[str]:
        self._enter("versions")
        found = [c.space.version for c in self._collections.values() if c.space.model == model]
        return sorted(found, key=lambda v: (0, int(v), "") if v.isdigit() else (1, 0, v))

    async def dim(self, model: str, version: str) -> int:
        self._enter("dim")
        for collection in self._collections.values():
            if (collection.space.model, collection.space.version) == (model, version):
                return collection.space.dim
        raise self._not_indexed(model, version)

    async def drop(self, space: EmbeddingSpace) -> None:
        self._enter("drop")
        self._collections.pop(space.collection, None)

    # -- writes --------------------------------------------------------------------------------------

    async def upsert(self, space: EmbeddingSpace, items: Sequence[ProductVector]) -> int:
        self._enter("upsert")
        rows: dict[str, ProductVector] = {}
        for index, item in enumerate(items):
            if not isinstance(item, ProductVector):
                raise InvalidInput(f"item {index} is a {type(item).__name__}, not a ProductVector")
            if not item.product_id:
                raise InvalidInput(f"item {index} product id is empty")
            if item.product_id in rows:
                raise InvalidInput(f"product {item.product_id!r} appears more than once in one upsert")
            vector = self._vector(item.vector, space.dim, f"vector of product {item.product_id!r}")
            rows[item.product_id] = ProductVector(item.product_id, vector, item.category, item.colour)
        if not rows:
            return 0
        self._collection(space, create=True).rows.update(rows)
        return len(rows)

    async def delete(self, space: EmbeddingSpace, ids: Sequence[str]) -> tuple[int, list[str]]:
        self._enter("delete")
        wanted = self._ids(ids)
        if not wanted:
            return 0, []
        rows = self._collection(space, create=False).rows
        deleted = [i for i in wanted if rows.pop(i, None) is not None]
        return len(deleted), [i for i in wanted if i not in deleted]

    # -- reads ---------------------------------------------------------------------------------------

    async def get(self, space: EmbeddingSpace, ids: Sequence[str]) -> dict[str, ProductVector]:
        self._enter("get")
        wanted = self._ids(ids)
        if not wanted:
            return {}
        rows = self._collection(space, create=False).rows
        return {i: rows[i] for i in wanted if i in rows}

    async def search(
        self,
        space: EmbeddingSpace,
        queries: np.ndarray,
        k: int,
        *,
        categories: Sequence[str] = (),
        colours: Sequence[str] = (),
        exclude_ids: Sequence[str] = (),
    ) -> list[list[Hit]]:
        """The ``k`` best products per query row (IP: inner product, COSINE: cosine, L2: minus the squared
        distance), best first; ties go to the smaller product id."""
        self._enter("search")
        matrix = np.asarray(queries, dtype=np.float32)
        if matrix.ndim == 1:
            matrix = matrix[None, :]
        if matrix.ndim != 2 or matrix.shape[1] != space.dim:
            raise InvalidInput(f"query vectors have shape {matrix.shape}; expected (Q, {space.dim})")
        if not np.isfinite(matrix).all():
            raise InvalidInput("query vectors contain NaN or infinite values")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InvalidInput(f"k must be a positive integer, got {k!r}")
        build_filter(categories, colours, exclude_ids)  # the real store's validation of the filter values
        excluded = set(exclude_ids)
        rows = [
            row
            for row in self._collection(space, create=False).rows.values()
            if (not categories or row.category in categories)
            and (not colours or row.colour in colours)
            and row.product_id not in excluded
        ]
        if not rows:
            return [[] for _ in matrix]
        stored = np.stack([row.vector for row in rows]).astype(np.float64)
        query = matrix.astype(np.float64)
        if space.metric == "IP":
            scores = query @ stored.T
        elif space.metric == "COSINE":
            scores = (query / np.linalg.norm(query, axis=1, keepdims=True)) @ (
                stored / np.linalg.norm(stored, axis=1, keepdims=True)
            ).T
        else:
            scores = -((query[:, None, :] - stored[None]) ** 2).sum(axis=2)
        hits = []
        for per_query in scores:
            order = sorted(range(len(rows)), key=lambda i: (-per_query[i], rows[i].product_id))[: int(k)]
            hits.append([Hit(rows[i].product_id, float(per_query[i]), rows[i].category, rows[i].colour) for i in order])
        return hits

    async def count(self, space: EmbeddingSpace) -> int:
        self._enter("count")
        if space.collection not in self._collections:
            return 0
        return len(self._collection(space, create=False).rows)

    async def per_category(self, space: EmbeddingSpace) -> dict[str, int]:
        self._enter("per_category")
        if space.collection not in self._collections:
            return {}
        counts = Counter(row.category for row in self._collection(space, create=False).rows.values())
        return dict(sorted(counts.items()))

    async def list_ids(self, space: EmbeddingSpace, *, after: str = "", limit: int = 4096) -> list[str]:
        self._enter("list_ids")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidInput(f"limit must be a positive integer, got {limit!r}")
        if space.collection not in self._collections:
            return []
        return sorted(i for i in self._collection(space, create=False).rows if i > after)[:limit]

    async def ping(self) -> str:
        self._enter("ping")
        n = len(self._collections)
        return f"{self.describe()}: {n} collection{'s' if n != 1 else ''}"

    async def close(self) -> None:
        self.closed = True


# -- the in-memory product image store -------------------------------------------------------------


class InMemoryImageStore:
    """:class:`couturier.services.common.product_images.ProductImageStore` over a dict (same checks on ids
    and PNG bytes as the file store); ``unavailable`` makes every call fail like an unusable volume."""

    def __init__(self) -> None:
        self.images: dict[str, bytes] = {}
        self.unavailable = False
        self.closed = False
        self.calls: Counter[str] = Counter()

    def _enter(self, method: str) -> None:
        self.calls[method] += 1
        if self.closed or self.unavailable:
            raise DependencyUnavailable(f"the {self.describe()} is {'closed' if self.closed else 'unavailable'}")

    def describe(self) -> str:
        return "in-memory product image store"

    async def put_many(self, images: Mapping[str, bytes]) -> int:
        from couturier.services.common.product_images import checked_images

        self._enter("put_many")
        checked = checked_images(images)
        self.images.update(checked)
        return len(checked)

    async def get_many(self, product_ids: Sequence[str]) -> dict[str, bytes]:
        from couturier.services.common.product_images import checked_ids

        self._enter("get_many")
        return {i: self.images[i] for i in checked_ids(product_ids) if i in self.images}

    async def delete_many(self, product_ids: Sequence[str]) -> int:
        from couturier.services.common.product_images import checked_ids

        self._enter("delete_many")
        return sum(self.images.pop(i, None) is not None for i in checked_ids(product_ids))

    async def ping(self) -> str:
        self._enter("ping")
        return f"{len(self.images)} images in the {self.describe()}"

    async def close(self) -> None:
        self.closed = True


# -- files the services read -----------------------------------------------------------------------


def write_user_table(
    folder: Path,
    version: str,
    user_ids: Sequence[str],
    theta: np.ndarray,
    *,
    purchased: Mapping[str, Sequence[str]] | None = None,
    item_mean: np.ndarray | None = None,
) -> Path:
    """``<folder>/item_encoder_v<version>.npz`` as the export subcommand publishes it (scoring's users)."""
    theta = np.asarray(theta, np.float32)
    bought = [list((purchased or {}).get(user, ())) for user in user_ids]
    indptr = np.concatenate([[0], np.cumsum([len(b) for b in bought])]).astype(np.int64)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ITEM_ENCODER}_v{version}.npz"
    np.savez(
        path,
        user_ids=np.asarray(list(user_ids), dtype=str),
        theta=theta,
        purchased_indptr=indptr,
        purchased_product_ids=np.asarray([p for b in bought for p in b], dtype=str),
        item_mean=np.zeros(theta.shape[1], np.float32) if item_mean is None else np.asarray(item_mean, np.float32),
    )
    return path


def write_tokenizer(path: Path, words: Sequence[str] = ()) -> Path:
    """A tiny word-level ``tokenizer.json`` (``[PAD]`` = 0, ``[UNK]`` = 1, then ``words``) for the text encoder."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {"[PAD]": 0, "[UNK]": 1, **{word: index + 2 for index, word in enumerate(dict.fromkeys(words))}}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    return path
