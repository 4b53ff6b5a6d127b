"""Resolved model versions are reused for ``model_version_cache_s`` (services/common/inference.py):
one VersionCache behind both backends, counted with a fake lookup and aged by an injected clock."""

from __future__ import annotations

import pytest

from couturier.services.common.config import LatentSettings
from couturier.services.common.inference import (
    ModelNotReady,
    OnnxRuntimeBackend,
    TritonBackend,
    VersionCache,
    backend_for,
    model_check,
)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Lookups:
    """The backend's underlying lookup: counts calls, answers ``versions[model]`` or raises."""

    def __init__(self, **versions: str) -> None:
        self.versions = dict(versions)
        self.calls: list[tuple[str, str]] = []
        self.failing = False

    async def __call__(self, model: str, pinned: str) -> str:
        self.calls.append((model, pinned))
        if self.failing:
            raise ModelNotReady(f"model {model!r} is not ready")
        return pinned or self.versions[model]


async def test_answers_are_reused_until_the_ttl_passes() -> None:
    clock, lookup = Clock(), Lookups(pref_grad="3")
    cache = VersionCache(5.0, clock=clock)
    assert await cache.resolve("pref_grad", "", lookup) == "3"
    lookup.versions["pref_grad"] = "4"  # a new version is loaded
    clock.now += 4.9
    assert await cache.resolve("pref_grad", "", lookup) == "3"  # still cached
    assert len(lookup.calls) == 1
    clock.now += 0.1  # 5 s after the lookup: expired
    assert await cache.resolve("pref_grad", "", lookup) == "4"
    assert len(lookup.calls) == 2
    assert await cache.resolve("pref_grad", "", lookup) == "4"
    assert len(lookup.calls) == 2


async def test_entries_are_per_model_and_pin() -> None:
    clock, lookup = Clock(), Lookups(pref_grad="3", inv_grad="7")
    cache = VersionCache(5.0, clock=clock)
    for _ in range(3):
        assert await cache.resolve("pref_grad", "", lookup) == "3"
        assert await cache.resolve("pref_grad", "2", lookup) == "2"
        assert await cache.resolve("inv_grad", "", lookup) == "7"
    assert lookup.calls == [("pref_grad", ""), ("pref_grad", "2"), ("inv_grad", "")]


async def test_zero_ttl_asks_every_time() -> None:
    clock, lookup = Clock(), Lookups(pref_grad="3")
    cache = VersionCache(0.0, clock=clock)
    for _ in range(4):
        assert await cache.resolve("pref_grad", "", lookup) == "3"
    assert len(lookup.calls) == 4
    with pytest.raises(ValueError, match="ttl_s"):
        VersionCache(-1.0)


async def test_fresh_asks_and_refreshes_and_failures_are_not_kept() -> None:
    clock, lookup = Clock(), Lookups(pref_grad="3")
    cache = VersionCache(5.0, clock=clock)
    await cache.resolve("pref_grad", "", lookup)
    lookup.versions["pref_grad"] = "4"
    assert await cache.resolve("pref_grad", "", lookup, fresh=True) == "4"  # a health probe
    assert await cache.resolve("pref_grad", "", lookup) == "4"  # ... refreshed the cache
    assert len(lookup.calls) == 2
    lookup.failing = True
    with pytest.raises(ModelNotReady):
        await cache.resolve("pref_grad", "", lookup, fresh=True)
    lookup.failing = False
    lookup.versions["pref_grad"] = "5"
    assert await cache.resolve("pref_grad", "", lookup) == "5"  # the failure dropped the entry
    assert len(lookup.calls) == 4


async def test_forget_drops_only_that_model() -> None:
    clock, lookup = Clock(), Lookups(pref_grad="3", inv_grad="7")
    cache = VersionCache(5.0, clock=clock)
    await cache.resolve("pref_grad", "", lookup)
    await cache.resolve("pref_grad", "2", lookup)
    await cache.resolve("inv_grad", "", lookup)
    cache.forget("pref_grad")
    await cache.resolve("pref_grad", "", lookup)
    await cache.resolve("pref_grad", "2", lookup)
    await cache.resolve("inv_grad", "", lookup)
    assert len(lookup.calls) == 5


@pytest.mark.parametrize("kind", ["triton", "onnxruntime"])
async def test_both_backends_resolve_through_the_cache(kind: str, tmp_path: object) -> None:
    """Each backend's resolve_version goes through its VersionCache; health probes always ask."""
    backend = (
        TritonBackend("127.0.0.1:1", version_cache_s=5.0)
        if kind == "triton"
        else OnnxRuntimeBackend(str(tmp_path), version_cache_s=5.0)
    )
    clock, lookup = Clock(), Lookups(pref_grad="3")
    backend.version_cache = VersionCache(5.0, clock=clock)
    backend._lookup_version = lookup  # type: ignore[method-assign]  # the round trips / file checks
    try:
        for _ in range(5):
            assert await backend.resolve_version("pref_grad") == "3"
        assert len(lookup.calls) == 1
        clock.now += 5.0
        assert await backend.resolve_version("pref_grad") == "3"
        assert len(lookup.calls) == 2
        probe = model_check(backend, "pref_grad")
        assert await probe.probe() == "pref_grad v3"  # health: never from the cache
        assert len(lookup.calls) == 3
    finally:
        await backend.close()


def test_services_get_the_ttl_from_their_settings(tmp_path: object) -> None:
    settings = LatentSettings(model_repository=str(tmp_path), model_version_cache_s=2.5)
    assert settings.model_version_cache_s == 2.5
    assert backend_for(settings).version_cache.ttl_s == 2.5  # type: ignore[attr-defined]
    assert LatentSettings().model_version_cache_s > 0  # on by default (a few seconds)
    assert backend_for(LatentSettings(model_version_cache_s=0)).version_cache.ttl_s == 0  # type: ignore[attr-defined]
