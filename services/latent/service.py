"""Latent optimisation service: preference maximisation, personalised alteration and GIGS shifts.

The optimisers run here; every forward pass and gradient is a call to a model on the inference
backend, each resolved to one version per request. ``LatentSettings.optimiser`` picks how: ``loop``
(default) runs ``loop_steps`` Adam steps per call of the loop models (inv_loop, pref_loop,
shift_loop; ``loop_optimize.py``), ``reference`` the numpy optimiser with one gradient-model call
per step (pref_grad, inv_grad, shift_grad; ``optimize.py``, the reference implementation).
TOP_K_SHARE designs run on the reference optimiser in both settings (their user weights change
every step; GetStatus says so).

The service calls no other couturier service: requests carry resolved inputs (``resolved_audience``:
user vectors and k-th best catalogue scores; items as uploaded images with their category). The
orchestrator resolves ids into them; ids sent here are refused with INVALID_ARGUMENT naming the
orchestrator RPC that takes them.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from couturier.services.common import limits
from couturier.services.common.config import LatentSettings
from couturier.services.common.errors import InvalidInput
from couturier.services.common.images import chw_png, to_model_input
from couturier.services.common.inference import InferenceBackend, backend_for, model_check, shown_backend_settings
from couturier.services.common.model_metadata import ModelCategories, category_index
from couturier.services.common.models import (
    GRADIENT_MODELS,
    INV_GRAD,
    INV_LOOP,
    LOOP_MODELS,
    PREF_GRAD,
    PREF_LOOP,
    SHIFT_GRAD,
    SHIFT_LOOP,
)
from couturier.services.common.server import ServiceDefinition
from couturier.services.common.validation import (
    categorised_item,
    float_in_range,
    int_in_range,
    require_id,
)
from couturier.services.latent import loop_optimize, optimize
from couturier.v1 import common_pb2, latent_pb2, latent_pb2_grpc

SERVICE_NAME = latent_pb2.DESCRIPTOR.services_by_name["LatentOptimizationService"].full_name
DEFAULT_DESIGNS = 4
DEFAULT_TOP_K = limits.DEFAULT_TOP_K


@dataclass(frozen=True)
class Optimizer:
    steps: int
    learning_rate: float
    realism_weight: float


@dataclass(frozen=True)
class Inversion:
    steps: int
    learning_rate: float
    restarts: int


def optimizer_params(
    params: latent_pb2.OptimizerParams,
    field: str = "optimizer",
    steps: int = optimize.DEFAULT_STEPS,
    learning_rate: float = optimize.DEFAULT_LEARNING_RATE,
) -> Optimizer:
    realism = float_in_range(
        params.realism_weight,
        0.0,
        limits.MAX_WEIGHT,
        f"{field}.realism_weight",
        default=optimize.DEFAULT_REALISM_WEIGHT,
    )
    return Optimizer(
        steps=int_in_range(params.steps, 1, limits.MAX_OPT_STEPS, f"{field}.steps", default=steps),
        learning_rate=float_in_range(
            params.learning_rate, 0.0, 1.0, f"{field}.learning_rate", default=learning_rate, low_inclusive=False
        ),
        realism_weight=0.0 if params.use_zero_realism else realism,
    )


def inversion_params(params: latent_pb2.InversionParams, field: str = "inversion") -> Inversion:
    return Inversion(
        steps=int_in_range(
            params.steps, 1, limits.MAX_INVERSION_STEPS, f"{field}.steps", default=optimize.DEFAULT_INVERSION_STEPS
        ),
        learning_rate=float_in_range(
            params.learning_rate,
            0.0,
            1.0,
            f"{field}.learning_rate",
            default=optimize.DEFAULT_INVERSION_LEARNING_RATE,
            low_inclusive=False,
        ),
        restarts=int_in_range(
            params.restarts, 1, limits.MAX_RESTARTS, f"{field}.restarts", default=optimize.DEFAULT_RESTARTS
        ),
    )


@dataclass(frozen=True)
class Category:
    """A requested category: its one-hot position in the served models' category list."""

    name: str
    index: int
    count: int  # categories the models know (the one-hot width)

    def one_hot(self, batch: int = 1) -> np.ndarray:
        return optimize.one_hot(self.index, self.count, batch)


def generated(image: np.ndarray, z: np.ndarray, category: str) -> common_pb2.GeneratedImage:
    return common_pb2.GeneratedImage(
        image=common_pb2.ImagePayload(data=chw_png(image), mime_type="image/png"),
        latent=common_pb2.Latent(values=np.asarray(z, np.float32).ravel().tolist()),
        category=category,
    )


