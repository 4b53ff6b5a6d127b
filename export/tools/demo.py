"""The main job on the embedded default (``couturier demo``, ``make demo``).

Stages, each announced with its elapsed time:

1. data: prepare (or load) the catalogue, held-out images and simulated shoppers (``var/data``; the
   ``demo`` data set for every training profile but ``full``);
2. models: when ``runs/<profile>`` lacks the four networks, install the shipped ones
   (``export/shipped/<profile>``, the ``quality`` profile by default: checksums and the data
   fingerprint verified, see :mod:`couturier.export.tools.shipped`) or, with ``train=True``
   (``couturier demo --train``, the ``demo`` profile by default), train them on this machine (about
   12 minutes on a 2-core CPU for ``demo``); without either the demo refuses before any work. Then
   export to ONNX when the export is missing or older than the checkpoints, and publish into the
   model repository only the ONNX files it does not already hold (sha256 against each model's
   newest version), so re-running never publishes duplicate versions;
3. stack: a local Triton with every model plus the four services, each its own process, milvus-lite
   files under ``<out>/serving/milvus`` (wiped first: every run indexes into an empty store), or with
   ``store="server"`` the local Milvus server (empty databases of the run's own; docs/vector-store.md);
4. indexing: the whole catalogue through the orchestrator's ``IndexCatalogue``;
5. flows: Recommend, DesignAndShop, Alter, SellerFeedback, MultimodalShop and SearchByImage through
   :class:`~couturier.services.client.CouturierClient`, plus precision@10 of image search;
6. diagnostics of every service; then the stack is stopped (always, also on Ctrl-C);
7. report: ``demo_report.html`` (self-contained), ``demo_report.json`` and ``demo_report.md``.

What the stages collect is a :class:`~couturier.export.tools.demo_results.DemoResults`, which
:mod:`couturier.export.tools.demo_report` renders. A flow that fails is recorded in the report
(``DemoResults.errors``) and the others still run.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from couturier.export.data.fashion_mnist import sha256_file
from couturier.export.pipeline import NETWORKS, USER_VECTORS
from couturier.export.tools.demo_results import (
    AlterationTrajectory,
    AlterFrame,
    CategoryPrecision,
    DataSummary,
    DemoResults,
    Dependency,
    Design,
    DesignRun,
    ImageSearchExample,
    Indexing,
    IndexSide,
    Item,
    ModelsSummary,
    MultimodalQuery,
    NewShopperRecommendations,
    SearchPrecision,
    SellerVariant,
    SellerVariants,
    ServiceDiagnostics,
    TrainedShopperRecommendations,
)
from couturier.export.tools.shipped import (
    NothingShippedError,
    ShippedModelsError,
    data_profile_for,
    has_shipment,
    run_differences,
    shipped_dir,
    train_hint,
)
from couturier.services.common.errors import InvalidInput
from couturier.services.common.model_metadata import CATEGORIES_KEY, METADATA_PREFIX
from couturier.services.common.models import (
    ALL_MODELS,
    CATEGORY_MODELS,
    GRADIENT_MODELS,
    ITEM_ENCODER,
    LOOP_MODELS,
    TEXT_ENCODER,
)
from couturier.services.latent import optimize
from couturier.services.scoring.users import UserDirectory

#: Shoppers in the DesignAndShop group and in the SellerFeedback segment.
DESIGN_GROUP_SIZE = 20
SELLER_GROUP_SIZE = 30
#: Held-out queries of the precision@10 measurement (spread evenly over the Fashion-MNIST classes).
PRECISION_QUERIES = 100
PRECISION_K = 10
#: Adam steps of the design flows: the service default (Kang et al.'s 10) for one shopper, where more
#: steps raise the learned score but not the planted taste (measured: couturier eval's judge figures);
#: more for a group's TOP_K_SHARE objective, whose share moves in steps of 1/group.
DESIGN_STEPS = optimize.DEFAULT_STEPS
GROUP_DESIGN_STEPS = 150
#: GIGS settings of the seller flow: the service defaults (see couturier.services.latent.optimize).
SELLER_RADIUS = optimize.DEFAULT_SHIFT_RADIUS
SELLER_DIVERSITY = optimize.DEFAULT_DIVERSITY_WEIGHT
SELLER_STEPS = optimize.DEFAULT_SHIFT_STEPS
#: Per-call deadline of the demo's requests (seconds).
CALL_TIMEOUT_S = 300.0
#: MultimodalShop queries: (text, requested colour, category of the held-out query image). The texts
#: follow the colour templates SynthTriplet was trained on (export/training/modifications.py).
MULTIMODAL_QUERIES = (
    ("same but in red", "red", "tops"),
    ("same but in black", "black", "dresses"),
    ("make it navy", "navy", "outerwear"),
)


@dataclass(frozen=True)
class DemoScript:
    """Which categories, colours and texts the flows use: fixed on the simulated world, derived from
    the data (categories by training purchases, the most common attribute values) on a dataset."""

    new_shopper: tuple[str, str]  # (liked colour or "", liked category)
    group_category: str
    seller_category: str
    search_categories: tuple[str, ...]
    multimodal: tuple[tuple[str, str, str], ...]  # (text, requested value, category of the query image)


SIMULATED_SCRIPT = DemoScript(
    ("red", "dresses"), "shoes", "outerwear", ("shoes", "bags", "trousers"), MULTIMODAL_QUERIES
)


def script_for(prepared: Any) -> DemoScript:
    """:data:`SIMULATED_SCRIPT` for the simulated world, else a script built from the dataset's labels."""
    from couturier.export.training.modifications import attribute_text, text_vocabulary

    if getattr(prepared, "provenance", "simulated") == "simulated":
        return SIMULATED_SCRIPT
    cat, held, inter = prepared.catalogue, prepared.heldout, prepared.interactions
    names = list(cat.category_names)
    bought = np.bincount(cat.category[np.concatenate(inter.train)], minlength=len(names)) if inter.n_train else None
    ranked = [
        names[c] for c in np.argsort(-(bought if bought is not None else np.bincount(cat.category)), kind="stable")
    ]
    ranked = [c for c in ranked if (cat.category == names.index(c)).any()]
    top = ranked[0]
    colour = ""
    if len(cat.colour_names) and (cat.colour >= 0).any():
        in_top = cat.colour[(cat.category == names.index(top)) & (cat.colour >= 0)]
        colour = cat.colour_names[int(np.bincount(in_top).argmax())] if len(in_top) else ""
    held_counts = np.bincount(held.category, minlength=len(names))
    search = tuple(names[c] for c in np.argsort(-held_counts, kind="stable")[:3] if held_counts[c])
    vocab = text_vocabulary(cat)
    queries: list[tuple[str, str, str]] = []
    if vocab is not None:
        codes = vocab.attribute_codes(cat)
        in_top = codes[(cat.category == names.index(top)) & (codes >= 0)]
        for value in np.argsort(-np.bincount(in_top, minlength=len(vocab.values)), kind="stable")[:3]:
            kind = (
                names.index(top)
                if vocab.kind_label == "category"
                else int(vocab.kinds(cat)[cat.category == names.index(top)][0])
            )
            queries.append((attribute_text(vocab, 0, int(value), kind), vocab.values[int(value)], top))
    return DemoScript((colour, top), top, ranked[1] if len(ranked) > 1 else top, search, tuple(queries))


