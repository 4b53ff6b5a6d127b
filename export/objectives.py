"""Torch objectives that the gradient models export (preference maximisation, GAN inversion, GIGS shifts).

Every objective is an ``nn.Module`` whose ``forward`` returns ``(value, *aux)``: ``value`` is the
per-sample objective ``(B,)`` (maximised for preference/shift, minimised for inversion; the service's
optimiser picks the sign), ``aux`` are un-differentiated by-products the service needs anyway
(generated images, Phi features, realism). :func:`couturier.export.grad_export.export_value_and_grad`
turns them into ONNX models with outputs ``value, grad, *aux`` (see :mod:`couturier.export.gradient_models`).

The networks are generic modules with these call signatures (the couturier classes satisfy them):

* ``generator(z (B,Dz), category (B,C) one-hot) -> image (B,3,S,S)`` in [-1, 1];
* ``discriminator(image, category) -> realism (B,)`` (LSGAN: real ~ 1);
* ``encoder(image) -> Phi (B,K)`` (DVBPR item encoder; a score is ``theta_u . Phi``);
* ``perceptual(a, b) -> (B,)`` a perceptual distance between two image batches.

All modules must be in eval mode (BatchNorm running statistics) so samples stay independent.

Preference (Kang et al. 2017, and Kang's official code)::

    pref_b = theta_b . Phi(G(z_b, c_b)) - realism_weight_b * min(D(G(z_b), c_b) - m, 0)^2

``theta_b`` is ONE user vector per row, so every input has the batch on axis 0 and rows are
independent (Triton's dynamic batcher can merge requests). Because the score is linear in theta, a
group objective with weights ``w_bu`` over users ``theta_u`` is the row's effective vector
``theta_b = sum_u w_bu theta_u``, computed by the caller; per-user scores ``s_bu = theta_u . Phi_b``
come from the aux output ``Phi`` (``phi``), also in the caller.

Kang's code maximises ``mean_u theta_u . Phi(G(z)) - 1.0 * (D(G(z)) - 1)^2`` with an LSGAN D (real
~ 1). couturier's D is hinge-trained: real items score about >= 1 and the generator's own samples
about -1, so Kang's target of 1 made the realism term (about 3.5 per design) outweigh the
preference gain (about 1.3), and Adam spent the steps making designs "more real" for D instead of
more liked (measured on the quality models). The term is one-sided around ``m``, the median realism
of the generator's own samples (:func:`sample_realism_margin`, measured at export): a design pays
only for becoming less realistic than a typical sample. Otherwise Kang's objective is kept:
the group's mean theta (weights 1/U; identical because theta enters linearly) and
``realism_weight = 1``. Non-linear group objectives ``F(s_1..s_U)`` of the per-user scores
``s_u = theta_u . Phi(G(z))`` are handled by the caller: compute ``s = Phi theta_u`` (aux output
``phi``), send ``theta_b = sum_u dF/ds_u theta_u`` and call again (chain rule; ``grad_z`` is then
``dF/dz`` at that point).

Inversion (GIGS inverts a seller's photo; LPIPS is not available offline)::

    inv_b = mean_pixels (G(z_b, c_b) - target_b)^2 + perceptual_weight * perceptual(G(z_b, c_b), target_b)

GIGS shifts (Kumar et al., PeerJ CS 2025), ``x_bi = G(base_z_b + shift_bi, c_b)`` for ``i < n``::

    shift_b = mean_i pref(x_bi) - diversity_weight_b * mean_{i != j} exp(-||f_bi - f_bj||^2 / sigma)

with ``f`` the variants' 8x8 average-pooled pixels (default) or their unit-normalised Phi features.
Relation to GIGS's code: GIGS trains a shift *predictor* with a cross-entropy loss (0.1 * CE) so
each shift is identifiable from the image change, plus an L1 term and the (mean over users)
preference, re-standardises z each step and clamps shifts to radius 0.5 (paper: eps 0.4).
Here the predictor is replaced by a differentiable, predictor-free stand-in for identifiability:
a pairwise RBF repulsion between the variants' features (it is 1 for identical variants, -> 0 as
they spread), so no extra network has to be trained or served. The radius constraint (projection
of each shift onto the L2 ball of radius eps) and any z re-standardisation are applied by the
optimiser in the service, not in the graph; the L1 term is subsumed by that projection.

Why pixels, and sigma = 0.01: a seller needs variants that *look* different. In Phi space (unit
vectors, sigma 0.5) the variants' distances were about 2e-4, the kernel sat at 1 and its gradient
(proportional to the distance) at 0: the term did nothing. The pooled-pixel distance is the mean
squared difference of 8x8 mean-pooled images (in [0, 4]); sigma = 0.01 makes variants closer than
an RMS difference of about 0.1 (5% of the [-1, 1] range) repel. Measured on 18 (group, product)
pairs of the quality models at radius 4, 40 steps, diversity weight 1 (SIMULATED shoppers): least
distinct pair 1 - SSIM 0.075 (median 0.23), positive mean shift for 100% of pairs, 90% of variants
judged in their category; Phi space, sigma 0.5: 0.048 (0.15), 100%, 93%; pixels, sigma 0.05: 0.030.
``diversity_space="phi"`` remains for variants meant to reach distinct audiences.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DEFAULT_DIVERSITY_SIGMA",
    "DEFAULT_DIVERSITY_SPACE",
    "DEFAULT_PERCEPTUAL_WEIGHT",
    "DEFAULT_REALISM_MARGIN",
    "DIVERSITY_SPACES",
    "InversionObjective",
    "PreferenceObjective",
    "ShiftObjective",
    "diversity_penalty",
    "preference_terms",
    "sample_realism_margin",
]

#: lambda of the inversion objective (MSE + lambda * perceptual); GIGS weights LPIPS 1:1 with MSE.
DEFAULT_PERCEPTUAL_WEIGHT = 1.0
#: Where the diversity penalty measures variants, and its RBF width on squared distances in [0, 4].
DEFAULT_DIVERSITY_SPACE = "pixels"
DEFAULT_DIVERSITY_SIGMA = 0.01
DIVERSITY_SPACES = ("phi", "pixels")
#: Realism margin when none is measured (the hinge loss's margin for real items).
DEFAULT_REALISM_MARGIN = 1.0
_EPS = 1e-8


def preference_terms(
    generator: nn.Module,
    discriminator: nn.Module,
    encoder: nn.Module,
    z: torch.Tensor,
    category: torch.Tensor,
    theta: torch.Tensor,
    realism_weight: torch.Tensor,
    realism_margin: float = DEFAULT_REALISM_MARGIN,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(pref (B,), Phi (B,K), image (B,3,S,S), realism D (B,))`` for latent codes ``z`` and one user
    vector per row ``theta (B,K)``."""
    image = generator(z, category)
    phi = encoder(image)
    realism = discriminator(image, category).reshape(-1)
    pref = (phi * theta).sum(dim=1) - realism_weight.reshape(-1) * F.relu(realism_margin - realism) ** 2
    return pref, phi, image, realism


