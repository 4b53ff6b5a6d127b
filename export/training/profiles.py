"""Training profiles of every network: ``demo`` (2-core CPU, minutes), ``quality`` (the shipped
models: GPU minutes or CPU hours) and ``full`` (larger networks, GPU).

Step counts, not wall-clock budgets, define a run so that a seed reproduces it; ``max_seconds`` is
only a safety cap (None = off) for shared machines and is recorded in the metrics when it fires.
Every profile also says how a run scales (none of it changes what a step computes on the CPU):
``workers`` (DataLoader processes gathering image batches from the store, :mod:`.loaders`),
``amp`` / ``amp_dtype`` (mixed precision, :mod:`.precision`) and ``checkpoint_every`` (steps between
resumable checkpoints, :mod:`.resume`).
The demo uses ONE torch thread: on the shared 2-core machine, 2 OpenMP threads competing with other
jobs ran ~10x slower (1.6 s vs 0.16 s per InfoGAN step, measured).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

PROFILES = ("demo", "quality", "full")


@dataclass(frozen=True, kw_only=True)
class TrainingProfile:
    """What every network's profile sets. Profiles are built by keyword (e.g. ``steps=20`` for tests)."""

    name: str
    batch_size: int
    seed: int = 0
    use_cuda: bool = False
    threads: int = 2
    max_seconds: float | None = None
    # DataLoader worker processes gathering batches from the image store (0 = in the training process,
    # right for data in the page cache; 2-8 for catalogues larger than RAM or on slow disks)
    workers: int = 0
    amp: bool | None = None  # mixed precision; None = on when training on CUDA, off on the CPU
    amp_dtype: str = "bfloat16"  # or "float16" (with a gradient scaler) on GPUs without bfloat16
    checkpoint_every: int = 500  # steps between resumable checkpoints (resume.pt); 0 = only at the end

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class AdversarialProfile(TrainingProfile):
    """A generator against a discriminator (critic), trained for ``steps`` with one Adam rate each."""

    steps: int
    lr_d: float
    lr_g: float
    log_every: int = 10


@dataclass(frozen=True, kw_only=True)
class ConvGanProfile(AdversarialProfile):
    """Convolutional generator / discriminator widths (coarse -> fine, fine -> coarse)."""

    g_channels: tuple[int, ...] = (128, 64, 32)
    d_channels: tuple[int, ...] = (32, 64, 128)


@dataclass(frozen=True, kw_only=True)
class InfoGANProfile(ConvGanProfile):
    """Optimisation settings for :mod:`couturier.export.training.train_infogan`.

    InfoGAN paper: D 2e-4, G 1e-3, Adam(0.5, 0.999).
    """

    lambda_cat: float = 1.0
    lambda_cont: float = 0.1
    n_continuous: int = 2
    noise_dim: int = 62


@dataclass(frozen=True, kw_only=True)
class SynthTripletProfile(AdversarialProfile):
    """Optimisation settings for :mod:`couturier.export.training.train_synthtriplet`.

    Paper: WGAN-GP lambda 10, TTUR lr_D 4e-5 / lr_G 1e-5, triplet margin 1. The demo keeps the
    4:1 TTUR ratio but scales both rates by 10 so that a few minutes on a CPU move the generator,
    and adds an L1 term toward the real target (``lambda_l1``) for the same reason.
    """

    gp_lambda: float = 10.0
    margin: float = 1.0
    lambda_triplet: float = 1.0
    lambda_adv: float = 1.0
    lambda_l1: float = 0.0
    n_critic: int = 1
    channels: tuple[int, ...] = (32, 64, 128)
    critic_channels: tuple[int, ...] = (32, 64, 128)
    pairs_per_reference: int = 2


_INFOGAN = {
    "demo": InfoGANProfile(name="demo", steps=1500, batch_size=64, lr_d=2e-4, lr_g=1e-3, threads=1, max_seconds=300.0),
    "quality": InfoGANProfile(
        name="quality",
        steps=8580,  # what the shipped run reached (H200, shared with three other trainings, 150 s cap)
        batch_size=128,
        lr_d=2e-4,
        lr_g=1e-3,
        g_channels=(128, 64, 32),
        d_channels=(64, 128, 256),
        use_cuda=True,
        threads=2,
        log_every=50,
    ),
    "full": InfoGANProfile(
        name="full",
        steps=30000,
        batch_size=128,
        lr_d=2e-4,
        lr_g=1e-3,
        g_channels=(256, 128, 64),
        d_channels=(64, 128, 256),
        use_cuda=True,
        threads=8,
        log_every=50,
        workers=4,
    ),
}
_SYNTH = {
    "demo": SynthTripletProfile(
        name="demo", steps=1200, batch_size=32, lr_d=4e-4, lr_g=1e-4, lambda_l1=10.0, threads=1, max_seconds=360.0
    ),
    # the demo's settings (which give good multimodal hits) run longer, against the quality InfoGAN
    "quality": SynthTripletProfile(
        name="quality",
        steps=3808,  # what the shipped run reached (H200, shared with three other trainings, 120 s cap)
        batch_size=64,
        lr_d=4e-4,
        lr_g=1e-4,
        lambda_l1=10.0,
        use_cuda=True,
        threads=2,
        log_every=50,
    ),
    "full": SynthTripletProfile(
        name="full",
        steps=60000,
        batch_size=64,
        lr_d=4e-5,
        lr_g=1e-5,
        lambda_l1=0.0,
        lambda_triplet=1.0,
        n_critic=1,
        channels=(64, 128, 256),
        critic_channels=(64, 128, 256),
        pairs_per_reference=4,
        use_cuda=True,
        threads=8,
        log_every=50,
    ),
}