#: Training profiles the demo can serve (``tiny``: seconds of training, for tests of the pipeline).
DEMO_PROFILES = ("demo", "quality", "full", "tiny")
#: The profile served by default (shipped models) and the one ``--train`` trains by default.
SERVED_PROFILE = "quality"
TRAINED_PROFILE = "demo"


@dataclass
class Locations:
    """Where the demo reads and writes besides its report folder."""

    runs_root: Path = Path("runs")
    repo_dir: Path = Path("var/model_repository")
    user_vectors_dir: Path = Path("var/user_vectors")


# -- progress ----------------------------------------------------------------------------------------


@dataclass
class Stages:
    """One line when a stage starts and one when it ends, with elapsed seconds."""

    total: int
    echo: Callable[[str], None] = field(default=lambda line: print(line, flush=True))
    timings: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    _n: int = 0

    @contextmanager
    def stage(self, name: str, what: str) -> Iterator[None]:
        self._n += 1
        prefix = f"[{self._n}/{self.total}] {name}"
        self.echo(f"{prefix}: {what} ...")
        begin = time.perf_counter()
        outcome = "done"
        try:
            yield
        except (KeyboardInterrupt, asyncio.CancelledError):
            outcome = "interrupted"
            raise
        except BaseException:
            outcome = "FAILED"
            raise
        finally:
            elapsed = time.perf_counter() - begin
            self.timings[name] = round(elapsed, 2)
            self.echo(
                f"{prefix}: {outcome} after {elapsed:.1f} s (total {time.perf_counter() - self.started:.1f} s)"
                if outcome != "done"
                else f"{prefix}: done in {elapsed:.1f} s (total {time.perf_counter() - self.started:.1f} s)"
            )

    def note(self, line: str) -> None:
        self.echo(f"      {line}")


# -- models: train, export, publish only what is missing ----------------------------------------------


def expected_networks(run_dir: Path) -> tuple[str, ...]:
    """The networks a run has: all four, but no SynthTriplet for a dataset without a usable attribute."""
    from couturier.export.pipeline import read_dataset_record

    return tuple(n for n in NETWORKS if n != "synthtriplet" or read_dataset_record(run_dir).get("multimodal", True))


def expected_models(run_dir: Path) -> tuple[str, ...]:
    """The models a run exports: all, but not the multimodal pair when SynthTriplet was not trained."""
    from couturier.export.tools.stack import OPTIONAL_MODELS

    multimodal = "synthtriplet" in expected_networks(run_dir)
    return tuple(m for m in ALL_MODELS if multimodal or m not in OPTIONAL_MODELS)


def checkpoints(run_dir: Path) -> dict[str, Path]:
    """Network -> where ``couturier train`` writes its checkpoint in ``run_dir``."""
    from couturier.export.training.common import CHECKPOINT

    return {net: run_dir / net / CHECKPOINT for net in expected_networks(run_dir)}


def training_reasons(run_dir: Path) -> list[str]:
    """Why the networks must be trained ([] when every checkpoint and the user vectors exist)."""
    reasons = [f"{path} is missing" for path in checkpoints(run_dir).values() if not path.is_file()]
    if not (run_dir / USER_VECTORS).is_file():
        reasons.append(f"{run_dir / USER_VECTORS} is missing")
    return reasons


def carries_categories(path: Path) -> bool:
    """Whether an exported ONNX file names its categories (``couturier.categories`` metadata); False for
    a file that is not ONNX."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except DecodeError:
        return False
    return any(p.key == METADATA_PREFIX + CATEGORIES_KEY for p in model.metadata_props)


def takes_user_weights(path: Path) -> bool:
    """Whether a gradient model has the ``user_weight`` input of older exports (per-user inputs that do not
    share the batch axis, served unbatched); today's take one user vector per row."""
    import onnx

    return any(i.name == "user_weight" for i in onnx.load(str(path), load_external_data=False).graph.input)


def loop_inputs_missing(path: Path, name: str) -> list[str]:
    """Inputs today's latent service sends to loop model ``name`` that the exported file lacks (an export
    made by an older builder: re-export it rather than serve a model every call would be refused by)."""
    import onnx

    from couturier.services.common.loop_specs import LOOP_SPECS

    spec = LOOP_SPECS[name]
    present = {i.name for i in onnx.load(str(path), load_external_data=False).graph.input}
    return [n for n in (*spec.state_inputs, *spec.row_inputs) if n not in present]


def export_reasons(run_dir: Path) -> list[str]:
    """Why the ONNX export must be (re)done: missing files, a checkpoint newer than the export, or
    files without their category list (exported before the models carried it)."""
    onnx = run_dir / "onnx"
    models = expected_models(run_dir)
    missing = [name for name in models if not (onnx / f"{name}.onnx").is_file()]
    if missing:
        return [f"{onnx} lacks {', '.join(missing)}"]
    oldest = min((onnx / f"{name}.onnx").stat().st_mtime for name in models)
    newer = [net for net, path in checkpoints(run_dir).items() if path.is_file() and path.stat().st_mtime > oldest]
    if newer:
        return [f"the {', '.join(newer)} checkpoint is newer than the ONNX export"]
    unnamed = [name for name in models if name in CATEGORY_MODELS and not carries_categories(onnx / f"{name}.onnx")]
    if unnamed:
        return [f"{', '.join(unnamed)} in {onnx} carry no category list (exported before models did)"]
    per_user = [name for name in models if name in GRADIENT_MODELS and takes_user_weights(onnx / f"{name}.onnx")]
    if per_user:
        return [f"{', '.join(per_user)} in {onnx} take per-user inputs (exported before they were batched)"]
    outdated = {
        name: missing
        for name in models
        if name in LOOP_MODELS and (missing := loop_inputs_missing(onnx / f"{name}.onnx", name))
    }
    return [
        f"{name} in {onnx} lacks the inputs {', '.join(missing)} (built by an older exporter)"
        for name, missing in outdated.items()
    ]