@torch.no_grad()
def sample_realism_margin(
    generator: nn.Module,
    discriminator: nn.Module,
    n_categories: int,
    z_dim: int,
    n: int = 3000,
    seed: int = 20_171_118,
) -> float:
    """Median ``D(G(z, c))`` over ``n`` prior samples, categories in turn: the realism of a typical sample.

    Its own seed: a latent drawn with another stream (e.g. an optimiser's start) never sits exactly on
    the penalty's kink."""
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(n, z_dim, generator=g) * 2.0 - 1.0
    category = F.one_hot(torch.arange(n) % n_categories, n_categories).float()
    realism = torch.cat(
        [
            discriminator(generator(z[i : i + 500], category[i : i + 500]), category[i : i + 500])
            for i in range(0, n, 500)
        ]
    )
    return float(np.median(realism.reshape(-1).double().numpy()))


def diversity_penalty(features: torch.Tensor, sigma: float) -> torch.Tensor:
    """``mean_{i != j} exp(-||f_i - f_j||^2 / sigma)`` per sample for features (B, n, F); 0 when n = 1.

    The mean over ordered pairs ``i != j`` equals the mean over ``i < j`` (the kernel is symmetric);
    the off-diagonal mask is built from ``arange(n)`` so ``n`` can stay a dynamic axis.
    """
    n = features.shape[1]
    diff = features.unsqueeze(2) - features.unsqueeze(1)  # (B, n, n, F); exactly 0 on the diagonal
    kernel = torch.exp(-diff.pow(2).sum(dim=-1) / sigma)
    idx = torch.arange(n, device=features.device)
    mask = (idx.unsqueeze(0) != idx.unsqueeze(1)).to(features.dtype)
    return (kernel * mask).sum(dim=(1, 2)) / mask.sum().clamp_min(1.0)


