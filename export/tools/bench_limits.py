"""The limit of every RPC ``couturier bench`` loads: the same work done in-process, measured in the same run.

For each RPC the limit does what the services do for one call, without gRPC, the services' event loops or
Triton: the request image is decoded and preprocessed with the services' own helpers
(:mod:`couturier.services.common.images`); every model call is an onnxruntime ``InferenceSession`` call of the
same ONNX file (the versions the stack serves) at the same batch size, on the calling thread
(:class:`InlineOnnxRuntime`); vector search is an exact numpy search over the same vectors (the indexed
products' item vectors and retrieval embeddings, computed here with the same models from the same images);
the latent RPCs run the reference numpy optimiser (:mod:`couturier.services.latent.optimize`) with the same
steps, restarts and batch sizes, and encode the PNGs the answer carries. Orchestrator flows are the sum of
their parts, one after the other.

Two figures per RPC (:func:`measure_limits`):

* ``p50_ms``: median over repeated calls by one caller; the calls alternate between sessions with
  onnxruntime's default intra-op threads (every core) and sessions with one thread, and the lower of the two
  medians is the limit (on a small, busy machine spinning intra-op workers can lose to one thread);
* ``throughput_per_s``: as many worker threads as the machine has cores run the work back to back for a few
  seconds (onnxruntime releases the GIL); each session then has ``intra_op_num_threads=1`` so the workers do
  not oversubscribe the cores (with N workers of N threads each, the cores would be shared N*N ways).

The services' transport is reported beside the limit, never added to it: :func:`rpc_floor` is the p50 of an
empty gRPC round trip (``grpc.health.v1.Health/Check``) to the same service process.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from couturier.export.tools.bench import (
    COMPETITORS_PER_VARIANT,
    DESIGNS,
    INVERSION_STEPS,
    PRODUCTS_PER_DESIGN,
    REPORT_EVERY,
    SCORE_ITEMS,
    SEARCH_K,
    SHIFTS,
    BenchData,
    machine_cores,
    percentile,
)
from couturier.services.common.images import chw_png, decode_image, to_model_input
from couturier.services.common.inference import OnnxRuntimeBackend
from couturier.services.common.models import (
    INV_GRAD,
    ITEM_ENCODER,
    PREF_GRAD,
    QUERY_GENERATOR,
    RETRIEVAL_ENCODER,
    SHIFT_GRAD,
    TEXT_ENCODER,
)

#: One call of the in-process work for request ``i`` (the same ``i`` -> request mapping as the RPC cases).
LimitWork = Callable[[int], Awaitable[Any]]

#: Models whose absence only disables the RPCs that need them (the multimodal pair).
_OPTIONAL = (TEXT_ENCODER, QUERY_GENERATOR)


class InlineOnnxRuntime(OnnxRuntimeBackend):
    """:class:`OnnxRuntimeBackend` whose ``infer`` runs on the calling thread: no executor hop, so a model call
    costs the session run and the input checks only. ``calls`` counts (model, first input shape) per call."""

    def __init__(self, repo_dir: Path, *, intra_op_threads: int = 0) -> None:
        super().__init__(repo_dir, intra_op_threads=intra_op_threads, max_workers=1)
        self.calls: Counter[tuple[str, tuple[int, ...]]] = Counter()
        self._count_lock = threading.Lock()

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        outputs: list[str] | None = None,
        version: str = "",
    ) -> dict[str, np.ndarray]:
        first = next(iter(inputs.values()), None)
        with self._count_lock:
            self.calls[(model, tuple(np.shape(first)))] += 1
        return self._run(model, inputs, outputs, version)


def top_k(vectors: np.ndarray, query: np.ndarray, k: int, keep: np.ndarray | None = None) -> list[tuple[int, float]]:
    """Exact maximum inner product search: ``(row, score)`` of the ``k`` best rows of ``vectors (N,D)`` for
    ``query (D,)``, best first, among the rows where ``keep (N,) bool`` is true (all when None)."""
    scores = vectors @ query
    if keep is not None:
        scores = np.where(keep, scores, -np.inf)
        k = min(k, int(keep.sum()))
    k = min(k, len(scores))
    if k <= 0:
        return []
    rows = np.argpartition(-scores, k - 1)[:k]
    rows = rows[np.argsort(-scores[rows], kind="stable")]
    return [(int(r), float(scores[r])) for r in rows]


@dataclass
class LimitSetup:
    """What the limits search, score and optimise over, built once per run (:meth:`build`)."""

    versions: dict[str, str]  # model -> the version the stack serves
    product_ids: list[str]  # the indexed products, in row order
    rows: dict[str, int]
    categories: np.ndarray  # (N,) category name of each row
    item_vectors: np.ndarray  # (N, K) item encoder vectors (what scoring stores)
    retrieval_vectors: np.ndarray  # (N, D) retrieval embeddings (what retrieval stores)
    thumbnails: dict[str, bytes]  # product id -> the PNG retrieval keeps (GetProducts answers it)
    users: Any  # couturier.services.scoring.users.UserTable of the served item encoder
    category_names: tuple[str, ...]  # the gradient models' one-hot order
    sizes: dict[str, int]  # model -> image side of its image input
    z_dim: int
    tokenizer: Any = None  # couturier.services.retrieval.text_encoder.Tokenizer; None without text encoder
    build_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @classmethod
    async def build(
        cls,
        backend: InlineOnnxRuntime,
        data: BenchData,
        user_vectors_dir: Path,
        versions: Mapping[str, str],
    ) -> LimitSetup:
        """Item vectors and retrieval embeddings of the indexed products, in-process with the served models
        (the services compute the same from the same images at indexing), plus the retrieval thumbnails."""
        from couturier.services.common.catalogue_index import thumbnail
        from couturier.services.common.encoders import ENCODE_BATCH
        from couturier.services.common.model_metadata import ModelCategories
        from couturier.services.retrieval.text_encoder import Tokenizer
        from couturier.services.scoring.users import UserDirectory

        t0 = time.perf_counter()
        versions = dict(versions)
        sizes: dict[str, int] = {}
        for model, name in (
            (ITEM_ENCODER, "image"),
            (RETRIEVAL_ENCODER, "image"),
            (INV_GRAD, "target"),
            (QUERY_GENERATOR, "reference"),
        ):
            if model in versions:
                sizes[model] = int((await backend.input_shapes(model, versions[model]))[name][-1])

        async def embed(model: str) -> np.ndarray:
            parts = []
            for start in range(0, len(data.indexed_images), ENCODE_BATCH):
                batch = to_model_input(list(data.indexed_images[start : start + ENCODE_BATCH]), sizes[model])
                out = await backend.infer(model, {"image": batch}, ["embedding"], version=versions[model])
                parts.append(np.asarray(out["embedding"], np.float32))
            return np.concatenate(parts)

        ids = list(data.indexed_ids)
        notes = []
        tokenizer = None
        if TEXT_ENCODER in versions and data.tokenizer_json.is_file():
            tokenizer = Tokenizer(data.tokenizer_json)
        elif TEXT_ENCODER in versions:
            notes.append(f"no tokenizer at {data.tokenizer_json}: SearchByImageAndText has no limit")
        gradient: dict[str, str] = {m: versions[m] for m in (PREF_GRAD, INV_GRAD, SHIFT_GRAD) if m in versions}
        shapes = await backend.input_shapes(PREF_GRAD, versions[PREF_GRAD])
        setup = cls(
            versions=versions,
            product_ids=ids,
            rows={pid: row for row, pid in enumerate(ids)},
            categories=np.asarray(data.indexed_categories),
            item_vectors=await embed(ITEM_ENCODER),
            retrieval_vectors=await embed(RETRIEVAL_ENCODER),
            thumbnails={
                pid: thumbnail(image, sizes[RETRIEVAL_ENCODER])
                for pid, image in zip(ids, data.indexed_images, strict=True)
            },
            users=UserDirectory(user_vectors_dir).table(versions[ITEM_ENCODER]),
            category_names=await ModelCategories(backend).common(gradient),
            sizes=sizes,
            z_dim=int(shapes["z"][-1]),
            tokenizer=tokenizer,
            notes=notes,
        )
        setup.build_s = time.perf_counter() - t0
        return setup


def served_model_versions(repo_dir: Path) -> dict[str, str]:
    """model -> the newest version its ``config.pbtxt`` serves (what Triton and the services resolve)."""
    from couturier.services.common.model_repository import served_versions
    from couturier.services.common.models import ALL_MODELS

    out = {}
    for model in ALL_MODELS:
        if (repo_dir / model).is_dir():
            versions = served_versions(repo_dir, model)
            if versions:
                out[model] = str(versions[-1])
    return out


# -- the in-process work of each RPC --------------------------------------------------------------------------


class LimitWorks:
    """The in-process work of each RPC the bench loads, over one backend (``works()``: name -> work)."""

    def __init__(self, setup: LimitSetup, data: BenchData, backend: InlineOnnxRuntime) -> None:
        self.s, self.data, self.backend = setup, data, backend

    # parts -------------------------------------------------------------------------------------------------

    def _theta(self, i: int) -> np.ndarray:
        """DescribeUsers / resolve_users: the trained vector of request ``i``'s user, (1, K)."""
        theta = self.s.users.vector(self.data.user_id(i))
        if theta is None:
            raise LookupError(f"user {self.data.user_id(i)!r} has no trained vector")
        return np.asarray(theta, np.float32)[None]

    def _score(self, theta: np.ndarray, product_ids: Sequence[str]) -> np.ndarray:
        """ScoreItems of catalogue ids: stored item vectors (looked up by id) against the users."""
        vectors = self.s.item_vectors[[self.s.rows[p] for p in product_ids]]
        scores: np.ndarray = (vectors @ theta.T).mean(axis=1)
        return scores

    def _keep(self, category: str = "", exclude: Sequence[str] = ()) -> np.ndarray | None:
        if not category and not exclude:
            return None
        keep = self.s.categories == category if category else np.ones(len(self.s.product_ids), bool)
        rows = [self.s.rows[p] for p in exclude if p in self.s.rows]
        keep[rows] = False
        return keep

    async def _search_pixels(
        self, pixels: np.ndarray, k: int, category: str = "", exclude: Sequence[str] = ()
    ) -> list[tuple[int, float]]:
        """SearchByImage after decoding: retrieval encoder at batch 1, exact search over the embeddings."""
        batch = to_model_input([pixels], self.s.sizes[RETRIEVAL_ENCODER])
        out = await self.backend.infer(
            RETRIEVAL_ENCODER, {"image": batch}, ["embedding"], version=self.s.versions[RETRIEVAL_ENCODER]
        )
        return top_k(self.s.retrieval_vectors, out["embedding"][0], k, self._keep(category, exclude))

    async def _search_png(
        self, png: bytes, k: int, category: str = "", exclude: Sequence[str] = ()
    ) -> list[tuple[int, float]]:
        return await self._search_pixels(decode_image(png), k, category, exclude)

    async def _text_search(self, i: int) -> list[tuple[int, float]]:
        """SearchByImageAndText: text encoder, query generator, the synthetic query's PNG, then its search."""
        if self.s.tokenizer is None:
            raise LookupError("no text encoder / tokenizer in the model repository")
        image = decode_image(self.data.query_png(i))
        text = await self.backend.infer(
            TEXT_ENCODER,
            self.s.tokenizer([self.data.text(i)]),
            ["sentence_embedding"],
            version=self.s.versions[TEXT_ENCODER],
        )
        out = await self.backend.infer(
            QUERY_GENERATOR,
            {
                "reference": to_model_input([image], self.s.sizes[QUERY_GENERATOR]),
                "text_embedding": np.asarray(text["sentence_embedding"], np.float32),
            },
            ["image"],
            version=self.s.versions[QUERY_GENERATOR],
        )
        synthetic = np.clip(out["image"][0], -1.0, 1.0)
        chw_png(synthetic)  # the answer carries the synthetic query
        query = np.asarray(((synthetic.transpose(1, 2, 0) + 1.0) * 127.5).round(), np.uint8)
        return await self._search_pixels(query, SEARCH_K)

    def _one_hot(self, category: str, batch: int) -> np.ndarray:
        from couturier.services.latent import optimize

        return optimize.one_hot(self.s.category_names.index(category), len(self.s.category_names), batch)

    async def _design(self, i: int) -> list[bytes]:
        """orchestrator.Design: DescribeUsers (the user's vector) + latent.Design (start selection from the
        default candidates, then n designs of the default steps)."""
        from couturier.services.latent import optimize

        theta = self._theta(i)
        category = self._one_hot(self.data.design_category(i), DESIGNS)
        candidates = optimize.sample_prior(
            DESIGNS * optimize.DEFAULT_START_CANDIDATES, self.s.z_dim, self.data.design_seed(i)
        )
        z0 = await optimize.select_starts(
            self.backend,
            candidates=candidates,
            category=category[:1],
            theta=theta,
            n=DESIGNS,
            realism_weight=optimize.DEFAULT_REALISM_WEIGHT,
            versions=self.s.versions,
        )
        result = await optimize.maximise_preference(
            self.backend,
            z0=z0,
            category=category,
            theta=theta,
            steps=optimize.DEFAULT_STEPS,
            learning_rate=optimize.DEFAULT_LEARNING_RATE,
            realism_weight=optimize.DEFAULT_REALISM_WEIGHT,
            versions=self.s.versions,
        )
        return [chw_png(image) for image in result.image]

    async def _item(self, i: int) -> tuple[np.ndarray, np.ndarray, str]:
        """DescribeUsers + GetProducts (the stored thumbnail) + the latent service's decode of it."""
        pid = self.data.product_id(i)
        pixels = decode_image(self.s.thumbnails[pid])
        return self._theta(i), pixels, str(self.s.categories[self.s.rows[pid]])

    async def _invert(self, pixels: np.ndarray, category: str, on_step: Any = None) -> Any:  # optimize.InversionResult
        from couturier.services.latent import optimize

        return await optimize.invert(
            self.backend,
            target=to_model_input([pixels], self.s.sizes[INV_GRAD]),
            category=self._one_hot(category, 1),
            steps=INVERSION_STEPS,
            learning_rate=optimize.DEFAULT_INVERSION_LEARNING_RATE,
            restarts=optimize.DEFAULT_RESTARTS,
            seed=0,
            versions=self.s.versions,
            on_step=on_step,
        )

    async def _shifts(self, i: int) -> tuple[list[bytes], str]:
        """orchestrator.SellerShifts: resolution + inversion + GIGS shifts + the answer's PNGs."""
        from couturier.services.latent import optimize

        theta, pixels, category = await self._item(i)
        inverted = await self._invert(pixels, category)
        radius = optimize.DEFAULT_SHIFT_RADIUS
        result = await optimize.seller_shifts(
            self.backend,
            base_z=inverted.z[0],
            category=self._one_hot(category, 1)[0],
            theta=theta,
            user_weight=np.full(len(theta), 1.0 / len(theta), np.float32),
            n=SHIFTS,
            radius=radius,
            diversity_weight=optimize.DEFAULT_DIVERSITY_WEIGHT,
            realism_weight=optimize.DEFAULT_REALISM_WEIGHT,
            steps=optimize.DEFAULT_SHIFT_STEPS,
            learning_rate=optimize.default_shift_learning_rate(radius),
            seed=0,
            versions=self.s.versions,
        )
        return [chw_png(result.base_image), *(chw_png(image) for image in result.image)], category

    async def _alter(self, i: int) -> int:
        """orchestrator.Alter: resolution + inversion + preference steps, a PNG every ``REPORT_EVERY`` steps."""
        from couturier.services.latent import optimize

        theta, pixels, category = await self._item(i)
        messages = 0

        def reporter(last: int, best: bool) -> Any:
            async def on_step(t: int, z: np.ndarray, value: np.ndarray, images: np.ndarray) -> None:
                nonlocal messages
                if t % REPORT_EVERY == 0 or t == last:  # inversion: the best restart's image
                    chw_png(images[int(np.argmin(value)) if best else 0])
                    messages += 1

            return on_step

        inverted = await self._invert(pixels, category, reporter(INVERSION_STEPS, best=True))
        result = await optimize.maximise_preference(
            self.backend,
            z0=inverted.z,
            category=self._one_hot(category, 1),
            theta=theta,
            steps=optimize.DEFAULT_STEPS,
            learning_rate=optimize.DEFAULT_LEARNING_RATE,
            realism_weight=optimize.DEFAULT_REALISM_WEIGHT,
            versions=self.s.versions,
            on_step=reporter(optimize.DEFAULT_STEPS, best=False),
        )
        chw_png(result.image[0])  # DONE
        return messages + 1

    # the RPCs ------------------------------------------------------------------------------------------------

    def works(self) -> dict[str, LimitWork]:
        """RPC name (as in :func:`couturier.export.tools.bench.rpc_cases`) -> its in-process work."""
        d, s = self.data, self.s

        async def score_items(i: int) -> Any:
            return self._score(self._theta(i), [d.product_id(SCORE_ITEMS * i + j) for j in range(SCORE_ITEMS)])

        async def recommend(i: int) -> Any:
            theta = self._theta(i)
            excluded = list(dict.fromkeys(s.users.purchased(d.user_id(i))))
            return top_k(s.item_vectors, theta[0], SEARCH_K, self._keep(exclude=excluded))

        async def search(i: int) -> Any:
            return await self._search_png(d.query_png(i), SEARCH_K)

        async def design_and_shop(i: int) -> Any:
            category = d.design_category(i)
            pngs = await self._design(i)
            hits = [await self._search_png(png, PRODUCTS_PER_DESIGN, category) for png in pngs]
            return self._score(self._theta(i), [s.product_ids[r] for found in hits for r, _ in found])

        async def multimodal_shop(i: int) -> Any:
            hits = await self._text_search(i)
            scores = self._score(self._theta(i), [s.product_ids[r] for r, _ in hits])
            return np.argsort(-scores, kind="stable")

        async def seller_feedback(i: int) -> Any:
            pngs, category = await self._shifts(i)
            own = [d.product_id(i)]
            return [await self._search_png(png, COMPETITORS_PER_VARIANT, category, own) for png in pngs]

        return {
            "scoring.ScoreItems": score_items,
            "scoring.Recommend": recommend,
            "retrieval.SearchByImage": search,
            "retrieval.SearchByImageAndText": self._text_search,
            "orchestrator.Design": self._design,
            "orchestrator.SellerShifts": self._shifts,
            "orchestrator.Alter (stream)": self._alter,
            "orchestrator.DesignAndShop": design_and_shop,
            "orchestrator.MultimodalShop": multimodal_shop,
            "orchestrator.SellerFeedback": seller_feedback,
        }