@dataclass(frozen=True)
class Users:
    theta: np.ndarray  # (U, K)
    thresholds: np.ndarray  # (U,) k-th best catalogue score (0 when not asked)
    model: common_pb2.ModelVersion


#: The OrchestratorService RPCs that take ids in place of each latent RPC (named in refusals).
ORCHESTRATOR_RPC = {
    "Design": "OrchestratorService.Design (or DesignAndShop)",
    "Alter": "OrchestratorService.Alter",
    "SellerShifts": "OrchestratorService.SellerShifts (or SellerFeedback)",
}


def resolved_users(
    request: latent_pb2.DesignRequest | latent_pb2.AlterRequest | latent_pb2.SellerShiftsRequest,
    rpc: str,
    top_k: int = 0,
    category: str = "",
) -> Users:
    """The request's ``resolved_audience`` as arrays, validated. ``top_k`` > 0 (TOP_K_SHARE) also needs
    the users' k-th best scores, computed for that ``top_k`` in ``category``.

    User ids alone (``audience``) are refused: this service calls no other service to resolve them.
    """
    field = "resolved_audience"
    if not request.HasField(field):
        if request.HasField("audience"):
            raise InvalidInput(
                f"the latent service does not resolve user ids: send {field} (user vectors from "
                f"ScoringService.DescribeUsers) instead of audience, or call {ORCHESTRATOR_RPC[rpc]}, "
                "which takes user ids"
            )
        raise InvalidInput(
            f"{field} is required (user vectors from ScoringService.DescribeUsers); "
            f"callers with user ids call {ORCHESTRATOR_RPC[rpc]}"
        )
    resolved = request.resolved_audience
    users = resolved.users
    if not users:
        raise InvalidInput(f"{field}.users is empty; send 1-{limits.MAX_GROUP_USERS}")
    if len(users) > limits.MAX_GROUP_USERS:
        raise InvalidInput(f"{field}.users has {len(users)} users; at most {limits.MAX_GROUP_USERS}")
    if not resolved.model.name:
        raise InvalidInput(
            f"{field}.model is required: the item encoder the vectors belong to (DescribeUsersResponse.model)"
        )
    dim = len(users[0].vector)
    for index, user in enumerate(users):
        where = f"{field}.users[{index}]"
        require_id(user.user_id, f"{where}.user_id")
        if not user.vector:
            raise InvalidInput(f"{where}.vector is empty; send the user's vector (UserProfile.vector)")
        if len(user.vector) != dim:
            raise InvalidInput(
                f"{where}.vector has {len(user.vector)} values but users[0] has {dim}: "
                "the vectors of one audience come from one DescribeUsers answer"
            )
    theta = np.array([list(u.vector) for u in users], np.float32)
    thresholds = np.array([u.kth_best_score for u in users], np.float32)
    bad = np.argwhere(~np.isfinite(theta))
    if bad.size:
        row, col = (int(i) for i in bad[0])
        raise InvalidInput(f"{field}.users[{row}].vector[{col}] is {theta[row, col]}; only finite numbers are allowed")
    if top_k:
        if (resolved.top_k, resolved.category) != (top_k, category):
            raise InvalidInput(
                f"TOP_K_SHARE with top_k={top_k} in category {category!r} needs the users' k-th best scores for "
                f"them, but {field} holds top_k={resolved.top_k}, category {resolved.category!r}: fill it from "
                f"ScoringService.DescribeUsers(top_k={top_k}, category={category!r}), or call {ORCHESTRATOR_RPC[rpc]}"
            )
        bad_users = np.flatnonzero(~np.isfinite(thresholds))
        if bad_users.size:
            raise InvalidInput(f"{field}.users[{int(bad_users[0])}].kth_best_score is not a finite number")
    return Users(theta=theta, thresholds=thresholds, model=resolved.model)


def uploaded_item(item: common_pb2.ItemSource, category: str, rpc: str) -> np.ndarray:
    """The RGB pixels of ``item.image``, whose ``category`` is required (the models check they know it).

    A catalogue product id is refused: this service calls no other service to fetch its image."""
    if item.WhichOneof("source") == "product_id":
        raise InvalidInput(
            f"the latent service does not resolve product ids: send the image of product {item.product_id!r} as "
            "item.image with its category (VisualRetrievalService.GetProducts returns both), or call "
            f"{ORCHESTRATOR_RPC[rpc]}, which takes product ids"
        )
    if item.WhichOneof("source") is None:
        raise InvalidInput("item.image is required (an uploaded image, with its category)")
    pixels = categorised_item(item, category)
    assert pixels is not None  # an image, checked above
    return pixels