class PreferenceObjective(nn.Module):
    """``forward(z, category, theta, realism_weight) -> (value, phi, image, realism)``.

    Shapes: z (B,Dz), category (B,C), theta (B,K) one user vector per row, realism_weight (B,1) ->
    value (B,), phi (B,K) = Phi(G(z_b)), image (B,3,S,S), realism (B,) = D(G(z_b)).
    """

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        encoder: nn.Module,
        *,
        realism_margin: float = DEFAULT_REALISM_MARGIN,
    ) -> None:
        super().__init__()
        self.generator, self.discriminator, self.encoder = generator, discriminator, encoder
        self.realism_margin = float(realism_margin)
        self.eval()

    def forward(
        self,
        z: torch.Tensor,
        category: torch.Tensor,
        theta: torch.Tensor,
        realism_weight: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        pref, phi, image, realism = preference_terms(
            self.generator, self.discriminator, self.encoder, z, category, theta, realism_weight, self.realism_margin
        )
        return pref, phi, image, realism


class InversionObjective(nn.Module):
    """``forward(z, category, target) -> (value, image)``; value (B,) = MSE + lambda * perceptual."""

    def __init__(
        self, generator: nn.Module, perceptual: nn.Module, perceptual_weight: float = DEFAULT_PERCEPTUAL_WEIGHT
    ) -> None:
        super().__init__()
        self.generator, self.perceptual = generator, perceptual
        self.perceptual_weight = float(perceptual_weight)
        self.eval()

    def forward(self, z: torch.Tensor, category: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
        image = self.generator(z, category)
        mse = (image - target).pow(2).mean(dim=(1, 2, 3))
        value = mse + self.perceptual_weight * self.perceptual(image, target).reshape(-1)
        return value, image


class ShiftObjective(nn.Module):
    """GIGS shift objective: ``forward(base_z, shifts, category, theta, weights)``.

    Shapes: base_z (B,Dz), shifts (B,n,Dz), category (B,C), theta (B,K) one user vector per row,
    weights (B,2) = (diversity_weight, realism_weight) -> value (B,), images (B,n,3,S,S),
    pref (B,n) per-variant preference, diversity (B,) the (unweighted) penalty. The diversity term
    couples the n variants of a row, never two rows.
    """

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        encoder: nn.Module,
        *,
        sigma: float = DEFAULT_DIVERSITY_SIGMA,
        diversity_space: str = DEFAULT_DIVERSITY_SPACE,
        realism_margin: float = DEFAULT_REALISM_MARGIN,
    ) -> None:
        super().__init__()
        if diversity_space not in DIVERSITY_SPACES:
            raise ValueError(f"diversity_space must be one of {DIVERSITY_SPACES}, got {diversity_space!r}")
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.generator, self.discriminator, self.encoder = generator, discriminator, encoder
        self.sigma = float(sigma)
        self.diversity_space = diversity_space
        self.realism_margin = float(realism_margin)
        self.eval()

    def forward(
        self,
        base_z: torch.Tensor,
        shifts: torch.Tensor,
        category: torch.Tensor,
        theta: torch.Tensor,
        weights: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        b, n, dz = shifts.shape
        z = (base_z.unsqueeze(1) + shifts).reshape(b * n, dz)

        def rep(t: torch.Tensor) -> torch.Tensor:  # (B, X) -> (B*n, X), variant-major within a sample
            return t.unsqueeze(1).expand(b, n, t.shape[1]).reshape(b * n, t.shape[1])

        pref, phi, image, _ = preference_terms(
            self.generator,
            self.discriminator,
            self.encoder,
            z,
            rep(category),
            rep(theta),
            rep(weights[:, 1:2]),
            self.realism_margin,
        )
        if self.diversity_space == "phi":
            feats = phi / torch.sqrt(phi.pow(2).sum(dim=1, keepdim=True) + _EPS)
        else:
            pooled = F.adaptive_avg_pool2d(image, 8)
            feats = pooled.reshape(b * n, -1) / (pooled.shape[1] * 64) ** 0.5  # mean squared difference
        div = diversity_penalty(feats.reshape(b, n, -1), self.sigma)
        pref = pref.reshape(b, n)
        value = pref.mean(dim=1) - weights[:, 0] * div
        images = image.reshape(b, n, image.shape[1], image.shape[2], image.shape[3])
        return value, images, pref, div