def publish_reasons(onnx_dir: Path, repo_dir: Path) -> dict[str, str]:
    """Models whose exported ONNX file the repository's newest version does not hold, with the reason."""
    from couturier.services.common.model_repository import list_versions, model_path

    reasons: dict[str, str] = {}
    for name in expected_models(onnx_dir.parent):
        versions = list_versions(repo_dir, name)
        if not versions:
            reasons[name] = "not in the repository"
        elif sha256_file(onnx_dir / f"{name}.onnx") != sha256_file(model_path(repo_dir, name, versions[-1])):
            reasons[name] = f"differs from v{versions[-1]}"
    return reasons


def newest_versions(repo_dir: Path) -> dict[str, str]:
    from couturier.services.common.model_repository import list_versions

    return {name: str(versions[-1]) for name in ALL_MODELS if (versions := list_versions(repo_dir, name))}


def default_profile(train: bool) -> str:
    """The profile ``couturier demo`` uses without ``--profile``: ``demo`` to train, ``quality`` to serve."""
    return TRAINED_PROFILE if train else SERVED_PROFILE


@dataclass(frozen=True)
class ModelPlan:
    """What the models stage does with ``runs/<profile>``: serve it as it is (``reuse``), install the
    shipped models into it (``install``) or train them (``train``)."""

    action: Literal["reuse", "install", "train"]
    profile: str
    run_dir: Path
    #: Why ``run_dir`` cannot be served as it is ([] for ``reuse``).
    reasons: tuple[str, ...] = ()
    #: The profile's shipped folder (installed from for ``install``; compared with the run for ``reuse``).
    shipped: Path | None = None


def plan_models(profile: str, where: Locations, *, train: bool, shipped: Path | None = None) -> ModelPlan:
    """Decide where the served models come from; refuses (:class:`NothingShippedError`) when
    ``runs/<profile>`` lacks them, nothing is shipped for the profile and ``train`` is off: the demo
    never falls back to training on its own."""
    run_dir = where.runs_root / profile
    reasons = tuple(training_reasons(run_dir))
    folder = Path(shipped) if shipped is not None else shipped_dir(profile)
    if not reasons:
        return ModelPlan("reuse", profile, run_dir, shipped=folder)
    if train:
        return ModelPlan("train", profile, run_dir, reasons, folder)
    if has_shipment(folder):
        return ModelPlan("install", profile, run_dir, reasons, folder)
    raise NothingShippedError(
        f"no trained {profile!r} models to serve: {'; '.join(reasons)}, and no shipped models in {folder} "
        f"(the folder is {'empty' if folder.is_dir() else 'missing'}). Train them on this machine with "
        f"`{train_hint(profile)}`"
        + (
            f", or train the small demo models with `{train_hint(TRAINED_PROFILE)}`"
            if profile != TRAINED_PROFILE
            else ""
        )
    )


def ensure_models(
    prepared: Any, profile: str, where: Locations, stages: Stages, *, plan: ModelPlan | None = None
) -> ModelsSummary:
    """Install or train (as ``plan`` says; by default :func:`plan_models` without training), then export
    and publish what is missing; returns what was done and the versions to serve."""
    run_dir = where.runs_root / profile
    plan = plan or plan_models(profile, where, train=False)
    info = ModelsSummary(run_dir=str(run_dir))
    reasons = list(plan.reasons)
    if plan.action == "train":
        from couturier.export.pipeline import train_all

        info.trained, info.training_reason = True, "; ".join(reasons)
        stages.note(
            f"training all four networks because {'; '.join(reasons)} "
            "(about 12 minutes on a 2-core CPU for the demo profile; later runs reuse the result)"
        )
        started = time.perf_counter()
        train_all(prepared, where.runs_root, profile)
        info.training_s = round(time.perf_counter() - started, 1)
    elif plan.action == "install" and plan.shipped is not None:
        from couturier.export.tools.shipped import install

        stages.note(f"installing the shipped {profile!r} models from {plan.shipped} because {'; '.join(reasons)}")
        install(plan.shipped, where.runs_root, Path(prepared.data_dir), profile=profile, echo=stages.note)
        left = training_reasons(run_dir)
        if left:
            raise ShippedModelsError(f"installing {plan.shipped} left {run_dir} incomplete: {'; '.join(left)}")
        info.installed = True
        info.install_reason = (
            f"installed from {plan.shipped} (sha256 of every file and the data fingerprint verified) "
            f"because {'; '.join(reasons)}"
        )
        info.training_reason = f"the shipped {profile!r} models were installed into {run_dir}"
    else:
        info.training_reason = f"every checkpoint and the user vectors are in {run_dir}"
        differs = run_differences(plan.shipped, run_dir) if plan.shipped is not None else []
        if differs:
            info.training_reason += f" (not the shipped run: {', '.join(differs)} differ from {plan.shipped})"
            stages.note(
                f"serving {run_dir}, which is not the shipped run ({', '.join(differs)} differ from {plan.shipped}); "
                "move it away to serve the shipped models"
            )
    why_export = ["freshly trained"] if info.trained else export_reasons(run_dir)
    if why_export:
        from couturier.export.pipeline import export_all

        stages.note(f"exporting to ONNX ({'; '.join(why_export)})")
        started = time.perf_counter()
        exported = export_all(run_dir)
        info.exported, info.export_reason = True, "; ".join(why_export)
        info.export_s = round(time.perf_counter() - started, 1)
        info.parity_failed = [name for name, report in exported.parity.items() if not report.get("ok")]
        if info.parity_failed:
            stages.note(
                f"WARNING: ONNX parity check failed for {', '.join(info.parity_failed)} "
                f"(see {run_dir / 'onnx' / 'parity.json'})"
            )
    onnx_dir = run_dir / "onnx"
    to_publish = publish_reasons(onnx_dir, where.repo_dir)
    if to_publish:
        from couturier.export.pipeline import publish_all

        stages.note("publishing " + ", ".join(f"{name} ({why})" for name, why in to_publish.items()))
        published = publish_all(
            {name: onnx_dir / f"{name}.onnx" for name in to_publish}, where.repo_dir, echo=stages.note
        )
        info.published = True
        info.publish_reason = "published " + ", ".join(f"{n} v{v}" for n, v in published.items())
    else:
        info.publish_reason = f"{where.repo_dir} already holds these exact ONNX files (sha256); nothing published"
    tokenizer = where.repo_dir / TEXT_ENCODER / "tokenizer.json"
    if not tokenizer.is_file() and (onnx_dir / "tokenizer.json").is_file():
        shutil.copyfile(onnx_dir / "tokenizer.json", tokenizer)
    versions = newest_versions(where.repo_dir)
    info.versions = versions
    vectors = UserDirectory(where.user_vectors_dir).path(versions[ITEM_ENCODER])
    if ITEM_ENCODER in to_publish or not vectors.is_file():
        from couturier.export.pipeline import publish_user_vectors

        vectors = publish_user_vectors(run_dir, versions[ITEM_ENCODER], where.user_vectors_dir)
        info.user_vectors = f"published {vectors} for {ITEM_ENCODER} v{versions[ITEM_ENCODER]}"
    else:
        info.user_vectors = f"{vectors} (already there)"
    stages.note(info.publish_reason + "; serving " + ", ".join(f"{n} v{v}" for n, v in versions.items()))
    return info