class Latent:
    """The service's logic: runs the optimisers over the inference backend, builds the answers."""

    def __init__(self, backend: InferenceBackend, settings: LatentSettings) -> None:
        self.backend = backend
        self.loop = settings.optimiser == "loop"
        self.loop_steps = settings.loop_steps
        #: The models the service calls: the loop optimiser also needs pref_grad (TOP_K_SHARE designs,
        #: the evaluation of seller-shift variants).
        self.models = GRADIENT_MODELS + (LOOP_MODELS if self.loop else ())
        self.pins = {m: settings.model_version(m) for m in self.models}
        self.categories = ModelCategories(backend)

    @property
    def inversion_model(self) -> str:
        return INV_LOOP if self.loop else INV_GRAD

    def report_interval(self, report_every: int) -> int:
        """Steps between two progress reports of Alter: ``max(report_every, loop_steps)`` on the loop
        optimiser (a report needs a call to end there), ``report_every`` on the reference one."""
        return max(report_every, self.loop_steps) if self.loop else report_every

    async def versions(self, *models: str) -> dict[str, str]:
        return {m: await self.backend.resolve_version(m, self.pins[m]) for m in models}

    async def category(self, name: str, versions: dict[str, str]) -> Category:
        """``name`` in the category list the models of ``versions`` carry (they must agree on it).

        INVALID_ARGUMENT naming the known categories for an unknown name; FAILED_PRECONDITION for
        models exported without the list (their metadata comes from the training data)."""
        names = await self.categories.common(versions)
        return Category(name, category_index(names, name), len(names))

    async def target(self, image: np.ndarray, version: str) -> np.ndarray:
        size = int((await self.backend.input_shapes(self.inversion_model, version))["target"][-1])
        return to_model_input([image], size)

    async def z_dim(self, model: str, version: str) -> int:
        shapes = await self.backend.input_shapes(model, version)
        return int(shapes[next(name for name in ("z", "w", "base_z") if name in shapes)][-1])

    async def invert(
        self,
        image: np.ndarray,
        category: Category,
        inv: Inversion,
        versions: dict[str, str],
        on_step: optimize.OnStep | None = None,
        report_every: int = 0,
    ) -> optimize.InversionResult:
        """GAN inversion of ``image`` in ``category`` (seeded: the same image inverts the same way) on
        the configured optimiser; ``report_every``: the loop optimiser ends a call at its multiples."""
        target = await self.target(image, versions[self.inversion_model])
        if self.loop:
            return await loop_optimize.invert(
                self.backend,
                target=target,
                category=category.one_hot(),
                steps=inv.steps,
                learning_rate=inv.learning_rate,
                restarts=inv.restarts,
                seed=0,
                versions=versions,
                on_step=on_step,
                loop_steps=self.loop_steps,
                report_every=report_every,
            )
        return await optimize.invert(
            self.backend,
            target=target,
            category=category.one_hot(),
            steps=inv.steps,
            learning_rate=inv.learning_rate,
            restarts=inv.restarts,
            seed=0,
            versions=versions,
            on_step=on_step,
        )

    async def maximise_mean(
        self,
        z0: np.ndarray,
        category: np.ndarray,
        theta: np.ndarray,
        opt: Optimizer,
        versions: dict[str, str],
        on_step: optimize.OnStep | None = None,
        report_every: int = 0,
    ) -> optimize.PreferenceResult:
        """The MEAN objective from ``z0`` on the configured optimiser (pref_loop or pref_grad)."""
        if self.loop:
            return await loop_optimize.maximise_preference(
                self.backend,
                z0=z0,
                category=category,
                theta=theta,
                steps=opt.steps,
                learning_rate=opt.learning_rate,
                realism_weight=opt.realism_weight,
                versions=versions,
                on_step=on_step,
                loop_steps=self.loop_steps,
                report_every=report_every,
            )
        return await optimize.maximise_preference(
            self.backend,
            z0=z0,
            category=category,
            theta=theta,
            steps=opt.steps,
            learning_rate=opt.learning_rate,
            realism_weight=opt.realism_weight,
            versions=versions,
            on_step=on_step,
        )