#: What each limit does, for the report.
LIMIT_WORK = {
    "scoring.ScoreItems": "user vector lookup + 10 stored item vectors by id + dot products",
    "scoring.Recommend": "user vector + purchased exclusion + exact numpy top-10 over the item vectors",
    "retrieval.SearchByImage": "PNG decode + preprocess + retrieval_encoder (batch 1) + exact numpy top-10",
    "retrieval.SearchByImageAndText": "PNG decode + tokenizer + text_encoder + query_generator (batch 1) + "
    "synthetic query PNG + retrieval_encoder (batch 1) + exact numpy top-10",
    "orchestrator.Design": "user vector + reference numpy Adam, pref_grad per step (batch n) + design PNGs",
    "orchestrator.SellerShifts": "user vector + thumbnail decode + inversion (inv_grad, batch restarts) + GIGS "
    "shifts (shift_grad) + pref_grad evaluation + PNGs",
    "orchestrator.Alter (stream)": "user vector + thumbnail decode + inversion + preference steps (pref_grad, "
    "batch 1) + the streamed PNGs",
    "orchestrator.DesignAndShop": "Design + SearchByImage of every design (category filter) + ScoreItems of the hits",
    "orchestrator.MultimodalShop": "SearchByImageAndText + ScoreItems of the hits + re-rank",
    "orchestrator.SellerFeedback": "SellerShifts + SearchByImage of base and variants (category, own product excluded)",
}


