"""``couturier bench``: latency and throughput of every RPC under closed-loop load at several
concurrency levels, and Triton vs in-process onnxruntime per model, in one run (JSON + markdown).

The load runner is generic: ``run_load(call, concurrency, duration_s=..., count=...)`` starts
``concurrency`` asyncio workers that share the caller's channels; each worker issues the next call as
soon as its previous one returns (closed loop) until the duration is over or ``count`` calls were
issued. Latency percentiles are over successful calls; failed calls are counted by status code.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import grpc
import numpy as np

# -- closed-loop load runner -----------------------------------------------------------------------

Call = Callable[[int], Awaitable[Any]]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100, linear interpolation between closest ranks); nan when empty."""
    if not len(values):
        return float("nan")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


@dataclass
class LoadResult:
    """One load level. ``latencies_ms`` holds successful calls only; ``extra_ms`` holds durations a
    call reported itself (a mapping name -> seconds returned by the call, e.g. time to first message)."""

    concurrency: int
    elapsed_s: float
    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    extra_ms: dict[str, list[float]] = field(default_factory=dict)

    @property
    def ok(self) -> int:
        return len(self.latencies_ms)

    @property
    def calls(self) -> int:
        return self.ok + sum(self.errors.values())

    def summary(self) -> dict[str, Any]:
        lat = self.latencies_ms
        out: dict[str, Any] = {
            "concurrency": self.concurrency,
            "calls": self.calls,
            "ok": self.ok,
            "errors": dict(self.errors),
            "elapsed_s": round(self.elapsed_s, 3),
            "throughput_per_s": self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0,
            "mean_ms": statistics.fmean(lat) if lat else float("nan"),
            **{f"p{q}_ms": percentile(lat, q) for q in (50, 90, 99)},
            "max_ms": max(lat) if lat else float("nan"),
        }
        for name, values in self.extra_ms.items():
            out[name] = {f"p{q}_ms": percentile(values, q) for q in (50, 90, 99)}
        return out


