"""Recommender baselines evaluated like DVBPR: popularity and BPR-MF (Rendle et al. 2009).

VBPR on pretrained image features is not implemented (left out for time).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from couturier.export.training.bpr_sampler import BprSampler
from couturier.export.training.rec_eval import Scorer


def popularity_scorer(interactions: Any) -> Scorer:
    """Score = number of training purchases of the item (same for every user; cold items tie at 0)."""
    counts = np.bincount(interactions.train_pairs()[:, 1], minlength=interactions.n_items).astype(np.float32)
    return lambda users: np.broadcast_to(counts, (len(users), len(counts)))


@dataclass(frozen=True)
class BprMfConfig:
    """BPR-MF settings: Adam instead of the classic SGD; L2 on the batch's rows. Defaults were picked on
    the VALIDATION sampled AUC of the demo data (l2 in 1e-3..1, epochs 15..60; strong L2 matters with
    ~10 purchases per user); ``threads=1`` because tiny ops lose badly to thread contention."""

    k: int = 64
    epochs: int = 60
    batch_size: int = 1024
    lr: float = 3e-3
    l2: float = 3e-2
    seed: int = 0
    threads: int = 1


class BprMf(nn.Module):
    """x_ui = p_u . q_i + b_i."""

    def __init__(self, n_users: int, n_items: int, k: int) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.randn(n_users, k) * 0.01)
        self.q = nn.Parameter(torch.randn(n_items, k) * 0.01)
        self.b = nn.Parameter(torch.zeros(n_items))

    def forward(self, u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        return (self.p[u] * self.q[i]).sum(1) + self.b[i]

    def scorer(self) -> Scorer:
        """All-item scores for user batches."""
        p, q, b = (t.detach().cpu().numpy() for t in (self.p, self.q, self.b))
        return lambda users: p[users] @ q.T + b


def train_bpr_mf(interactions: Any, cfg: BprMfConfig = BprMfConfig()) -> tuple[BprMf, dict[str, Any]]:
    """Train BPR-MF on the training purchases; return the model and {loss curve, wall time}."""
    torch.manual_seed(cfg.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    model = BprMf(interactions.n_users, interactions.n_items, cfg.k)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sampler = BprSampler(interactions, seed=cfg.seed)
    losses: list[float] = []
    start = time.perf_counter()
    for _ in range(cfg.epochs):
        total, n = 0.0, 0
        for u, i, j in sampler.epoch(cfg.batch_size):
            u_t, i_t, j_t = (torch.from_numpy(a) for a in (u, i, j))
            x = model(u_t, i_t) - model(u_t, j_t)
            reg = model.p[u_t].pow(2).sum() + model.q[i_t].pow(2).sum() + model.q[j_t].pow(2).sum()
            loss = F.softplus(-x).mean() + cfg.l2 * reg / len(u)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, n = total + loss.item() * len(u), n + len(u)
        losses.append(total / n)
    torch.set_num_threads(threads)
    return model, {"config": asdict(cfg), "epoch_loss": losses, "train_wall_s": round(time.perf_counter() - start, 2)}