# -- measurement ------------------------------------------------------------------------------------------------


def _sequential(
    works: Sequence[LimitWork], start: int, duration_s: float, min_calls: int, max_calls: int
) -> list[list[float]]:
    """One caller, back to back, the ``works`` alternating (same request index for each): ms per call of each,
    at least ``min_calls`` rounds, until ``duration_s`` has passed or ``max_calls`` rounds."""

    async def run() -> list[list[float]]:
        times: list[list[float]] = [[] for _ in works]
        deadline = time.perf_counter() + duration_s
        rounds = 0
        while rounds < max_calls and (rounds < min_calls or time.perf_counter() < deadline):
            for work, out in zip(works, times, strict=True):
                t0 = time.perf_counter()
                await work(start + rounds)
                out.append((time.perf_counter() - t0) * 1e3)
            rounds += 1
        return times

    return asyncio.run(run())


def _concurrent(work: LimitWork, start: int, threads: int, duration_s: float) -> tuple[int, float, list[float]]:
    """``threads`` workers (one event loop each) call ``work`` back to back until ``duration_s`` has passed
    (at least one call each; calls running at the deadline finish and count). Returns (calls, elapsed s, ms)."""
    barrier = threading.Barrier(threads + 1)
    times: list[list[float]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    deadline = [0.0]

    def worker(w: int) -> None:
        async def run() -> None:
            i = start + w
            barrier.wait()
            while not times[w] or time.perf_counter() < deadline[0]:
                t0 = time.perf_counter()
                await work(i)
                times[w].append((time.perf_counter() - t0) * 1e3)
                i += threads

        try:
            asyncio.run(run())
        except BaseException as exc:  # re-raised by the caller
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(w,), name=f"limit-{w}") for w in range(threads)]
    for thread in pool:
        thread.start()
    started = time.perf_counter()
    deadline[0] = started + duration_s
    barrier.wait()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    flat = [t for part in times for t in part]
    return len(flat), elapsed, flat