def _error_name(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code().name
    return type(exc).__name__


def _shifted(call: Call, offset: int) -> Call:
    """``call`` with its call index shifted by ``offset``."""
    return lambda i: call(offset + i)


async def run_load(
    call: Call, concurrency: int, duration_s: float | None = None, count: int | None = None
) -> LoadResult:
    """Closed loop: ``concurrency`` workers call ``call(i)`` (``i`` = 0, 1, ... across all workers)
    back to back until ``duration_s`` has passed or ``count`` calls were issued (whichever first).

    Calls already running at the deadline finish and count. ``elapsed_s`` runs until the last one.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    if duration_s is None and count is None:
        raise ValueError("give duration_s or count")
    result = LoadResult(concurrency=concurrency, elapsed_s=0.0)
    issued = 0
    started = time.perf_counter()
    deadline = started + duration_s if duration_s is not None else float("inf")

    async def worker() -> None:
        nonlocal issued
        while time.perf_counter() < deadline and (count is None or issued < count):
            index, issued = issued, issued + 1
            t0 = time.perf_counter()
            try:
                reply = await call(index)
            except Exception as exc:
                result.errors[_error_name(exc)] += 1
                continue
            result.latencies_ms.append((time.perf_counter() - t0) * 1e3)
            if isinstance(reply, Mapping):
                for name, seconds in reply.items():
                    result.extra_ms.setdefault(name, []).append(float(seconds) * 1e3)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.elapsed_s = time.perf_counter() - started
    return result


# -- the RPC cases --------------------------------------------------------------------------------

TEXTS = ("same but in red", "like this but in black", "the same in blue", "this but in green")
#: The requests' sizes (the RPC cases and their in-process limits share them).
SCORE_ITEMS = 10  # ScoreItems: catalogue ids per call
SEARCH_K = 10  # Recommend, SearchByImage, SearchByImageAndText
DESIGNS = 4  # Design: n
SHIFTS = 4  # SellerShifts: n
INVERSION_STEPS = 50  # Alter and SellerShifts (the default is 200; 50 keeps the run short)
REPORT_EVERY = 10  # Alter
PRODUCTS_PER_DESIGN = 5  # DesignAndShop
COMPETITORS_PER_VARIANT = 3  # SellerFeedback


@dataclass
class BenchData:
    """What requests are built from: prepared users, indexed product ids and held-out query images."""

    users: list[str]
    product_ids: list[str]
    query_pngs: list[bytes]
    images: np.ndarray  # (N, S, S, 3) uint8 catalogue images, for the model inputs
    categories: np.ndarray  # (N,) category index of ``images``
    category_names: tuple[str, ...]  # the catalogue's categories, in code order (what Design asks for)
    theta: np.ndarray  # (U, K) trained user vectors
    tokenizer_json: Path
    sizes: dict[str, int] = field(default_factory=dict)
    # the indexed products in catalogue order (what the in-process limits embed and search)
    indexed_ids: list[str] = field(default_factory=list)
    indexed_images: np.ndarray = field(default_factory=lambda: np.zeros((0, 1, 1, 3), np.uint8))
    indexed_categories: list[str] = field(default_factory=list)

    # what call ``i`` of every RPC case asks for (its in-process limit asks for the same)
    def user_id(self, i: int) -> str:
        return self.users[i % len(self.users)]

    def product_id(self, i: int) -> str:
        return self.product_ids[i % len(self.product_ids)]

    def query_png(self, i: int) -> bytes:
        return self.query_pngs[i % len(self.query_pngs)]

    def text(self, i: int) -> str:
        return TEXTS[i % len(TEXTS)]

    def design_category(self, i: int) -> str:
        return self.category_names[i % len(self.category_names)]

    @staticmethod
    def design_seed(i: int) -> int:
        return i + 1

    @classmethod
    def load(
        cls, data_dir: Path, user_vectors: Path, tokenizer_json: Path, index_limit: int, n_queries: int = 64
    ) -> BenchData:
        from couturier.export.data.dataset import load_prepared
        from couturier.services.common.images import encode_png

        prepared = load_prepared(data_dir)
        cat, held = prepared.catalogue, prepared.heldout
        indexed = min(index_limit, len(cat))
        rng = np.random.default_rng(0)
        queries = rng.choice(len(held), size=min(n_queries, len(held)), replace=False)
        vectors = np.load(user_vectors)
        users = [str(u) for u in rng.permutation(prepared.interactions.user_ids)[:256]]
        return cls(
            users=users,
            product_ids=[str(p) for p in rng.permutation(cat.product_ids[:indexed])],
            query_pngs=[encode_png(held.images[i]) for i in queries],
            images=cat.images[:64],
            categories=np.asarray(cat.category[:64]),
            category_names=tuple(cat.category_names),
            theta=np.asarray(vectors["theta"], dtype=np.float32),
            tokenizer_json=tokenizer_json,
            indexed_ids=[str(p) for p in cat.product_ids[:indexed]],
            indexed_images=np.asarray(cat.images[:indexed]),
            indexed_categories=[str(cat.category_names[int(c)]) for c in cat.category[:indexed]],
            sizes={
                "catalogue_items": len(cat),
                "indexed_items": indexed,
                "heldout_items": len(held),
                "users": int(prepared.interactions.n_users),
                "query_images": len(queries),
            },
        )


@dataclass(frozen=True)
class RpcCase:
    name: str
    request: str  # what one call asks for
    call: Call
    heavy: bool = False


def rpc_cases(client: Any, data: BenchData, timeout_s: float) -> list[RpcCase]:
    """One realistic fixed request per RPC; call ``i`` varies the user, product and image."""
    from couturier.services.latent.optimize import DEFAULT_RESTARTS, DEFAULT_SHIFT_STEPS, DEFAULT_STEPS
    from couturier.v1 import (
        common_pb2 as c,
    )
    from couturier.v1 import (
        latent_pb2 as lat,
    )
    from couturier.v1 import (
        orchestrator_pb2 as orc,
    )
    from couturier.v1 import (
        retrieval_pb2 as ret,
    )
    from couturier.v1 import (
        scoring_pb2 as sc,
    )

    def user(i: int) -> Any:
        return c.UserRef(user_id=data.user_id(i))

    pid = data.product_id

    def image(i: int) -> Any:
        return c.ImagePayload(data=data.query_png(i), mime_type="image/png")

    def score(i: int) -> Any:
        items = [c.ItemSource(product_id=pid(SCORE_ITEMS * i + j)) for j in range(SCORE_ITEMS)]
        return sc.ScoreItemsRequest(audience=c.Audience(user=user(i)), items=items)

    def text_search(i: int) -> Any:
        return ret.SearchByImageAndTextRequest(image=image(i), text=data.text(i), k=SEARCH_K)

    def design(i: int) -> Any:
        return lat.DesignRequest(
            audience=c.Audience(user=user(i)),
            category=data.design_category(i),
            n=DESIGNS,
            seed=data.design_seed(i),
        )

    def shifts(i: int) -> Any:
        return lat.SellerShiftsRequest(
            item=c.ItemSource(product_id=pid(i)),
            audience=c.Audience(user=user(i)),
            n=SHIFTS,
            inversion=lat.InversionParams(steps=INVERSION_STEPS),
        )

    async def alter(i: int) -> dict[str, float]:
        request = lat.AlterRequest(
            audience=c.Audience(user=user(i)),
            item=c.ItemSource(product_id=pid(i)),
            inversion=lat.InversionParams(steps=INVERSION_STEPS),
            report_every=REPORT_EVERY,
        )
        t0, first = time.perf_counter(), None
        async for _ in client.orchestrator.Alter(request, timeout=timeout_s):
            first = first if first is not None else time.perf_counter() - t0
        return {"first_message": first if first is not None else float("nan")}

    def unary(method: Callable[..., Awaitable[Any]], build: Callable[[int], Any]) -> Call:
        return lambda i: method(build(i), timeout=timeout_s)

    return [
        RpcCase(
            "scoring.ScoreItems",
            f"1 user, {SCORE_ITEMS} catalogue product ids",
            unary(client.scoring.ScoreItems, score),
        ),
        RpcCase(
            "scoring.Recommend",
            f"1 user, k={SEARCH_K}",
            unary(client.scoring.Recommend, lambda i: sc.RecommendRequest(user=user(i), k=SEARCH_K)),
        ),
        RpcCase(
            "retrieval.SearchByImage",
            f"held-out 32x32 PNG, k={SEARCH_K}",
            unary(client.retrieval.SearchByImage, lambda i: ret.SearchByImageRequest(image=image(i), k=SEARCH_K)),
        ),
        RpcCase(
            "retrieval.SearchByImageAndText",
            f"held-out PNG + 'same but in <colour>', k={SEARCH_K}",
            unary(client.retrieval.SearchByImageAndText, text_search),
        ),
        # the latent capabilities by ids: the orchestrator resolves them (scoring.DescribeUsers, retrieval.GetProducts)
        RpcCase(
            "orchestrator.Design",
            f"1 user, n={DESIGNS} designs, {DEFAULT_STEPS} steps (default)",
            unary(client.orchestrator.Design, design),
            heavy=True,
        ),
        RpcCase(
            "orchestrator.SellerShifts",
            f"catalogue product, 1 user, n={SHIFTS}, inversion {INVERSION_STEPS} steps x {DEFAULT_RESTARTS} restarts, "
            f"{DEFAULT_SHIFT_STEPS} shift steps",
            unary(client.orchestrator.SellerShifts, shifts),
            heavy=True,
        ),
        RpcCase(
            "orchestrator.Alter (stream)",
            f"catalogue product, 1 user, inversion {INVERSION_STEPS} steps x {DEFAULT_RESTARTS} restarts, "
            f"{DEFAULT_STEPS} steps, report_every={REPORT_EVERY}; also time to first message",
            alter,
            heavy=True,
        ),
        RpcCase(
            "orchestrator.DesignAndShop",
            f"Design as above + {PRODUCTS_PER_DESIGN} products per design",
            unary(
                client.orchestrator.DesignAndShop,
                lambda i: orc.DesignAndShopRequest(design=design(i), products_per_design=PRODUCTS_PER_DESIGN),
            ),
            heavy=True,
        ),
        RpcCase(
            "orchestrator.MultimodalShop",
            "SearchByImageAndText as above, re-ranked for 1 user",
            unary(
                client.orchestrator.MultimodalShop,
                lambda i: orc.MultimodalShopRequest(search=text_search(i), user=user(i)),
            ),
        ),
        RpcCase(
            "orchestrator.SellerFeedback",
            f"SellerShifts as above + {COMPETITORS_PER_VARIANT} competitors per variant",
            unary(
                client.orchestrator.SellerFeedback,
                lambda i: orc.SellerFeedbackRequest(shifts=shifts(i), competitors_per_variant=COMPETITORS_PER_VARIANT),
            ),
            heavy=True,
        ),
    ]


# -- Triton vs in-process onnxruntime -----------------------------------------------------------------


def model_inputs(
    model: str,
    shapes: Mapping[str, tuple[int, ...]],
    batch: int,
    data: BenchData,
    text_embedding: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Realistic inputs: catalogue images and their categories, prior latents, trained users.

    ``batch`` is the leading axis (designs, restarts, requests). Gradient models of the per-row signature
    (no ``user_weight`` input: one user vector per row) get one trained user per row, and ``shift_grad``
    then ``SHIFTS`` shifts per row; the older signature (``theta (U,K)`` + ``user_weight``) gets U=1, and
    ``batch`` is then ``shift_grad``'s number of shifts.
    """
    from couturier.services.common.images import to_model_input
    from couturier.services.common.models import SHIFT_GRAD
    from couturier.services.retrieval.text_encoder import Tokenizer

    rng = np.random.default_rng(1)
    per_row = "user_weight" not in shapes
    lead = 1 if model == SHIFT_GRAD and not per_row else batch
    rows = np.arange(lead) % len(data.images)
    out: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        if name in ("image", "reference", "target"):
            out[name] = to_model_input(list(data.images[rows]), shape[-1])
        elif name == "category":
            out[name] = np.eye(shape[-1], dtype=np.float32)[data.categories[rows] % shape[-1]]
        elif name in ("z", "base_z"):
            out[name] = rng.uniform(-1, 1, (lead, shape[-1])).astype(np.float32)
        elif name == "shifts":
            n = SHIFTS if per_row else batch
            out[name] = rng.normal(0, 0.05, (lead, n, shape[-1])).astype(np.float32)
        elif name == "theta":
            out[name] = data.theta[np.arange(lead) % len(data.theta)] if per_row else data.theta[:1]
        elif name in ("user_weight", "realism_weight"):
            out[name] = np.ones((lead, 1), np.float32)
        elif name == "weights":
            out[name] = np.ones((lead, 2), np.float32)
        elif name == "text_embedding":
            assert text_embedding is not None
            out[name] = np.repeat(text_embedding[:1], lead, axis=0)
        elif name in ("input_ids", "attention_mask"):
            texts = [TEXTS[i % len(TEXTS)] for i in range(lead)]
            out.update(Tokenizer(data.tokenizer_json)(texts))
        else:
            raise ValueError(f"no realistic input for {model}.{name}")
    return out


_STAT_FIELDS = ("success", "queue", "compute_input", "compute_infer", "compute_output")


async def triton_stats(client: Any, models: Sequence[str]) -> dict[str, dict[str, int]]:
    """Cumulative Triton statistics per model (summed over versions): counts and nanoseconds."""
    out: dict[str, dict[str, int]] = {}
    for model in models:
        reply = await client.get_inference_statistics(model_name=model)
        row = Counter[str]()
        for stats in reply.model_stats:
            row["inference_count"] += stats.inference_count
            row["execution_count"] += stats.execution_count
            for name in _STAT_FIELDS:
                part = getattr(stats.inference_stats, name)
                row[f"{name}_count"] += part.count
                row[f"{name}_ns"] += part.ns
        out[model] = dict(row)
    return out


async def settled_stats(
    client: Any, models: Sequence[str], expect: Mapping[str, int] | None = None, timeout_s: float = 5.0
) -> dict[str, dict[str, int]]:
    """Statistics once they have caught up (Triton records them just after each response): when the
    success counts reach ``expect``, or, without ``expect``, when two reads 0.2 s apart agree."""

    def reached(stats: Mapping[str, Mapping[str, int]]) -> bool:
        return expect is not None and all(stats[m].get("success_count", 0) >= n for m, n in expect.items())

    deadline = time.monotonic() + timeout_s
    last = await triton_stats(client, models)
    while not reached(last) and time.monotonic() < deadline:
        await asyncio.sleep(0.05 if expect is not None else 0.2)
        now = await triton_stats(client, models)
        if expect is None and now == last:
            break
        last = now
    if expect is not None and not reached(last):
        raise TimeoutError(f"Triton statistics did not reach {dict(expect)} within {timeout_s:g} s")
    return last


def stats_delta(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, Any]:
    """Requests, executions, average batch and mean per-request queue/compute time (ms) between two snapshots."""
    d = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    n = d.get("success_count", 0)
    ms = lambda name: d.get(f"{name}_ns", 0) / n / 1e6 if n else float("nan")  # noqa: E731
    return {
        "requests": n,
        "executions": d.get("execution_count", 0),
        "avg_batch": d.get("inference_count", 0) / d["execution_count"] if d.get("execution_count") else float("nan"),
        "queue_ms": ms("queue"),
        "compute_ms": ms("compute_input") + ms("compute_infer") + ms("compute_output"),
        "compute_infer_ms": ms("compute_infer"),
        "request_ms": ms("success"),
    }


#: Batch sizes (leading axis) of the Triton vs onnxruntime comparison; 32 is the acceptance batch.
FORWARD_BATCHES = (1, 16, 32)
GRADIENT_BATCHES = (1, 4, 32)
#: Each (model, batch) row alternates up to ``calls`` pairs of calls, but stops after this many seconds once
#: it has COMPARE_MIN_CALLS pairs (a gradient model at batch 32 takes ~0.5 s per call on 2 cores).
COMPARE_ROW_BUDGET_S = 10.0
COMPARE_MIN_CALLS = 5


async def compare_backends(
    triton_url: str,
    repo_dir: Path,
    data: BenchData,
    calls: int,
    echo: Callable[[str], None] = print,
    skipped: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Median latency of ``TritonBackend.infer`` vs ``OnnxRuntimeBackend.infer`` per model and batch
    (calls alternate between the two), with Triton's own queue/compute split for the same calls.

    Every model runs at :data:`FORWARD_BATCHES` / :data:`GRADIENT_BATCHES`; a batch a model (or its Triton
    config) does not accept is not a row: it goes to ``skipped`` with the reason (and is echoed)."""
    from tritonclient.grpc.aio import InferenceServerClient

    from couturier.services.common.inference import InferenceError, OnnxRuntimeBackend, TritonBackend
    from couturier.services.common.models import ALL_MODELS, GRADIENT_MODELS, TEXT_ENCODER

    triton, ort = TritonBackend(triton_url, timeout_s=60), OnnxRuntimeBackend(repo_dir)
    stats_client = InferenceServerClient(triton_url)
    rows: list[dict[str, Any]] = []
    skipped = skipped if skipped is not None else []
    try:
        text = next(
            iter(
                (
                    await ort.infer(
                        TEXT_ENCODER, model_inputs(TEXT_ENCODER, await ort.input_shapes(TEXT_ENCODER), 1, data)
                    )
                ).values()
            )
        )
        for model in [m for m in ALL_MODELS if (repo_dir / m).is_dir()]:
            shapes = await ort.input_shapes(model)
            for batch in GRADIENT_BATCHES if model in GRADIENT_MODELS else FORWARD_BATCHES:
                try:
                    inputs = model_inputs(model, shapes, batch, data, text)
                except ValueError as exc:  # a model the bench has no inputs for (e.g. a new one)
                    skipped.append({"model": model, "batch": batch, "reason": str(exc)})
                    echo(f"  {model:<18} not compared ({exc})")
                    break
                start = (await settled_stats(stats_client, [model]))[model].get("success_count", 0)
                try:
                    await ort.infer(model, inputs)
                    await triton.infer(model, inputs)
                except InferenceError as exc:  # e.g. a batch over the config's max_batch_size
                    skipped.append({"model": model, "batch": batch, "reason": f"{type(exc).__name__}: {exc}"})
                    echo(f"  {model:<18} batch {batch:>2}: not compared ({type(exc).__name__}: {exc})")
                    continue
                await triton.infer(model, inputs)  # warm-up: sessions, configs, first-call allocations
                await ort.infer(model, inputs)
                # statistics land just after each response: wait until exactly the warm-up calls are in
                before = await settled_stats(stats_client, [model], {model: start + 2})
                times: dict[str, list[float]] = {"triton": [], "onnxruntime": []}
                budget = time.perf_counter() + COMPARE_ROW_BUDGET_S
                done = 0
                while done < calls and (done < COMPARE_MIN_CALLS or time.perf_counter() < budget):
                    for key, backend in (("triton", triton), ("onnxruntime", ort)):
                        t0 = time.perf_counter()
                        await backend.infer(model, inputs)
                        times[key].append((time.perf_counter() - t0) * 1e3)
                    done += 1
                expect = {model: before[model].get("success_count", 0) + done}
                after = await settled_stats(stats_client, [model], expect)
                t_ms, o_ms = statistics.median(times["triton"]), statistics.median(times["onnxruntime"])
                server = stats_delta(before[model], after[model])
                t_mean = statistics.fmean(times["triton"])
                row = {
                    "model": model,
                    "batch": batch,
                    "calls": done,
                    "triton_ms": t_ms,
                    "onnxruntime_ms": o_ms,
                    "ratio": t_ms / o_ms,
                    "triton_p90_ms": percentile(times["triton"], 90),
                    "onnxruntime_p90_ms": percentile(times["onnxruntime"], 90),
                    "triton_mean_ms": t_mean,
                    "triton_server_requests": server["requests"],
                    "triton_server_ms": server["request_ms"],
                    "triton_queue_ms": server["queue_ms"],
                    "triton_compute_ms": server["compute_ms"],
                }
                rows.append(row)
                echo(
                    f"  {model:<18} batch {batch:>2}: triton {t_ms:7.2f} ms  onnxruntime {o_ms:7.2f} ms  "
                    f"ratio {row['ratio']:5.2f}  (triton queue {row['triton_queue_ms']:.2f} ms, "
                    f"compute {row['triton_compute_ms']:.2f} ms)"
                )
    finally:
        await triton.close()
        await ort.close()
        await stats_client.close()
    return rows


# -- report ---------------------------------------------------------------------------------------

SECTIONS = (
    "## Setup",
    "## RPC latency and throughput",
    "## Headline",
    "## Distance to the limit",
    "## Triton vs in-process onnxruntime",
    "## Triton server statistics during the load",
    "## Notes",
)

#: What each vector store mode is, for the report.
STORE_MODES = {
    "lite": "milvus-lite (embedded, pure Python, one file per service; the zero-setup default)",
    "server": "Milvus standalone server on 127.0.0.1 (the production store)",
    "attached": "whatever the attached services use",
}


def _f(value: Any, digits: int = 1) -> str:
    if isinstance(value, float):
        return "-" if value != value else f"{value:.{digits if abs(value) >= 1 else 2}f}"
    if value is None:
        return "-"
    return str(value)


def _x(value: Any) -> str:
    """A ratio as ``2.31x`` ("-" when not measured)."""
    return f"{value:.2f}x" if isinstance(value, (int, float)) and value == value else "-"


def _pct(value: Any) -> str:
    """A share as ``37%`` ("-" when not measured)."""
    if not isinstance(value, (int, float)) or value != value:
        return "-"
    return f"{100 * value:.0f}%" if value >= 0.1 else f"{100 * value:.1f}%"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_f(v) if not isinstance(v, str) else v for v in row) + " |" for row in rows]


def _stacks(report: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """store -> stack description (a report from before ``stacks`` existed has one ``stack``)."""
    stacks = report.get("stacks")
    if stacks:
        return dict(stacks)
    stack = report["stack"]
    return {stack.get("store", "lite"): stack}


def _machine_line(machine: Mapping[str, Any]) -> str:
    memory = machine.get("memory_gib")
    return (
        f"- machine: {machine['cpu_count']} CPUs ({machine.get('cpu_model', machine.get('processor', '?'))}), "
        f"{f'{memory:.1f} GiB' if isinstance(memory, (int, float)) else '?'} memory; {machine['platform']}, "
        f"Python {machine['python']}; load average before/after {machine['loadavg_before']} / "
        f"{machine.get('loadavg_after', '-')}"
    )


def _load_generator_line(report: Mapping[str, Any]) -> str:
    shares = [
        lvl["load_generator_cpu_share"]
        for case in report["rpcs"].values()
        for lvl in case["levels"]
        if isinstance(lvl.get("load_generator_cpu_share"), (int, float))
    ]
    if not shares:
        return "- load generator: its CPU share was not measured"
    return (
        "- load generator: the bench process (one Python grpc.aio client) runs on the same cores as the stack; "
        f"its own CPU time per level was {_pct(min(shares))} to {_pct(max(shares))} of (cores x wall time of the "
        f"level), median {_pct(statistics.median(shares))} (column `load gen CPU` below)"
    )


def _limit_section(report: Mapping[str, Any]) -> list[str]:
    limits = report.get("limits") or {}
    if not limits.get("rpcs"):
        return ["Not measured (`--limit-duration-s 0`, or no RPC ran)."]
    method = limits.get("method", {})
    levels = [c for c in report["settings"]["levels"] if c > 1] or [16, 64]
    lines = [
        "The limit is the same work done in-process in this run: the request image decoded and preprocessed "
        "with the services' own helpers, onnxruntime sessions of the same ONNX files (versions "
        f"{method.get('model_versions', {})}) at the same batch sizes on the calling thread, exact numpy search "
        "over the same vectors (the indexed products' vectors computed in-process by the same models), and for "
        "the latent RPCs the reference numpy optimiser with the same steps and batch sizes (plus the PNGs the "
        "answer carries); orchestrator flows are the sum of their parts. No gRPC, no Triton, no vector store.",
        "",
        f"- limit p50: {method.get('p50', '-')}.",
        f"- limit calls/s: {method.get('throughput', '-')}.",
        "- p50 ratio = service p50 at c=1 / limit p50 (lower is better, 1 is the floor); throughput share = "
        "service calls/s at that concurrency / limit calls/s (higher is better).",
        "- rpc floor: p50 of an empty gRPC round trip (grpc.health.v1 Health/Check) to the same service process, "
        "measured in the same run; shown beside the limit, not included in it.",
        "- the limit runs each request at its own batch size; a service that merges concurrent requests into "
        "larger batches (Triton's dynamic batching) can pass 100% of its throughput.",
        "",
    ]
    rows = []
    for name, case in report["rpcs"].items():
        limit = case.get("limit") or {}
        by = {lvl["concurrency"]: lvl for lvl in case["levels"]}
        floor = (case.get("rpc_floor") or {}).get("p50_ms")
        rows.append(
            [
                name,
                f"{_f(limit.get('p50_ms'), 2)} ms" if limit.get("p50_ms") is not None else "-",
                _f(limit.get("throughput_per_s")),
                _x(by.get(1, {}).get("p50_ratio_to_limit")),
                *(_pct(by.get(c, {}).get("throughput_share_of_limit")) for c in levels),
                f"{_f(floor, 2)} ms" if floor is not None else "-",
            ]
        )
    lines += _table(
        [
            "RPC",
            "limit p50",
            "limit calls/s",
            "p50 ratio at c=1",
            *(f"throughput share at c={c}" if i == 0 else f"at c={c}" for i, c in enumerate(levels)),
            "rpc floor",
        ],
        rows,
    )
    failed = {n: c["limit"]["error"] for n, c in report["rpcs"].items() if (c.get("limit") or {}).get("error")}
    lines += [""] + [f"- no limit for `{n}`: {e}" for n, e in failed.items()]
    return lines


def render_markdown(report: Mapping[str, Any]) -> str:
    machine, run = report["machine"], report["settings"]
    stacks = _stacks(report)
    lines = [
        f"# couturier bench ({report['started_at']})",
        "",
        f"**{machine['cpu_count']}-core CPU numbers, no GPU.** Triton here is the local CPU stand-in: "
        "tritonserver from the nvidia-pytriton wheel with couturier's *Python-based* `onnxruntime` "
        "backend (a Python stub running onnxruntime). Production serves the same model repository with the "
        "NGC Triton image's native onnxruntime backend on GPU, so the Triton overhead and every absolute "
        "number below are specific to this machine. The load client runs on the same cores as the stack.",
        "",
        "## Setup",
        "",
        _machine_line(machine),
        "- vector store: "
        + "; ".join(
            f"`{store}` = {STORE_MODES.get(store, store)} ({stack.get('store_uri') or '-'})"
            for store, stack in stacks.items()
        )
        + (" - run one after the other in this run, RPCs keyed `<store>/<rpc>`" if len(stacks) > 1 else ""),
        _load_generator_line(report),
    ]
    for store, stack in stacks.items():
        lines += [
            f"- stack{f' ({store})' if len(stacks) > 1 else ''}: {stack['mode']}; Triton "
            f"{stack.get('triton_url') or '-'} (server {stack.get('triton_version', '-')}); model repository "
            f"{stack.get('repo_dir', '-')}; model versions {stack.get('model_versions', {})}; targets "
            f"{stack.get('targets', {})}; index stats: {stack.get('index', {})}",
        ]
    lines += [
        f"- data: {report['data_sizes']}",
        f"- load: closed loop, concurrency {run['levels']}, {run['duration_s']:g} s per level "
        f"(heavy RPCs: at most max({run['heavy_calls']}, concurrency) calls per level), one warm-up call per "
        f"RPC excluded, per-call timeout {run['timeout_s']:g} s; Triton/onnxruntime: median of up to "
        f"{run['compare_calls']} alternating calls per model and batch (at least {COMPARE_MIN_CALLS}, about "
        f"{COMPARE_ROW_BUDGET_S:g} s per row; `calls` in bench.json)",
        f"- wall time: {report.get('wall_s', float('nan')):.0f} s",
        "",
        "Requests:",
        "",
    ]
    lines += [
        f"- `{name}`: {case['request']}{' (heavy: fewer calls)' if case['heavy'] else ''}"
        for name, case in report["rpcs"].items()
    ]
    lines += [
        "",
        "## RPC latency and throughput",
        "",
        "Latencies in ms over successful calls; throughput = successful calls / wall time of the level; "
        "load gen CPU = the bench process's CPU time over (cores x wall time) of the level.",
        "",
    ]
    rows = []
    for name, case in report["rpcs"].items():
        for lvl in case["levels"]:
            first = lvl.get("first_message", {})
            errors = ", ".join(f"{k} {v}" for k, v in lvl["errors"].items()) or "0"
            rows.append(
                [
                    name,
                    lvl["concurrency"],
                    lvl["calls"],
                    errors,
                    lvl["p50_ms"],
                    lvl["p90_ms"],
                    lvl["p99_ms"],
                    lvl["throughput_per_s"],
                    first.get("p50_ms", float("nan")),
                    first.get("p99_ms", float("nan")),
                    _pct(lvl.get("load_generator_cpu_share")),
                ]
            )
    lines += _table(
        [
            "RPC",
            "conc.",
            "calls",
            "errors",
            "p50",
            "p90",
            "p99",
            "calls/s",
            "first msg p50",
            "first msg p99",
            "load gen CPU",
        ],
        rows,
    )
    levels = run["levels"]
    lines += ["", "## Headline", "", "p50 / p99 ms and calls/s per concurrency level.", ""]
    head = []
    for name, case in report["rpcs"].items():
        by = {lvl["concurrency"]: lvl for lvl in case["levels"]}
        head.append(
            [name]
            + [
                f"{_f(by[c]['p50_ms'])} / {_f(by[c]['p99_ms'])} ({_f(by[c]['throughput_per_s'])}/s)" if c in by else "-"
                for c in levels
            ]
        )
    lines += _table(["RPC"] + [f"c={c}" for c in levels], head)
    lines += ["", "## Distance to the limit", "", *_limit_section(report)]
    lines += ["", "## Triton vs in-process onnxruntime", ""]
    if report["backends"]:
        summary = report.get("backends_summary") or {}
        at32 = summary.get("median_ratio_batch32")
        lines += [
            f"**Median Triton / onnxruntime ratio at batch 32: {_x(at32)}** (models "
            f"{', '.join(summary.get('models_batch32', [])) or '-'}; the acceptance asks for <= 1.5x).",
            "",
            "`triton` and `onnxruntime`: median client-side ms per `infer` call (sequential, the two "
            "alternating); ratio = Triton / onnxruntime. `queue` and `compute` are Triton's own statistics, "
            "means over the same Triton calls (compute includes the Python backend stub's round trip; Triton "
            "closes a request's statistics when it is released, just after the response, so they can exceed "
            "the client-side time on this busy machine).",
            "",
        ]
        lines += _table(
            ["model", "batch", "triton", "onnxruntime", "ratio", "triton p90", "onnxruntime p90", "queue", "compute"],
            [
                [
                    r["model"],
                    r["batch"],
                    r["triton_ms"],
                    r["onnxruntime_ms"],
                    f"{r['ratio']:.2f}",
                    r["triton_p90_ms"],
                    r["onnxruntime_p90_ms"],
                    r["triton_queue_ms"],
                    r["triton_compute_ms"],
                ]
                for r in report["backends"]
            ],
        )
        ratios = [r["ratio"] for r in report["backends"]]
        lines += [
            "",
            f"Median ratio over all rows: {statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f}).",
        ]
        lines += [
            f"- not compared: {r['model']} at batch {r['batch']} ({r['reason']})" for r in summary.get("skipped", [])
        ]
    else:
        lines += ["Not measured: no Triton URL (attach with `--triton HOST:PORT`)."]
    lines += ["", "## Triton server statistics during the load", ""]
    if report["triton_load_stats"]:
        lines += [
            "Over the whole RPC load phase: requests, executions (dynamic batching merges requests), mean "
            "per-request queue and compute ms.",
            "",
        ]
        lines += _table(
            ["model", "requests", "executions", "avg batch", "queue ms", "compute ms"],
            [
                [m, s["requests"], s["executions"], s["avg_batch"], s["queue_ms"], s["compute_ms"]]
                for m, s in report["triton_load_stats"].items()
            ],
        )
    else:
        lines += ["Not available (no Triton URL)."]
    lines += ["", "## Notes", ""] + [f"- {note}" for note in report.get("notes", [])] + [""]
    return "\n".join(lines)


def _json_safe(value: Any) -> Any:
    """NaN (no calls, no statistics) -> null, so the file is strict JSON."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_report(report: Mapping[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """``bench.json`` (everything) and ``bench.md`` (tables) under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "bench.json", out_dir / "bench.md"
    json_path.write_text(json.dumps(_json_safe(report), indent=2, default=str, allow_nan=False) + "\n")
    md_path.write_text(render_markdown(report))
    return json_path, md_path


# -- the whole run --------------------------------------------------------------------------------

StoreMode = Literal["lite", "server", "both"]


@dataclass
class BenchOptions:
    out: Path = Path("runs/bench")
    targets: dict[str, str] = field(default_factory=dict)  # attach: service key -> host:port (all four)
    triton_url: str = ""  # attach mode: for the Triton/onnxruntime comparison and statistics
    repo_dir: Path = Path("var/model_repository")
    user_vectors_dir: Path = Path("var/user_vectors")
    data_dir: Path = Path("var/data")
    index_limit: int = 2000
    index: bool | None = None  # None: index when the bench starts its own stack
    levels: tuple[int, ...] = (1, 16, 64)
    duration_s: float = 5.0
    heavy_calls: int = 8
    only: tuple[str, ...] = ()  # substrings of RPC names; empty = all
    compare_calls: int = 50
    timeout_s: float = 120.0
    store: StoreMode = "lite"  # the vector store of a stack the bench starts; both: lite, then server
    milvus_uri: str = ""  # server mode: a running Milvus server (default: the stack starts one)
    limit_duration_s: float = 3.0  # in-process limit: seconds per RPC for each measurement (0: no limits)
    limit_threads: int = 0  # in-process limit throughput: worker threads (0: one per core)


def machine_cores() -> int:
    """Cores this process may run on (the affinity mask, else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _machine() -> dict[str, Any]:
    import onnxruntime

    return {
        "cpu_count": os.cpu_count(),
        "cores_usable": machine_cores(),
        "cpu_model": _cpu_model(),
        "memory_gib": _memory_gib(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "onnxruntime": onnxruntime.__version__,
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }


async def _describe_stack(client: Any, stack: dict[str, Any], opts: BenchOptions) -> None:
    from couturier.services.client import get_status
    from couturier.v1 import catalogue_pb2

    stack["settings"] = {}
    for key, target in stack["targets"].items():
        status = await get_status(target)
        stack["settings"][key] = dict(status.settings)
    for key in ("scoring", "retrieval"):
        stats = await getattr(client, key).GetIndexStats(catalogue_pb2.GetIndexStatsRequest(), timeout=30)
        stack.setdefault("index", {})[key] = {
            "products": stats.products,
            "encoder": f"{stats.encoder.name}:{stats.encoder.version}",
        }
    if opts.repo_dir.is_dir():
        from couturier.services.common.model_repository import served_versions
        from couturier.services.common.models import ALL_MODELS

        stack["model_versions"] = {
            m: max(served_versions(opts.repo_dir, m), default=None) for m in ALL_MODELS if (opts.repo_dir / m).is_dir()
        }


def selected(cases: Sequence[RpcCase], only: Sequence[str]) -> list[RpcCase]:
    """The cases whose name contains one of ``only`` (all when empty)."""
    return [case for case in cases if not only or any(s in case.name for s in only)]


async def load_phase(
    cases: Sequence[RpcCase],
    opts: BenchOptions,
    report: dict[str, Any],
    echo: Callable[[str], None],
    *,
    store: str = "",
    keyed: bool = False,
) -> None:
    """Every case (filtered by ``opts.only``) at every level into ``report["rpcs"]``, one line per level;
    keyed ``"<store>/<rpc>"`` when ``keyed``. Each level also records the bench process's own CPU time
    (``load_generator_cpu_s``) and its share of the machine (``load_generator_cpu_share``: CPU time over
    cores x wall time of the level): the load generator runs on the same cores as the stack."""
    offset = 0  # call indices keep growing across levels, so users and images keep changing
    cores = machine_cores()
    for case in selected(cases, opts.only):
        levels: list[dict[str, Any]] = []
        entry: dict[str, Any] = {"rpc": case.name, "store": store, "request": case.request, "heavy": case.heavy}
        entry["levels"] = levels
        name = f"{store}/{case.name}" if keyed else case.name
        report["rpcs"][name] = entry
        try:
            await case.call(1_000_000)  # warm-up, excluded
        except Exception as exc:
            details = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
            entry["warmup_error"] = f"{_error_name(exc)}: {details}"
            echo(f"{name}: warm-up call failed: {entry['warmup_error']}")
        for level in opts.levels:
            count = max(opts.heavy_calls, level) if case.heavy else None
            base = offset
            cpu0 = time.process_time()
            result = await run_load(_shifted(case.call, base), level, opts.duration_s, count)
            cpu_s = time.process_time() - cpu0
            offset += result.calls
            summary = result.summary()
            summary["load_generator_cpu_s"] = round(cpu_s, 3)
            summary["load_generator_cpu_share"] = cpu_s / (cores * result.elapsed_s) if result.elapsed_s > 0 else None
            levels.append(summary)
            errors = f", errors {summary['errors']}" if summary["errors"] else ""
            echo(
                f"{name:<32} c={level:<3} {summary['calls']:>5} calls  p50 {summary['p50_ms']:8.1f} ms  "
                f"p99 {summary['p99_ms']:8.1f} ms  {summary['throughput_per_s']:7.1f}/s  "
                f"load gen CPU {100 * (summary['load_generator_cpu_share'] or 0):.0f}%{errors}"
            )


def _stores(opts: BenchOptions) -> tuple[str, ...]:
    if opts.store not in ("lite", "server", "both"):
        raise ValueError(f"store must be lite, server or both, got {opts.store!r}")
    if opts.targets:
        if opts.store == "both":
            raise ValueError("--store both starts two stacks; it cannot attach to running services")
        return ("attached",)
    return ("lite", "server") if opts.store == "both" else (opts.store,)


async def _measure_limits(
    cases: Sequence[RpcCase], data: BenchData, opts: BenchOptions, echo: Callable[[str], None]
) -> dict[str, Any]:
    """The in-process limit of every selected RPC (:mod:`couturier.export.tools.bench_limits`), on a thread."""
    from couturier.export.tools.bench_limits import LimitOptions, measure_limits

    names = [case.name for case in selected(cases, opts.only)]
    echo(f"in-process limits of {len(names)} RPCs ({opts.limit_duration_s:g} s per measurement) ...")
    t0 = time.perf_counter()
    limits = await asyncio.to_thread(
        measure_limits,
        data,
        opts.repo_dir.absolute(),
        opts.user_vectors_dir.absolute(),
        names,
        LimitOptions(duration_s=opts.limit_duration_s, threads=opts.limit_threads),
        echo,
    )
    limits["method"]["loadavg_before"] = [round(x, 2) for x in os.getloadavg()]
    limits["wall_s"] = round(time.perf_counter() - t0, 1)
    return limits


async def _bench_stack(
    store: str, keyed: bool, opts: BenchOptions, data: BenchData, report: dict[str, Any], echo: Callable[[str], None]
) -> None:
    """One stack (started, or attached): index, rpc floors, limits (first stack only), load, Triton statistics,
    the backend comparison (first stack only); the stack is stopped whatever happens."""
    from couturier.export.tools.bench_limits import rpc_floor, service_of
    from couturier.services.client import CouturierClient
    from couturier.services.common.models import ALL_MODELS

    repo = opts.repo_dir.absolute()
    models = [m for m in ALL_MODELS if (repo / m).is_dir()]  # what the local Triton loads
    serving: Any = None
    if opts.targets:
        stack: dict[str, Any] = {
            "mode": "attached to a running stack",
            "store": store,
            "targets": dict(opts.targets),
            "triton_url": opts.triton_url,
            "repo_dir": str(repo),
        }
    else:
        from couturier.export.tools.stack import ServingStack

        work = (opts.out / (f"serving-{store}" if keyed else "serving")).absolute()
        shutil.rmtree(work / "milvus", ignore_errors=True)  # a fresh lite index every run
        serving = ServingStack(
            repo_dir=repo,
            user_vectors_dir=opts.user_vectors_dir.absolute(),
            work_dir=work,
            store=store,  # type: ignore[arg-type]
            milvus_uri=opts.milvus_uri if store == "server" else "",
        )
        stack = {
            "mode": "started by the bench: local Triton + one process per service (127.0.0.1)",
            "store": store,
            "repo_dir": str(repo),
            "work_dir": str(work),
        }
    report["stacks"][store] = stack
    prefix = f"{store}: " if keyed else ""
    try:
        if serving is not None:
            t0 = time.perf_counter()
            echo(
                f"{prefix}starting the stack (local Triton with every model, then each service as its own process) ..."
            )
            await serving.start()
            stack["targets"] = {k: serving.target(k) for k in ("orchestrator", "scoring", "latent", "retrieval")}
            stack["triton_url"] = serving.triton.grpc_url
            stack["store_uri"] = serving.store_uri
            stack["start_s"] = round(time.perf_counter() - t0, 1)
        triton_url = stack.get("triton_url") or ""
        async with CouturierClient(**{f"{k}_target": v for k, v in stack["targets"].items()}) as client:
            if opts.index if opts.index is not None else serving is not None:
                from couturier.export.data.dataset import load_prepared
                from couturier.export.tools.indexing import index_catalogue

                t0 = time.perf_counter()
                await index_catalogue(
                    client, load_prepared(opts.data_dir).catalogue, limit=opts.index_limit, progress=False
                )
                stack["index_s"] = round(time.perf_counter() - t0, 1)
                echo(f"{prefix}indexed {data.sizes['indexed_items']} products in {stack['index_s']} s")
            await _describe_stack(client, stack, opts)
            if serving is None:
                stack["store_uri"] = stack["settings"].get("scoring", {}).get("milvus_uri", "")
            stack["rpc_floor"] = {key: await rpc_floor(target) for key, target in stack["targets"].items()}
            echo(
                f"{prefix}rpc floor (health Check round trip p50): "
                + ", ".join(f"{k} {v['p50_ms']:.2f} ms" for k, v in stack["rpc_floor"].items())
            )
            scoring_settings = stack["settings"].get("scoring", {})
            if not triton_url and scoring_settings.get("inference_backend") == "triton":
                triton_url = stack["triton_url"] = scoring_settings.get("triton_url", "")
            cases = rpc_cases(client, data, opts.timeout_s)
            if not report["limits"] and opts.limit_duration_s > 0:
                report["limits"] = await _measure_limits(cases, data, opts, echo)
                report["limits"]["measured_with_store"] = store
            stats_client = None
            if triton_url:
                from tritonclient.grpc.aio import InferenceServerClient

                stats_client = InferenceServerClient(triton_url)
            try:
                if stats_client is not None:
                    stack["triton_version"] = (await stats_client.get_server_metadata()).version
                    stats_before = await settled_stats(stats_client, models)
                await load_phase(cases, opts, report, echo, store=store, keyed=keyed)
                if stats_client is not None:
                    after = await settled_stats(stats_client, models)
                    for m in models:
                        report["triton_load_stats"][f"{store}/{m}" if keyed else m] = stats_delta(
                            stats_before[m], after[m]
                        )
            finally:
                if stats_client is not None:
                    await stats_client.close()
        for entry in report["rpcs"].values():
            if entry["store"] == store:
                service = service_of(entry["rpc"])
                entry["rpc_floor"] = {"service": service, **stack["rpc_floor"].get(service, {})}
        if triton_url and opts.compare_calls > 0 and not report["backends"]:
            echo("Triton vs in-process onnxruntime (median ms per infer call):")
            report["backends"] = await compare_backends(
                triton_url, repo, data, opts.compare_calls, echo, report["backends_skipped"]
            )
    except BaseException:
        if serving is not None:
            echo(
                f"bench failed; service and Triton logs: {serving.work_dir / 'logs'}, "
                f"{serving.triton and serving.triton.log_path}"
            )
        raise
    finally:
        if serving is not None:
            serving.stop()


async def bench(opts: BenchOptions, echo: Callable[[str], None] = print) -> tuple[Path, Path]:
    """Start (or attach to) the stack (or, with ``store="both"``, a lite then a server stack), index, measure
    the in-process limits, load every RPC at every level, compare backends, write."""
    from couturier.export.tools.bench_limits import attach_limit, backends_summary

    started, wall0 = datetime.now(UTC).isoformat(timespec="seconds"), time.perf_counter()
    stores = _stores(opts)
    machine = _machine()
    repo = opts.repo_dir.absolute()
    data = BenchData.load(
        opts.data_dir,
        opts.user_vectors_dir / "item_encoder_v1.npz",
        repo / "text_encoder" / "tokenizer.json",
        opts.index_limit,
    )
    report: dict[str, Any] = {
        "started_at": started,
        "machine": machine,
        "data_sizes": data.sizes,
        "stores": list(stores),
        "stacks": {},
        "limits": {},
        "rpcs": {},
        "backends": [],
        "backends_skipped": [],
        "backends_summary": {},
        "triton_load_stats": {},
        "notes": [],
        "settings": {**asdict(opts), "levels": list(opts.levels)},
    }
    for store in stores:
        await _bench_stack(store, len(stores) > 1, opts, data, report, echo)
    report["stack"] = report["stacks"][stores[0]]
    limits = report["limits"].get("rpcs", {})
    for entry in report["rpcs"].values():
        attach_limit(entry, limits.get(entry["rpc"]))
    report["backends_summary"] = backends_summary(report["backends"], report["backends_skipped"])
    machine["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    report["notes"] = [
        "2-core CPU numbers; Triton is the CPU stand-in (Python-based onnxruntime backend); production runs the "
        "NGC Triton image's native onnxruntime backend on GPU.",
        f"Light RPCs run {opts.duration_s:g} s per level. Heavy RPCs (latent optimisation and the orchestrator "
        f"flows around it) issue at most max({opts.heavy_calls}, concurrency) calls per level (and none after "
        f"{opts.duration_s:g} s): at c=16 and c=64 that is one call per worker, so their percentiles there come from "
        "one round of concurrent calls, and p99 of a handful of calls is close to the maximum.",
        f"Alter and SellerShifts use {INVERSION_STEPS} inversion steps (the default is 200) to keep the run short.",
        "Batched models wait up to Triton's dynamic-batching window (max_queue_delay 500 us) for company: at batch 1 "
        "with nothing else in flight that shows as ~0.5 ms queue time per request.",
        "The load client (Python grpc.aio, one channel per service) runs on the same cores as Triton and the "
        "services, so high-concurrency numbers include client-side contention (its CPU share is in the tables).",
        f"Gradient models are compared at leading axis {', '.join(map(str, GRADIENT_BATCHES))} (designs / restarts "
        f"/ requests: one trained user per row, shift_grad with {SHIFTS} shifts per row; models of the older "
        f"signature: U=1 user, shift_grad's axis is its shifts); forward models at batch "
        f"{', '.join(map(str, FORWARD_BATCHES))}.",
        "In-process limits are measured once per run, on the first stack's machine state (its processes idle), "
        "and shared by every store mode.",
        "Machine is shared: load average is recorded before and after the run.",
    ] + [
        f"{name}: warm-up call failed ({e['warmup_error']})"
        for name, e in report["rpcs"].items()
        if "warmup_error" in e
    ]
    report["wall_s"] = round(time.perf_counter() - wall0, 1)
    return write_report(report, opts.out)