# -- the flows -----------------------------------------------------------------------------------------


def _share(flags: list[bool]) -> float | None:
    """The share of true flags (None for no flags)."""
    return float(np.mean(flags)) if flags else None


class _Flows:
    """Runs every flow against the started stack and fills ``results``."""

    def __init__(
        self, client: Any, prepared: Any, results: DemoResults, stages: Stages, *, multimodal: bool = True
    ) -> None:
        from couturier.export.training.modifications import text_vocabulary
        from couturier.services.common.images import encode_png

        self.client, self.prepared, self.results, self.stages = client, prepared, results, stages
        self.encode_png = encode_png
        self.cat = prepared.catalogue
        self.held = prepared.heldout
        self.inter = prepared.interactions
        self.script = script_for(prepared)
        self.simulated = getattr(prepared, "provenance", "simulated") == "simulated"
        self.shoppers = "simulated shoppers" if self.simulated else "shoppers"
        self.has_colour = bool(len(self.cat.colour_names)) and bool((np.asarray(self.cat.colour) >= 0).any())
        self.vocab = text_vocabulary(self.cat) if multimodal else None
        self.latency: dict[str, float] = results.timings.calls_ms
        self.served: dict[str, str] = results.served_models

    # helpers ---------------------------------------------------------------------------------------

    @asynccontextmanager
    async def section(self, key: str, what: str) -> AsyncIterator[None]:
        """A flow: its failure is recorded (and printed), the demo goes on with the next one."""
        import grpc

        begin = time.perf_counter()
        try:
            yield
        except Exception as exc:
            if isinstance(exc, grpc.aio.AioRpcError):
                message = f"{exc.code().name}: {exc.details()}"
            else:
                message = f"{type(exc).__name__}: {exc}"
            self.results.add_error(key, f"{what}: {message}")
            self.stages.note(f"{what}: FAILED ({message})")
        else:
            self.stages.note(f"{what}: ok in {time.perf_counter() - begin:.1f} s")

    async def timed(self, name: str, call: Any) -> Any:
        begin = time.perf_counter()
        reply = await call
        self.latency[name] = round((time.perf_counter() - begin) * 1000, 1)
        return reply

    def item(self, row: int) -> Item:
        """A catalogue product as a report item."""
        return self._labelled(self.cat, row, str(self.cat.product_ids[row]))

    def held_item(self, row: int) -> Item:
        return self._labelled(self.held, row, f"held-out {self.held.product_ids[row]}")

    def _labelled(self, catalogue: Any, row: int, product_id: str) -> Item:
        category, colour = self._labels(catalogue, row)
        return Item(
            product_id=product_id, category=category, colour=colour, image=self.encode_png(catalogue.images[row])
        )

    @staticmethod
    def _labels(catalogue: Any, row: int) -> tuple[str, str]:
        """(category, colour) of a row ('' for a product without a simulated colour)."""
        colour = int(catalogue.colour[row])
        return (
            catalogue.category_names[int(catalogue.category[row])],
            catalogue.colour_names[colour] if colour >= 0 else "",
        )

    def hit(self, scored: Any, *, score_is: Literal["similarity", "preference"]) -> Item:
        """A ScoredProduct from a reply, with its catalogue image; the reply's ``score`` is a
        similarity or a preference (``score_is``, see the RPC)."""
        product = scored.product
        try:
            image = self.encode_png(self.cat.images[self.cat.index_of(product.product_id)])
        except Exception:
            image = None
        item = Item(product_id=product.product_id, category=product.category, colour=product.colour, image=image)
        if score_is == "similarity":
            item.similarity = scored.score
        else:
            item.preference = scored.score
            if scored.HasField("similarity"):  # e.g. a nearest product's similarity to a design
                item.similarity = scored.similarity
        return item

    def rows_of(self, category: str) -> np.ndarray:
        return np.flatnonzero(self.cat.category == self.cat.category_names.index(category))

    def segment(self, category: str, size: int) -> list[str]:
        """The ``size`` shoppers whose training purchases are most in ``category`` (ties: more purchases)."""
        c = self.cat.category_names.index(category)
        shares = [
            (-float(np.mean(self.cat.category[t] == c)) if len(t) else 0.0, -len(t), u)
            for u, t in enumerate(self.inter.train)
        ]
        return [str(self.inter.user_ids[u]) for _, _, u in sorted(shares)[:size]]

    @staticmethod
    def _version(model: Any) -> str:
        return f"{model.name} v{model.version}" if model.name else ""

    # flows -----------------------------------------------------------------------------------------

    def pick_user(self) -> int:
        """The simulated shopper with the most training purchases (the clearest taste to look at)."""
        return int(np.argmax([len(t) for t in self.inter.train]))

    async def run(self) -> None:
        from couturier.v1 import common_pb2

        self.user_row = self.pick_user()
        self.user_id = str(self.inter.user_ids[self.user_row])
        bought = self.inter.train[self.user_row]
        self.user_category = self.cat.category_names[int(np.bincount(self.cat.category[bought]).argmax())]
        self.user_ref = common_pb2.UserRef(user_id=self.user_id)
        await self.recommend()
        await self.design()
        await self.alter()
        await self.seller()
        await self.multimodal()
        await self.search()

    async def recommend(self) -> None:
        from couturier.v1 import common_pb2, scoring_pb2

        out = self.results.recommend
        async with self.section("recommend", "Recommend (trained shopper)"):
            bought = self.inter.train[self.user_row]
            reply = await self.timed(
                "Recommend (trained shopper)",
                self.client.scoring.Recommend(
                    scoring_pb2.RecommendRequest(user=self.user_ref, k=10), timeout=CALL_TIMEOUT_S
                ),
            )
            bought_categories = {self.cat.category_names[int(c)] for c in self.cat.category[bought]}
            products = [self.hit(p, score_is="preference") for p in reply.products]
            out.user = TrainedShopperRecommendations(
                user_id=self.user_id,
                purchases=[self.item(int(r)) for r in bought[:24]],
                n_purchases=len(bought),
                products=products,
                model=self._version(reply.model),
                folded_in=reply.folded_in,
                latency_ms=self.latency["Recommend (trained shopper)"],
                share_bought_category=_share([p.category in bought_categories for p in products]),
            )
            self.served["scoring Recommend"] = self._version(reply.model)
        async with self.section("recommend", "Recommend (new shopper, folded in)"):
            colour, category = self.script.new_shopper
            rows = [
                int(r) for r in self.rows_of(category) if not colour or self._labels(self.cat, int(r))[1] == colour
            ][:4]
            liked = [str(self.cat.product_ids[r]) for r in rows]
            reply = await self.timed(
                "Recommend (new shopper)",
                self.client.scoring.Recommend(
                    scoring_pb2.RecommendRequest(
                        user=common_pb2.UserRef(user_id="new-shopper", liked_product_ids=liked), k=10
                    ),
                    timeout=CALL_TIMEOUT_S,
                ),
            )
            products = [self.hit(p, score_is="preference") for p in reply.products]
            out.new_user = NewShopperRecommendations(
                user_id="new-shopper",
                liked=[self.item(r) for r in rows],
                liked_colour=colour,
                liked_category=category,
                products=products,
                folded_in=reply.folded_in,
                latency_ms=self.latency["Recommend (new shopper)"],
                share_same_colour=_share([p.colour == colour for p in products]),
                share_same_category=_share([p.category == category for p in products]),
            )

    def _designs(self, reply: Any) -> list[Design]:
        return [
            Design(
                image=r.design.generated.image.data,
                objective=r.design.objective,
                preference_before=r.design.preference_before,
                preference_after=r.design.preference_after,
                realism=r.design.realism,
                products=[self.hit(p, score_is="preference") for p in r.nearest_products],
            )
            for r in reply.results
        ]

    async def design(self) -> None:
        from couturier.v1 import common_pb2, latent_pb2, orchestrator_pb2, scoring_pb2

        out = self.results.design
        async with self.section("design", "DesignAndShop (one shopper)"):
            request = orchestrator_pb2.DesignAndShopRequest(
                design=latent_pb2.DesignRequest(
                    audience=common_pb2.Audience(user=self.user_ref),
                    category=self.user_category,
                    n=4,
                    seed=7,
                    optimizer=latent_pb2.OptimizerParams(steps=DESIGN_STEPS),
                ),
                products_per_design=5,
            )
            reply = await self.timed(
                "DesignAndShop (one shopper)", self.client.orchestrator.DesignAndShop(request, timeout=CALL_TIMEOUT_S)
            )
            out.user = DesignRun(
                title=f"Designs for shopper {self.user_id}",
                audience=f"shopper {self.user_id}",
                category=self.user_category,
                steps=DESIGN_STEPS,
                objective_name="mean preference (optimised together with Kang et al.'s realism term)",
                latency_ms=self.latency["DesignAndShop (one shopper)"],
                designs=self._designs(reply),
            )
        async with self.section("design", "DesignAndShop (group of 20, top-10 share)"):
            category = self.script.group_category
            users = self.segment(category, DESIGN_GROUP_SIZE)
            audience = common_pb2.Audience(
                group=common_pb2.UserGroup(
                    users=[common_pb2.UserRef(user_id=u) for u in users], segment_name=f"{category} buyers"
                )
            )
            request = orchestrator_pb2.DesignAndShopRequest(
                design=latent_pb2.DesignRequest(
                    audience=audience,
                    category=category,
                    n=4,
                    seed=11,
                    objective=latent_pb2.TOP_K_SHARE,
                    top_k=10,
                    optimizer=latent_pb2.OptimizerParams(steps=GROUP_DESIGN_STEPS),
                ),
                products_per_design=5,
            )
            reply = await self.timed(
                "DesignAndShop (group of 20)", self.client.orchestrator.DesignAndShop(request, timeout=CALL_TIMEOUT_S)
            )
            # What a design has to beat: each member's 10th-best score among the catalogue's products of the category.
            described = await self.client.scoring.DescribeUsers(
                scoring_pb2.DescribeUsersRequest(audience=audience, top_k=10, category=category), timeout=CALL_TIMEOUT_S
            )
            thresholds = [u.kth_best_score for u in described.users]
            out.group = DesignRun(
                title=f"Designs for a group of {len(users)} shoppers",
                audience=f"{len(users)} {self.shoppers} who buy the most {category} ({users[0]}, ...)",
                category=category,
                top_k=10,
                users=users,
                steps=GROUP_DESIGN_STEPS,
                median_threshold=float(np.median(thresholds)) if thresholds else None,
                objective_name="share of the group for whom the design enters their top-10 of the catalogue (TOP_K_SHARE)",
                latency_ms=self.latency["DesignAndShop (group of 20)"],
                designs=self._designs(reply),
            )

    async def alter(self) -> None:
        from couturier.v1 import common_pb2, latent_pb2, scoring_pb2

        async with self.section("alter", "Alter (stream)"):
            bought = set(int(r) for r in self.inter.train[self.user_row])
            bought_colours = {int(self.cat.colour[r]) for r in bought}
            row = next(
                (
                    int(r)
                    for r in self.rows_of(self.user_category)
                    if int(r) not in bought and int(self.cat.colour[r]) not in bought_colours
                ),
                int(self.rows_of(self.user_category)[0]),
            )
            product_id = str(self.cat.product_ids[row])
            # Addressed by ids: the orchestrator resolves the shopper and the product for the latent service.
            request = latent_pb2.AlterRequest(
                audience=common_pb2.Audience(user=self.user_ref),
                item=common_pb2.ItemSource(product_id=product_id),
                optimizer=latent_pb2.OptimizerParams(steps=60),
                report_every=20,
            )
            frames: list[AlterFrame] = []
            begin = time.perf_counter()
            first_ms = None
            async for progress in self.client.orchestrator.Alter(request, timeout=CALL_TIMEOUT_S):
                if first_ms is None:
                    first_ms = (time.perf_counter() - begin) * 1000
                phase = latent_pb2.AlterProgress.Phase.Name(progress.phase)
                frames.append(
                    AlterFrame(
                        phase=phase,
                        step=progress.step,
                        image=progress.current.image.data,
                        reconstruction_loss=progress.reconstruction_loss if phase in ("INVERSION", "DONE") else None,
                        objective=progress.preference if phase != "INVERSION" else None,
                    )
                )
            self.latency["Alter (whole stream)"] = round((time.perf_counter() - begin) * 1000, 1)
            # The audience's preference for the original and for every frame, from the scoring service.
            items = [common_pb2.ItemSource(product_id=product_id)]
            items += [
                common_pb2.ItemSource(image=common_pb2.ImagePayload(data=f.image, mime_type="image/png"))
                for f in frames
            ]
            scored = await self.client.scoring.ScoreItems(
                scoring_pb2.ScoreItemsRequest(audience=common_pb2.Audience(user=self.user_ref), items=items),
                timeout=CALL_TIMEOUT_S,
            )
            scores = [s.score for s in sorted(scored.scores, key=lambda s: s.item_index)]
            for frame, score in zip(frames, scores[1:]):
                frame.preference = score
            inverted = [f for f in frames if f.phase == "INVERSION"]
            done = [f for f in frames if f.phase == "DONE"]
            self.results.alter = AlterationTrajectory(
                user_id=self.user_id,
                product=self.item(row),
                frames=frames,
                latency_ms=self.latency["Alter (whole stream)"],
                first_message_ms=round(first_ms or 0.0, 1),
                preference_original=scores[0] if scores else None,
                preference_inverted=inverted[-1].preference if inverted else None,
                preference_final=done[-1].preference if done else None,
                reconstruction_loss_final=inverted[-1].reconstruction_loss if inverted else None,
            )

    async def seller(self) -> None:
        from couturier.v1 import common_pb2, latent_pb2, orchestrator_pb2, scoring_pb2

        async with self.section("seller", "SellerFeedback (group of 30)"):
            category = self.script.seller_category
            rows = self.rows_of(category)
            row = int(rows[np.random.default_rng(3).integers(len(rows))])
            product_id = str(self.cat.product_ids[row])
            users = self.segment(category, SELLER_GROUP_SIZE)
            audience = common_pb2.Audience(
                group=common_pb2.UserGroup(
                    users=[common_pb2.UserRef(user_id=u) for u in users], segment_name=f"{category} buyers"
                )
            )
            request = orchestrator_pb2.SellerFeedbackRequest(
                shifts=latent_pb2.SellerShiftsRequest(
                    item=common_pb2.ItemSource(product_id=product_id),
                    audience=audience,
                    n=4,
                    radius=SELLER_RADIUS,
                    diversity_weight=SELLER_DIVERSITY,
                    optimizer=latent_pb2.OptimizerParams(steps=SELLER_STEPS),
                ),
                competitors_per_variant=4,
            )
            reply = await self.timed(
                "SellerFeedback (group of 30)", self.client.orchestrator.SellerFeedback(request, timeout=CALL_TIMEOUT_S)
            )
            original = await self.client.scoring.ScoreItems(
                scoring_pb2.ScoreItemsRequest(audience=audience, items=[common_pb2.ItemSource(product_id=product_id)]),
                timeout=CALL_TIMEOUT_S,
            )
            self.results.seller = SellerVariants(
                product=self.item(row),
                users=users,
                latency_ms=self.latency["SellerFeedback (group of 30)"],
                audience=f"{len(users)} {self.shoppers} who buy the most {category}",
                settings=f"n=4 variants, radius {SELLER_RADIUS:g}, diversity weight {SELLER_DIVERSITY:g}, "
                f"{SELLER_STEPS} shift steps, default inversion",
                base_image=reply.base.image.data,
                base_preference=reply.base_preference,
                original_preference=original.scores[0].score if original.scores else None,
                item_competitors=[self.hit(p, score_is="similarity") for p in reply.item_competitors],
                variants=[
                    SellerVariant(
                        image=v.variant.generated.image.data,
                        preference_before=v.variant.preference_before,
                        preference_after=v.variant.preference_after,
                        preference_shift=v.variant.preference_shift,
                        opposite_ssim=v.variant.opposite_ssim,
                        shift_norm=v.variant.shift_norm,
                        competitors=[self.hit(p, score_is="similarity") for p in v.competitors],
                    )
                    for v in reply.variants
                ],
            )

    async def multimodal(self) -> None:
        from couturier.v1 import common_pb2, orchestrator_pb2, retrieval_pb2

        out = self.results.multimodal
        out.user_id = self.user_id
        if self.vocab is None:
            from couturier.export.training.train_synthtriplet import NO_VOCABULARY

            out.skipped = NO_VOCABULARY
            self.stages.note(f"MultimodalShop: skipped ({NO_VOCABULARY})")
            return
        held_values, cat_values = self.vocab.attribute_codes(self.held), self.vocab.attribute_codes(self.cat)
        for text, colour, category in self.script.multimodal:
            async with self.section("multimodal", f"MultimodalShop ({text!r})"):
                c, k = self.held.category_names.index(category), self.vocab.values.index(colour)
                row = int(next(r for r in range(len(self.held)) if self.held.category[r] == c and held_values[r] != k))
                request = orchestrator_pb2.MultimodalShopRequest(
                    search=retrieval_pb2.SearchByImageAndTextRequest(
                        image=common_pb2.ImagePayload(
                            data=self.encode_png(self.held.images[row]), mime_type="image/png"
                        ),
                        text=text,
                        k=10,
                    ),
                    user=self.user_ref,
                )
                name = f"MultimodalShop ({text!r})"
                reply = await self.timed(name, self.client.orchestrator.MultimodalShop(request, timeout=CALL_TIMEOUT_S))
                preference = list(reply.preference) or [None] * len(reply.hits)
                hits = [self.hit(h, score_is="similarity") for h in reply.hits]
                for hit, p in zip(hits, preference):
                    hit.preference = p
                out.queries.append(
                    MultimodalQuery(
                        text=text,
                        requested_colour=colour,
                        query=self.held_item(row),
                        synthetic_image=reply.synthetic_query.data,
                        hits=hits,
                        latency_ms=self.latency[name],
                        share_requested_colour=_share(
                            [int(cat_values[self.cat.index_of(h.product_id)]) == k for h in hits]
                        ),
                        share_same_category=_share([h.category == category for h in hits]),
                    )
                )

    async def search(self) -> None:
        from couturier.v1 import common_pb2, retrieval_pb2

        out = self.results.search

        async def query(row: int, k: int) -> tuple[Any, float]:
            request = retrieval_pb2.SearchByImageRequest(
                image=common_pb2.ImagePayload(data=self.encode_png(self.held.images[row]), mime_type="image/png"), k=k
            )
            begin = time.perf_counter()
            reply = await self.client.retrieval.SearchByImage(request, timeout=CALL_TIMEOUT_S)
            return reply, (time.perf_counter() - begin) * 1000

        for category in self.script.search_categories:
            async with self.section("search", f"SearchByImage ({category})"):
                c = self.held.category_names.index(category)
                row = int(np.flatnonzero(self.held.category == c)[0])
                reply, ms = await query(row, 8)
                self.latency[f"SearchByImage ({category})"] = round(ms, 1)
                self.served["retrieval SearchByImage"] = self._version(reply.encoder)
                out.examples.append(
                    ImageSearchExample(
                        query=self.held_item(row),
                        latency_ms=ms,
                        hits=[self.hit(h, score_is="similarity") for h in reply.hits],
                    )
                )
        async with self.section("search", f"precision@{PRECISION_K} over {PRECISION_QUERIES} held-out queries"):
            labels = self.held.fm_class if self.simulated else self.held.category
            rows = precision_rows(np.asarray(labels), PRECISION_QUERIES)
            cat_hits, col_hits, cls_hits, times = [], [], [], []
            per: dict[str, dict[str, list[float]]] = {}
            for row in rows:
                reply, ms = await query(int(row), PRECISION_K)
                times.append(ms)
                category, colour = self._labels(self.held, int(row))
                hit_rows = [self.cat.index_of(h.product.product_id) for h in reply.hits]
                same_cat = [h.product.category == category for h in reply.hits]
                same_col = [h.product.colour == colour for h in reply.hits]
                same_cls = [int(self.cat.fm_class[r]) == int(self.held.fm_class[row]) for r in hit_rows]
                k = max(len(reply.hits), 1)
                cat_hits.append(sum(same_cat) / PRECISION_K if reply.hits else 0.0)
                col_hits.append(sum(same_col) / PRECISION_K if reply.hits else 0.0)
                cls_hits.append(sum(same_cls) / PRECISION_K if reply.hits else 0.0)
                entry = per.setdefault(category, {"category": [], "colour": []})
                entry["category"].append(sum(same_cat) / k)
                entry["colour"].append(sum(same_col) / k)
            counts = np.bincount(self.cat.category, minlength=len(self.cat.category_names)) / len(self.cat)
            out.precision = SearchPrecision(
                queries=len(rows),
                k=PRECISION_K,
                category=float(np.mean(cat_hits)),
                colour=float(np.mean(col_hits)) if self.has_colour else None,
                fm_class=float(np.mean(cls_hits)) if self.simulated else None,
                median_ms=round(statistics.median(times), 2),
                p90_ms=round(float(np.percentile(times, 90)), 2),
                chance_category=float(np.mean([counts[int(self.held.category[r])] for r in rows])),
                chance_colour=1.0 / len(self.cat.colour_names) if self.has_colour else None,
                per_category={
                    c: CategoryPrecision(
                        category=float(np.mean(v["category"])),
                        colour=float(np.mean(v["colour"])) if self.has_colour else None,
                        queries=len(v["category"]),
                    )
                    for c, v in sorted(per.items())
                },
            )
            self.latency[f"SearchByImage (median of {len(rows)})"] = round(statistics.median(times), 1)