@dataclass
class LimitOptions:
    duration_s: float = 3.0  # per RPC, for each of the two measurements
    threads: int = 0  # throughput workers; 0: the machine's cores
    min_calls: int = 3  # p50 rounds at least (a heavy flow takes seconds per call on 2 cores)
    max_calls: int = 2000


def measure_limits(
    data: BenchData,
    repo_dir: Path,
    user_vectors_dir: Path,
    names: Sequence[str],
    opts: LimitOptions,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The limit of every RPC in ``names`` (synchronous: run it on a thread of its own).

    Returns ``{"method": {...}, "setup": {...}, "rpcs": {name: limit}}``; a limit that cannot be measured has
    ``error`` (and null figures) instead of failing the run.
    """
    threads = opts.threads or machine_cores()
    versions = served_model_versions(repo_dir)
    single = InlineOnnxRuntime(repo_dir)  # default intra-op threads: all cores for one caller
    parallel = InlineOnnxRuntime(repo_dir, intra_op_threads=1)  # one core per worker thread
    try:
        setup = asyncio.run(LimitSetup.build(single, data, user_vectors_dir, versions))
        echo(
            f"limits: {len(setup.product_ids)} item vectors and retrieval embeddings computed in-process in "
            f"{setup.build_s:.1f} s; {threads} worker threads for throughput"
        )
        works = {
            "single": LimitWorks(setup, data, single).works(),
            "parallel": LimitWorks(setup, data, parallel).works(),
        }
        out: dict[str, Any] = {}
        for name in names:
            if name not in works["single"]:
                out[name] = {
                    "error": "no in-process limit defined for this RPC",
                    "p50_ms": None,
                    "throughput_per_s": None,
                }
                continue
            out[name] = _measure_one(name, works, single, parallel, threads, opts, echo)
    finally:
        asyncio.run(single.close())
        asyncio.run(parallel.close())
    return {
        "method": {
            "p50": "median ms over repeated in-process calls by one caller, sessions with onnxruntime's default "
            "intra-op threads and with 1 thread alternating; the lower median",
            "throughput": f"{threads} worker threads (one per core) for {opts.duration_s:g} s, onnxruntime "
            "intra_op_num_threads=1 per session so the workers do not oversubscribe the cores",
            "threads": threads,
            "duration_s": opts.duration_s,
            "model_versions": versions,
        },
        "setup": {"indexed_products": len(setup.product_ids), "build_s": round(setup.build_s, 2), "notes": setup.notes},
        "rpcs": out,
    }


def _measure_one(
    name: str,
    works: Mapping[str, Mapping[str, LimitWork]],
    single: InlineOnnxRuntime,
    parallel: InlineOnnxRuntime,
    threads: int,
    opts: LimitOptions,
    echo: Callable[[str], None],
) -> dict[str, Any]:
    try:
        single.calls.clear()
        _sequential([works["single"][name]], 2_000_000, 0.0, 1, 1)  # warm-up + the model calls of one request
        per_call = {f"{model} {list(shape)}": n for (model, shape), n in sorted(single.calls.items())}
        _sequential([works["parallel"][name]], 2_000_001, 0.0, 1, 1)  # warm-up of the 1-thread sessions
        default, one = _sequential(
            [works["single"][name], works["parallel"][name]], 0, opts.duration_s, opts.min_calls, opts.max_calls
        )
        calls, elapsed, concurrent = _concurrent(works["parallel"][name], 100_000, threads, opts.duration_s)
    except Exception as exc:
        echo(f"limit {name}: failed: {type(exc).__name__}: {exc}")
        return {"error": f"{type(exc).__name__}: {exc}", "p50_ms": None, "throughput_per_s": None}
    medians = {"default": statistics.median(default), "1": statistics.median(one)}
    best = min(medians, key=lambda k: medians[k])
    times = default if best == "default" else one
    limit = {
        "p50_ms": medians[best],
        "p90_ms": percentile(times, 90),
        "calls": len(times),
        "p50_intra_op_threads": best,  # the session setting of the lower median
        "p50_ms_intra_op_default": medians["default"],
        "p50_ms_intra_op_1": medians["1"],
        "throughput_per_s": calls / elapsed,
        "throughput_calls": calls,
        "throughput_elapsed_s": round(elapsed, 3),
        "throughput_threads": threads,
        "throughput_p50_ms": statistics.median(concurrent),
        "model_calls": per_call,  # "model [first input shape]" -> calls per request
        "work": LIMIT_WORK.get(name, ""),
    }
    echo(
        f"limit {name:<32} p50 {limit['p50_ms']:8.2f} ms  {limit['throughput_per_s']:8.1f}/s "
        f"({threads} threads)  model calls {per_call or '-'}"
    )
    return limit


# -- the transport alone ---------------------------------------------------------------------------------------


async def rpc_floor(target: str, calls: int = 200) -> dict[str, Any]:
    """p50 / p90 ms of an empty loopback gRPC round trip: ``grpc.health.v1.Health/Check`` to ``target``."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel = grpc.aio.insecure_channel(target)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest()
        for _ in range(10):
            await stub.Check(request, timeout=10)
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            await stub.Check(request, timeout=10)
            times.append((time.perf_counter() - t0) * 1e3)
    finally:
        await channel.close()
    return {"target": target, "calls": calls, "p50_ms": statistics.median(times), "p90_ms": percentile(times, 90)}


#: The service process an RPC of the bench lands on (its name's prefix).
def service_of(rpc: str) -> str:
    return rpc.split("/")[-1].split(".")[0]


# -- ratios ------------------------------------------------------------------------------------------------------


def _ratio(a: Any, b: Any) -> float | None:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or a != a or b != b or b <= 0:
        return None
    return float(a) / float(b)


def attach_limit(entry: dict[str, Any], limit: Mapping[str, Any] | None) -> None:
    """``entry["limit"]`` and, per level, ``p50_ratio_to_limit`` (level p50 / limit p50; meaningful at c=1)
    and ``throughput_share_of_limit`` (level throughput / limit throughput); None when either is missing."""
    limit = dict(limit) if limit is not None else {"error": "not measured", "p50_ms": None, "throughput_per_s": None}
    entry["limit"] = limit
    for level in entry["levels"]:
        level["p50_ratio_to_limit"] = _ratio(level.get("p50_ms"), limit.get("p50_ms"))
        level["throughput_share_of_limit"] = _ratio(level.get("throughput_per_s"), limit.get("throughput_per_s"))


def backends_summary(rows: Sequence[Mapping[str, Any]], skipped: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """Headline of the Triton vs onnxruntime rows: median ratio at batch 32 (the acceptance figure), and over all."""

    def median(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    at32 = [r for r in rows if r["batch"] == 32]
    return {
        "median_ratio_batch32": median([r["ratio"] for r in at32]),
        "models_batch32": [r["model"] for r in at32],
        "median_ratio_all": median([r["ratio"] for r in rows]),
        "min_ratio": min((r["ratio"] for r in rows), default=None),
        "max_ratio": max((r["ratio"] for r in rows), default=None),
        "rows": len(rows),
        "skipped": list(skipped),
    }