def infogan_profile(name: str, **overrides: Any) -> InfoGANProfile:
    """The named InfoGAN profile, with field overrides (e.g. ``steps=20`` for tests)."""
    return replace(_INFOGAN[_check(name)], **overrides)


def synthtriplet_profile(name: str, **overrides: Any) -> SynthTripletProfile:
    """The named SynthTriplet profile, with field overrides."""
    return replace(_SYNTH[_check(name)], **overrides)


@dataclass(frozen=True, kw_only=True)
class DvbprProfile(TrainingProfile):
    """DVBPR optimisation. Official code: Adam 1e-4, K=100; the CPU demo uses 1e-3 (and K=64) to
    converge in minutes."""

    epochs: int
    lr: float = 1e-3
    weight_decay: float = 1e-5  # L2 on the CNN (Adam weight decay)
    # L2 on the user vectors of the batch, as lambda_theta * mean_b ||theta_u||^2. The official DVBPR
    # code sums over the batch: sum_b log sigma(x_uij) - 1.0 * l2_loss(theta_batch), with
    # l2_loss = sum ||.||^2 / 2; divided by the batch size that is mean BPR + 0.5 * mean ||theta||^2.
    lambda_theta: float = 0.5
    k: int = 64
    channels: tuple[int, ...] = (16, 32, 64)
    hidden: int = 256
    n_negatives: int = 100
    bprmf_epochs: int = 60
    # early stopping: epochs without a better validation sampled AUC before training stops (None =
    # all epochs); the best epoch's weights are kept either way
    patience: int | None = None


@dataclass(frozen=True, kw_only=True)
class GanProfile(ConvGanProfile):
    """Conditional hinge GAN optimisation: Adam(beta1 0.5), one D step per G step, EMA of G."""

    z_dim: int = 100
    ema_decay: float = 0.999
    ema_start: int = 200  # steps before averaging starts (the EMA copies G until then)
    betas: tuple[float, float] = (0.5, 0.999)  # Adam's, both nets (SNGAN's standard-CNN setting)
    # MSGAN's mode-seeking term (Mao et al. 2019), 0 = off: G is penalised when two latents of one
    # category give near-identical images (conditional GANs drop modes, e.g. whole colours, otherwise)
    mode_seeking: float = 0.0


_DVBPR = {
    # threads=1: on the shared 2-core machine one thread measured ~5x faster per batch than two
    "demo": DvbprProfile(name="demo", epochs=12, batch_size=128, threads=1, max_seconds=300.0),
    "quality": DvbprProfile(name="quality", epochs=30, batch_size=128, use_cuda=True, threads=2),
    "full": DvbprProfile(
        name="full",
        epochs=60,
        batch_size=256,
        lr=1e-4,
        k=100,
        channels=(64, 128, 256, 256),
        hidden=1024,
        bprmf_epochs=60,
        patience=5,
        use_cuda=True,
        threads=8,
        workers=4,
    ),
}
_GAN = {
    "demo": GanProfile(name="demo", steps=1500, batch_size=64, lr_d=2e-4, lr_g=2e-4, threads=1, max_seconds=600.0),
    # the shipped generator: small enough that a latent-optimisation step stays cheap on a CPU. Batch
    # 256 was chosen over 128 (and over MSGAN's mode-seeking term) on one H200 in ~7,000 steps each:
    # 11 of the 14 catalogue colours drawn >= 3% of the time (128: 9), judge accuracy 0.93 (0.92),
    # domain FID 2.6x real-vs-real (2.0x); with mode seeking 0.86 and 4.2-5.4x.
    "quality": GanProfile(
        name="quality",
        steps=7019,  # what the shipped run reached (H200, shared with three other trainings, 320 s cap)
        batch_size=256,
        lr_d=2e-4,
        lr_g=2e-4,
        g_channels=(256, 128, 64, 32),
        d_channels=(64, 128, 256),
        use_cuda=True,
        threads=2,
        log_every=50,
    ),
    "full": GanProfile(
        name="full",
        steps=40000,
        batch_size=128,
        lr_d=2e-4,
        lr_g=2e-4,
        g_channels=(512, 256, 128, 64),
        d_channels=(64, 128, 256, 512),
        use_cuda=True,
        threads=8,
        log_every=50,
        workers=4,
    ),
}


def dvbpr_profile(name: str, **overrides: Any) -> DvbprProfile:
    """The named DVBPR profile with field overrides (e.g. ``epochs=1`` for tests)."""
    return replace(_DVBPR[_check(name)], **overrides)


def gan_profile(name: str, **overrides: Any) -> GanProfile:
    """The named GAN profile with field overrides."""
    return replace(_GAN[_check(name)], **overrides)


def _check(name: str) -> str:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {PROFILES}")
    return name