def precision_rows(fm_class: np.ndarray, n: int) -> np.ndarray:
    """``n`` held-out rows spread evenly over the classes (the first rows of each class, round robin)."""
    classes = sorted(set(int(c) for c in fm_class))
    per_class = [list(np.flatnonzero(fm_class == c)) for c in classes]
    rows: list[int] = []
    depth = 0
    while len(rows) < n and any(depth < len(p) for p in per_class):
        rows.extend(int(p[depth]) for p in per_class if depth < len(p) and len(rows) < n)
        depth += 1
    return np.asarray(rows[:n], dtype=np.int64)


# -- stack -----------------------------------------------------------------------------------------------


async def _index(client: Any, prepared: Any) -> Indexing:
    from couturier.export.tools.indexing import index_catalogue
    from couturier.v1 import catalogue_pb2

    begin = time.perf_counter()
    reply = await index_catalogue(client, prepared.catalogue)
    seconds = time.perf_counter() - begin
    n = len(prepared.catalogue)
    side = lambda r: IndexSide(upserted=r.upserted, total=r.total, encoder=f"{r.encoder.name} v{r.encoder.version}")  # noqa: E731
    stats = await client.retrieval.GetIndexStats(catalogue_pb2.GetIndexStatsRequest(), timeout=CALL_TIMEOUT_S)
    return Indexing(
        items=n,
        seconds=round(seconds, 2),
        items_per_s=round(n / seconds, 1),
        scoring=side(reply.scoring),
        retrieval=side(reply.retrieval),
        per_category=dict(sorted(stats.per_category.items())),
    )


