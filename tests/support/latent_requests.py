"""Design / Alter / SellerShifts requests for comparing the latent service's two optimisers.

:func:`requests` sends the same three requests to a latent service built over ``backend``;
:func:`compare_responses` checks that the loop optimiser answered what the reference did (float32
rounding aside) and that Alter reported the steps the loop optimiser's rule names.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from couturier.services.common.config import LatentSettings
from couturier.services.common.images import decode_image, encode_png
from couturier.services.common.inference import InferenceBackend
from couturier.services.latent.service import Latent, LatentServicer
from couturier.v1 import common_pb2, latent_pb2

__all__ = ["ALTER_STEPS", "Answers", "compare_responses", "requests"]

#: Alter: inversion steps, optimisation steps (report_every 1: the reference reports every step).
ALTER_STEPS = (10, 6)


@dataclass
class Answers:
    design: latent_pb2.DesignResponse
    alter: list[latent_pb2.AlterProgress]
    shifts: latent_pb2.SellerShiftsResponse
    calls: dict[str, int]


def _audience(k: int, users: int = 3) -> latent_pb2.ResolvedAudience:
    rng = np.random.default_rng(3)
    out = latent_pb2.ResolvedAudience(model=common_pb2.ModelVersion(name="item_encoder", version="7"))
    for i in range(users):
        out.users.add(user_id=f"u{i}", vector=(rng.normal(0, 1, k) / np.sqrt(k)).astype(np.float32).tolist())
    return out


def _item(size: int = 16) -> common_pb2.ItemSource:
    pixels = np.random.default_rng(4).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return common_pb2.ItemSource(image=common_pb2.ImagePayload(data=encode_png(pixels), mime_type="image/png"))


async def requests(backend: InferenceBackend, settings: LatentSettings, *, category: str, k: int) -> Answers:
    """Design (MEAN, 3 designs, 10 steps), Alter (report_every 1) and SellerShifts (3 variants, 9 steps)."""
    servicer = LatentServicer(Latent(backend, settings))
    audience, item = _audience(k), _item()
    design = await servicer.Design(
        # start_candidates=1: both optimisers from the seed's own samples. The starts that selection
        # picks on the real models sit where the realism term saturates, and Adam there turns the two
        # optimisers' float32 differences into latent differences of ~3e-3 (selection itself is one
        # pref_grad call shared by both; tests/test_latent_optimize.py checks it).
        latent_pb2.DesignRequest(category=category, n=3, seed=5, resolved_audience=audience, start_candidates=1),
        None,  # type: ignore[arg-type]  # the servicer does not use its context
    )
    alter = [
        message
        async for message in servicer.Alter(
            latent_pb2.AlterRequest(
                item=item,
                category=category,
                report_every=1,
                inversion=latent_pb2.InversionParams(steps=ALTER_STEPS[0], restarts=3),
                optimizer=latent_pb2.OptimizerParams(steps=ALTER_STEPS[1]),
                resolved_audience=audience,
            ),
            None,  # type: ignore[arg-type]
        )
    ]
    shifts = await servicer.SellerShifts(
        latent_pb2.SellerShiftsRequest(
            item=item,
            category=category,
            n=3,
            optimizer=latent_pb2.OptimizerParams(steps=9),
            inversion=latent_pb2.InversionParams(steps=7, restarts=2),
            resolved_audience=audience,
        ),
        None,  # type: ignore[arg-type]
    )
    calls = dict(getattr(backend, "calls", {}))
    return Answers(design, alter, shifts, calls)


def _same_image(a: common_pb2.GeneratedImage, b: common_pb2.GeneratedImage, atol: float) -> None:
    np.testing.assert_allclose(np.asarray(a.latent.values), np.asarray(b.latent.values), atol=atol)
    pixels_a = decode_image(a.image.data).astype(np.int16)
    pixels_b = decode_image(b.image.data).astype(np.int16)
    assert np.abs(pixels_a - pixels_b).max() <= 2  # PNG levels: a value on a rounding edge may flip
    assert a.category == b.category


def compare_responses(reference: Answers, loop: Answers, *, loop_steps: int, rtol: float = 1e-4) -> None:
    """The loop optimiser's answers equal the reference's (``rtol``; latents within ``10 * rtol``), and
    Alter reported step 0, the multiples of ``max(1, loop_steps)`` and the last step of each phase."""
    atol = 10 * rtol
    ref_d, loop_d = reference.design, loop.design
    assert len(ref_d.designs) == len(loop_d.designs)
    for a, b in zip(ref_d.designs, loop_d.designs, strict=True):
        _same_image(a.generated, b.generated, atol)
        np.testing.assert_allclose(
            [b.objective, b.preference_before, b.preference_after, b.realism],
            [a.objective, a.preference_before, a.preference_after, a.realism],
            rtol=rtol,
            atol=atol,
        )
        np.testing.assert_allclose(b.per_user_preference, a.per_user_preference, rtol=rtol, atol=atol)
    assert ref_d.scorer == loop_d.scorer
    assert (ref_d.generator.name, loop_d.generator.name) == ("pref_grad", "pref_loop")

    by_step = {(m.phase, m.step): m for m in reference.alter}
    reported = [(m.phase, m.step) for m in loop.alter]
    phase = latent_pb2.AlterProgress
    expected = []
    for which, steps in zip((phase.INVERSION, phase.OPTIMIZATION), ALTER_STEPS, strict=True):
        expected += [(which, t) for t in sorted({*range(0, steps, loop_steps), steps})]
    expected.append((phase.DONE, ALTER_STEPS[1]))
    assert reported == expected
    for message in loop.alter:
        ref = by_step[(message.phase, message.step)]
        _same_image(ref.current, message.current, atol)
        np.testing.assert_allclose(
            [message.reconstruction_loss, message.preference],
            [ref.reconstruction_loss, ref.preference],
            rtol=rtol,
            atol=atol,
        )

    ref_s, loop_s = reference.shifts, loop.shifts
    _same_image(ref_s.base, loop_s.base, atol)
    np.testing.assert_allclose(
        [loop_s.base_reconstruction_loss, loop_s.base_preference],
        [ref_s.base_reconstruction_loss, ref_s.base_preference],
        rtol=rtol,
        atol=atol,
    )
    assert (ref_s.generator.name, loop_s.generator.name) == ("shift_grad", "shift_loop")
    assert len(ref_s.variants) == len(loop_s.variants)
    for a, b in zip(ref_s.variants, loop_s.variants, strict=True):
        _same_image(a.generated, b.generated, atol)
        np.testing.assert_allclose(
            [b.preference_after, b.preference_shift, b.opposite_ssim, b.shift_norm],
            [a.preference_after, a.preference_shift, a.opposite_ssim, a.shift_norm],
            rtol=rtol,
            atol=atol,
        )