class LatentServicer(latent_pb2_grpc.LatentOptimizationServiceServicer):
    def __init__(self, latent: Latent) -> None:
        self.latent = latent

    async def Design(
        self, request: latent_pb2.DesignRequest, context: grpc.aio.ServicerContext
    ) -> latent_pb2.DesignResponse:
        share = request.objective == latent_pb2.TOP_K_SHARE
        top_k = int_in_range(request.top_k, 1, limits.MAX_K, "top_k", default=DEFAULT_TOP_K)
        users = resolved_users(request, "Design", top_k if share else 0, request.category)
        n = int_in_range(request.n, 1, limits.MAX_DESIGNS, "n", default=DEFAULT_DESIGNS)
        opt = optimizer_params(request.optimizer)
        loop = self.latent.loop and not share  # TOP_K_SHARE: the reference optimiser (weights change every step)
        candidates = int_in_range(
            request.start_candidates,
            1,
            limits.MAX_START_CANDIDATES,
            "start_candidates",
            default=optimize.DEFAULT_START_CANDIDATES,
        )
        model = PREF_LOOP if loop else PREF_GRAD
        versions = await self.latent.versions(*dict.fromkeys((model, PREF_GRAD)))  # pref_grad picks the starts
        cat = await self.latent.category(request.category, versions)
        z_dim = await self.latent.z_dim(model, versions[model])
        seed = request.seed or secrets.randbits(63)
        z0 = optimize.sample_prior(n * candidates, z_dim, seed)
        if candidates > 1:
            z0 = await optimize.select_starts(
                self.latent.backend,
                candidates=z0,
                category=cat.one_hot(),
                theta=users.theta,
                n=n,
                realism_weight=opt.realism_weight,
                versions=versions,
            )
        if share:
            result = await optimize.maximise_preference(
                self.latent.backend,
                z0=z0,
                category=cat.one_hot(n),
                theta=users.theta,
                objective="top_k_share",
                thresholds=users.thresholds,
                steps=opt.steps,
                learning_rate=opt.learning_rate,
                realism_weight=opt.realism_weight,
                versions=versions,
            )
        else:
            result = await self.latent.maximise_mean(z0, cat.one_hot(n), users.theta, opt, versions)
        response = latent_pb2.DesignResponse(
            generator=common_pb2.ModelVersion(name=model, version=versions[model]), scorer=users.model
        )
        for b in np.argsort(-result.objective_after, kind="stable"):
            response.designs.add(
                generated=generated(result.image[b], result.z[b], request.category),
                objective=float(result.objective_after[b]),
                preference_before=float(result.scores_before[b].mean()),
                preference_after=float(result.scores_after[b].mean()),
                per_user_preference=result.scores_after[b].tolist(),
                realism=float(result.realism[b]),
            )
        return response

    async def Alter(
        self, request: latent_pb2.AlterRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[latent_pb2.AlterProgress]:
        users = resolved_users(request, "Alter")
        image, category = uploaded_item(request.item, request.category, "Alter"), request.category
        inv = inversion_params(request.inversion)
        opt = optimizer_params(request.optimizer)
        asked = int_in_range(request.report_every, 1, limits.MAX_REPORT_EVERY, "report_every", default=1)
        every = self.latent.report_interval(asked)
        pref_model = PREF_LOOP if self.latent.loop else PREF_GRAD
        versions = await self.latent.versions(pref_model, self.latent.inversion_model)
        cat = await self.latent.category(category, versions)
        progress: asyncio.Queue[latent_pb2.AlterProgress | None] = asyncio.Queue()
        phase = latent_pb2.AlterProgress

        async def on_inversion(t: int, z: np.ndarray, loss: np.ndarray, images: np.ndarray) -> None:
            if t % every == 0 or t == inv.steps:
                best = int(np.argmin(loss))
                progress.put_nowait(
                    phase(
                        phase=phase.INVERSION,
                        step=t,
                        current=generated(images[best], z[best], category),
                        reconstruction_loss=float(loss[best]),
                    )
                )

        async def on_optimisation(t: int, z: np.ndarray, objective: np.ndarray, images: np.ndarray) -> None:
            if t % every == 0 or t == opt.steps:
                progress.put_nowait(
                    phase(
                        phase=phase.OPTIMIZATION,
                        step=t,
                        current=generated(images[0], z[0], category),
                        preference=float(objective[0]),
                    )
                )

        async def run() -> None:
            try:
                inverted = await self.latent.invert(image, cat, inv, versions, on_inversion, report_every=every)
                result = await self.latent.maximise_mean(
                    inverted.z, cat.one_hot(), users.theta, opt, versions, on_optimisation, report_every=every
                )
                progress.put_nowait(
                    phase(
                        phase=phase.DONE,
                        step=opt.steps,
                        current=generated(result.image[0], result.z[0], category),
                        preference=float(result.objective_after[0]),
                        reconstruction_loss=inverted.loss,
                    )
                )
            finally:
                progress.put_nowait(None)  # ends the stream; a failure is re-raised by `await task`

        task = asyncio.create_task(run())
        try:
            while (message := await progress.get()) is not None:
                yield message
            await task
        finally:
            task.cancel()

    async def SellerShifts(
        self, request: latent_pb2.SellerShiftsRequest, context: grpc.aio.ServicerContext
    ) -> latent_pb2.SellerShiftsResponse:
        users = resolved_users(request, "SellerShifts")
        image, category = uploaded_item(request.item, request.category, "SellerShifts"), request.category
        n = int_in_range(request.n, 1, limits.MAX_SHIFTS, "n", default=optimize.DEFAULT_SHIFTS)
        radius = float_in_range(
            request.radius, 0.0, limits.MAX_RADIUS, "radius", default=optimize.DEFAULT_SHIFT_RADIUS, low_inclusive=False
        )
        diversity = float_in_range(
            request.diversity_weight,
            0.0,
            limits.MAX_WEIGHT,
            "diversity_weight",
            default=optimize.DEFAULT_DIVERSITY_WEIGHT,
        )
        opt = optimizer_params(
            request.optimizer,
            steps=optimize.DEFAULT_SHIFT_STEPS,
            learning_rate=optimize.default_shift_learning_rate(radius),
        )
        inv = inversion_params(request.inversion)
        shift_model = SHIFT_LOOP if self.latent.loop else SHIFT_GRAD
        versions = await self.latent.versions(PREF_GRAD, self.latent.inversion_model, shift_model)
        cat = await self.latent.category(category, versions)
        inverted = await self.latent.invert(image, cat, inv, versions)
        n_users = len(users.theta)
        shift_args: dict[str, Any] = {
            "base_z": inverted.z[0],
            "category": cat.one_hot()[0],
            "theta": users.theta,
            "user_weight": np.full(n_users, 1.0 / n_users, np.float32),
            "n": n,
            "radius": radius,
            "diversity_weight": diversity,
            "realism_weight": opt.realism_weight,
            "steps": opt.steps,
            "learning_rate": opt.learning_rate,
            "seed": 0,
            "versions": versions,
        }
        if self.latent.loop:
            result = await loop_optimize.seller_shifts(
                self.latent.backend, **shift_args, loop_steps=self.latent.loop_steps
            )
        else:
            result = await optimize.seller_shifts(self.latent.backend, **shift_args)
        response = latent_pb2.SellerShiftsResponse(
            base=generated(result.base_image, inverted.z[0], category),
            base_reconstruction_loss=inverted.loss,
            base_preference=result.preference_before,
            generator=common_pb2.ModelVersion(name=shift_model, version=versions[shift_model]),
            scorer=users.model,
        )
        for i in np.argsort(-result.preference_shift, kind="stable"):
            response.variants.add(
                generated=generated(result.image[i], result.z[i], category),
                preference_before=result.preference_before,
                preference_after=float(result.preference_after[i]),
                preference_shift=float(result.preference_shift[i]),
                opposite_ssim=float(result.opposite_ssim[i]),
                shift_norm=float(result.shift_norm[i]),
            )
        return response


def build(settings: LatentSettings, backend: InferenceBackend | None = None) -> ServiceDefinition:
    """The latent service: its only dependencies are its gradient models (no other couturier service).

    ``backend``: the inference backend to use (default: the one the settings describe)."""
    backend = backend if backend is not None else backend_for(settings)
    latent = Latent(backend, settings)
    return ServiceDefinition(
        key="latent",
        service_names=[SERVICE_NAME],
        register=lambda server: latent_pb2_grpc.add_LatentOptimizationServiceServicer_to_server(
            LatentServicer(latent), server
        ),
        checks=[model_check(backend, m, latent.pins[m]) for m in latent.models],
        on_stop=backend.close,
        shown_settings={
            **shown_backend_settings(settings),
            "optimiser": settings.optimiser,
            "loop_steps": str(settings.loop_steps) if latent.loop else "",
            # no silent fallback: say which requests do not run on the loop models
            "reference_optimiser_for": "Design TOP_K_SHARE (user weights change every step)" if latent.loop else "all",
        },
    )