async def _diagnostics(stack: Any, results: DemoResults) -> None:
    from couturier.services.client import get_status, list_services
    from couturier.services.registry import SERVICE_KEYS

    for key in SERVICE_KEYS:
        target = stack.target(key)
        try:
            status = await get_status(target)
            reflection = await list_services(target)
        except Exception as exc:
            results.add_error("services", f"{key}: {exc}")
            continue
        results.services[key] = ServiceDiagnostics(
            target=target,
            services=list(status.services),
            reflection=list(reflection),
            serving=status.serving,
            version=status.version,
            settings=dict(status.settings),
            fallbacks=list(status.fallbacks),
            dependencies=[Dependency(name=d.name, ready=d.ready, detail=d.detail) for d in status.dependencies],
        )


async def _serve_and_run(stack: Any, prepared: Any, results: DemoResults, stages: Stages) -> None:
    from couturier.services.client import CouturierClient

    with stages.stage("stack", "starting a local Triton (all models) and the four services as processes"):
        await stack.start(timeout_s=180.0)
        for key in ("scoring", "latent", "retrieval", "orchestrator"):
            stages.note(f"{key}: {stack.target(key)}")
        stages.note(f"vector store ({stack.store}): {', '.join(f'{k} {u}' for k, u in stack.store_uri.items())}")
    client = CouturierClient(
        stack.target("orchestrator"), stack.target("scoring"), stack.target("latent"), stack.target("retrieval")
    )
    try:
        with stages.stage("indexing", f"indexing {len(prepared.catalogue)} products through the orchestrator"):
            idx = results.indexing = await _index(client, prepared)
            stages.note(f"{idx.items} products in {idx.seconds:.1f} s ({idx.items_per_s:.0f} products/s)")
        with stages.stage("flows", "Recommend, DesignAndShop, Alter, SellerFeedback, MultimodalShop, SearchByImage"):
            await _Flows(client, prepared, results, stages, multimodal=stack.multimodal).run()
        with stages.stage("diagnostics", "asking every service for its status"):
            await _diagnostics(stack, results)
    finally:
        await client.close()


