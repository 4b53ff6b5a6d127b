"""`couturier train --max-seconds`: one wall-clock cap for every network (the GPU check's brief run)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from couturier.export.pipeline import NETWORKS, TINY_OVERRIDES, capped
from couturier.export.training.profiles import dvbpr_profile, gan_profile, infogan_profile, synthtriplet_profile


def test_cap_reaches_every_networks_profile_and_keeps_other_overrides() -> None:
    overrides = capped(TINY_OVERRIDES, 42.0)
    assert set(overrides) == set(NETWORKS)
    factories = {
        "dvbpr": dvbpr_profile,
        "gan": gan_profile,
        "infogan": infogan_profile,
        "synthtriplet": synthtriplet_profile,
    }
    for net, factory in factories.items():
        profile = factory("full", **overrides[net])
        assert profile.max_seconds == 42.0, net
        for key, value in TINY_OVERRIDES.get(net, {}).items():
            if key != "max_seconds":
                assert getattr(profile, key) == value, (net, key)
    assert capped(TINY_OVERRIDES, None) == {net: dict(TINY_OVERRIDES.get(net, {})) for net in NETWORKS}
    with pytest.raises(ValueError, match="max_seconds"):
        capped({}, 0.0)


def test_distributed_training_passes_the_cap_to_every_process(monkeypatch: pytest.MonkeyPatch) -> None:
    from couturier.export.cli import _train_distributed

    seen: list[list[str]] = []
    monkeypatch.setattr(subprocess, "call", lambda args: seen.append(list(args)) or 0)
    _train_distributed(2, "full", Path("runs"), None, None, None, [], False, 90.0)
    args = seen[0]
    assert args[args.index("--max-seconds") + 1] == "90.0"
    assert "--nproc_per_node=2" in args