def _stop(stack: Any) -> dict[str, int]:
    codes: dict[str, int] = {}
    try:
        if stack.services is not None:
            codes = stack.services.stop()
    finally:
        stack.stop()
    return codes


# -- entry ---------------------------------------------------------------------------------------------------


def dataset_locations(prepared: Any, runs_root: Path = Path("runs"), var_dir: Path = Path("var")) -> Locations:
    """Where the demo keeps the runs, model repository and user vectors of a dataset of the user's: a
    folder per dataset content (name + fingerprint), so two datasets never share models."""
    from couturier.export.pipeline import describe_dataset

    record = describe_dataset(prepared)
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in str(record["name"]))[:60] or "dataset"
    slug = f"{safe}-{(record['fingerprint'] or 'unknown')[:12]}"
    base = var_dir / "datasets" / slug
    return Locations(
        runs_root=runs_root / "datasets" / slug,
        repo_dir=base / "model_repository",
        user_vectors_dir=base / "user_vectors",
    )


def _data_summary(prepared: Any) -> DataSummary:
    cat = prepared.catalogue
    manifest = dict(getattr(prepared, "manifest", None) or {})
    summary = DataSummary(
        catalogue_items=len(cat),
        heldout_items=len(prepared.heldout),
        users=int(prepared.interactions.n_users),
        categories=list(cat.category_names),
        colours=list(cat.colour_names),
        manifest=manifest,
    )
    if getattr(prepared, "provenance", "simulated") != "simulated":
        summary.name = str(getattr(prepared, "name", manifest.get("name", "")))
        summary.source = str(getattr(prepared, "source", manifest.get("source", "")))
        summary.provenance = str(prepared.provenance)
    return summary


def run_demo(
    out_dir: Path | None = None,
    data_dir: Path | None = None,
    profile: str | None = None,
    *,
    train: bool = False,
    shipped: Path | None = None,
    where: Locations | None = None,
    dataset: Path | None = None,
    store: Literal["lite", "server"] = "lite",
) -> Path:
    """Run the main job; returns the path of the HTML report (``<out_dir>/demo_report.html``).

    Serves ``runs/<profile>`` (default: the shipped ``quality`` models, installed from ``shipped``,
    default ``export/shipped/<profile>``, when the run lacks them); ``train=True`` trains a missing run
    instead (default profile ``demo``). ``out_dir`` defaults to ``runs/<profile>``.

    ``dataset``: a dataset folder of the user's (read-only) instead of the simulated world. Nothing is
    shipped for it, so its models are trained here (default profile ``demo``) into
    :func:`dataset_locations`, and served from there.
    """
    from couturier.export.data.dataset import prepare
    from couturier.export.data.errors import DataError
    from couturier.export.data.paths import default_data_dir
    from couturier.export.data.selection import select_data
    from couturier.export.tools.stack import ServingStack

    own = None
    if dataset is not None:
        if data_dir is not None:
            raise InvalidInput("give --dataset (your own data) or --data-dir (the simulated world), not both")
        train, profile = True, profile or TRAINED_PROFILE
        try:
            own = select_data(profile, dataset=Path(dataset))
        except DataError as exc:
            raise InvalidInput(str(exc)) from None
        if own.interactions is None:
            raise InvalidInput(
                f"dataset {own.name!r} has no interactions: the demo recommends and designs for shoppers, so it "
                "needs purchase or click logs (import them with `couturier data import-table --interactions`)"
            )
        where = where or dataset_locations(own)
    where = where or Locations()
    profile = profile or default_profile(train)
    if profile not in DEMO_PROFILES:
        raise InvalidInput(f"unknown profile {profile!r}; choose one of {', '.join(DEMO_PROFILES)}")
    plan = plan_models(profile, where, train=train, shipped=shipped)  # refuses before any work
    out_dir = Path(out_dir) if out_dir is not None else where.runs_root / profile
    out_dir.mkdir(parents=True, exist_ok=True)
    data_dir = Path(dataset) if dataset is not None else Path(data_dir) if data_dir is not None else default_data_dir()
    stages = Stages(total=7)
    results = DemoResults(
        profile=profile, data_dir=str(data_dir), generated_at=datetime.now(UTC).isoformat(timespec="seconds")
    )

    data_profile = data_profile_for(profile)
    what = (
        f"opening the dataset {data_dir} (read-only)" if own else f"preparing the {data_profile!r} data in {data_dir}"
    )
    with stages.stage("data", what):
        prepared = own if own is not None else prepare(data_dir, profile=data_profile)
        results.data = _data_summary(prepared)
        stages.note(
            f"{results.data.provenance} data {results.data.name!r}: {results.data.catalogue_items} products, "
            f"{results.data.heldout_items} held-out images, {results.data.users} shoppers"
        )
    with stages.stage("models", f"checking the trained models in {where.runs_root / profile} and {where.repo_dir}"):
        results.models = ensure_models(prepared, profile, where, stages, plan=plan)

    work_dir = (out_dir / "serving").resolve()
    shutil.rmtree(work_dir / "milvus", ignore_errors=True)  # every run indexes into an empty store
    stack = ServingStack(where.repo_dir.resolve(), where.user_vectors_dir.resolve(), work_dir, store=store)
    try:
        asyncio.run(_serve_and_run(stack, prepared, results, stages))
    finally:
        stages.echo("stopping the stack ...")
        exit_codes = _stop(stack)
        stages.echo("stack stopped" + (f" (exit codes: {exit_codes})" if exit_codes else ""))
    for key, code in exit_codes.items():
        results.services.setdefault(key, ServiceDiagnostics()).exit_code = code

    with stages.stage("report", f"writing the report into {out_dir}"):
        results.timings.stages_s = {**stages.timings, "total": round(time.perf_counter() - stages.started, 2)}
        html_path = write_report(results, out_dir)
    return html_path


def write_report(results: DemoResults, out_dir: Path) -> Path:
    """``demo_report.html`` (images inline), ``demo_report.json`` (numbers) and ``demo_report.md``."""
    import json

    from couturier.export.tools.demo_report import json_ready, render_html, render_markdown

    html_path = out_dir / "demo_report.html"
    html_path.write_text(render_html(results), encoding="utf-8")
    (out_dir / "demo_report.json").write_text(json.dumps(json_ready(results), indent=2, default=str) + "\n")
    (out_dir / "demo_report.md").write_text(render_markdown(results, html_path.name))
    return html_path
