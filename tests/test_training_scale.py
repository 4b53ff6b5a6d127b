"""Training that scales: streamed batches from a memory-mapped store, resume after a crash, early
stopping, seeds in the metrics, DistributedDataParallel on 2 CPU processes (gloo), bounded memory."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from couturier.export.data.interactions import Interactions
from couturier.export.training.common import images_to_tensor
from couturier.export.training.distributed import DistEnv, shard
from couturier.export.training.loaders import ImageRows, gather_rows, map_chunks, stream_batches, to_model_input
from couturier.export.training.precision import resolve_precision
from couturier.export.training.profiles import DvbprProfile, GanProfile, dvbpr_profile, gan_profile
from couturier.export.training.resume import RESUME, load_resume

TESTS = Path(__file__).resolve().parent


@dataclass
class TinyCatalogue:
    images: np.ndarray
    category: np.ndarray
    category_names: tuple[str, ...] = ("red", "blue")


@dataclass
class TinyWorld:
    catalogue: TinyCatalogue
    interactions: Interactions
    heldout: TinyCatalogue | None = None
    extras: dict[str, object] = field(default_factory=dict)


def write_store(path: Path, images: np.ndarray) -> np.ndarray:
    """``images`` written as a raw uint8 file and opened read-only, as a dataset folder's images are."""
    out = np.memmap(path, dtype=np.uint8, mode="w+", shape=images.shape)
    out[:] = images
    out.flush()
    del out
    return np.memmap(path, dtype=np.uint8, mode="r", shape=images.shape)


def tiny_world(folder: Path, n_items: int = 60, n_users: int = 24, seed: int = 0) -> TinyWorld:
    """Red and blue noisy squares in a read-only memmap; even users buy red, odd users blue."""
    rng = np.random.default_rng(seed)
    colour = np.arange(n_items) % 2
    imgs = np.full((n_items, 32, 32, 3), 255, np.uint8)
    rgb = np.array([[200, 30, 40], [45, 105, 215]])
    for i in range(n_items):
        y, x = rng.integers(2, 14, size=2)
        imgs[i, y : y + 16, x : x + 16] = np.clip(rgb[colour[i]] + rng.integers(-20, 20, 3), 0, 255)
    cold, warm = np.arange(n_items - 12, n_items), np.arange(n_items - 12)
    train, val, test = [], [], []
    for u in range(n_users):
        train.append(np.sort(rng.choice(warm[colour[warm] == u % 2], size=8, replace=False)))
        v, t = rng.choice(cold[colour[cold] == u % 2], size=2, replace=False)
        val.append(v)
        test.append(t)
    inter = Interactions(
        n_users, n_items, np.array([f"u{u}" for u in range(n_users)]), train, np.array(val), np.array(test)
    )
    folder.mkdir(parents=True, exist_ok=True)
    store = write_store(folder / "images_32.u8", imgs)
    return TinyWorld(TinyCatalogue(store, colour.astype(np.int64)), inter)


def tiny_dvbpr(**overrides: object) -> DvbprProfile:
    settings: dict[str, object] = dict(
        epochs=3, batch_size=32, lr=1e-2, k=8, channels=(4, 8, 8), hidden=16, n_negatives=20, bprmf_epochs=1
    )
    settings.update(max_seconds=None, lambda_theta=1e-3, checkpoint_every=2, threads=1)
    settings.update(overrides)
    return dvbpr_profile("demo", **settings)  # type: ignore[arg-type]


def tiny_gan(**overrides: object) -> GanProfile:
    settings: dict[str, object] = dict(steps=8, batch_size=16, z_dim=8, g_channels=(8, 8, 4), d_channels=(4, 8, 8))
    settings.update(max_seconds=None, checkpoint_every=3, ema_start=2, threads=1)
    settings.update(overrides)
    return gan_profile("demo", **settings)  # type: ignore[arg-type]


class Crash(RuntimeError):
    """Stands for the process dying at a given step."""


def crash_at(step: int) -> Callable[[int], None]:
    def hook(done: int) -> None:
        if done == step:
            raise Crash(f"crashed after step {done}")

    return hook


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ---------------------------------------------------------------- streamed batches


def test_streamed_batches_are_the_rows_converted_one_batch_at_a_time(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(50, 8, 8, 3), dtype=np.uint8)
    store = write_store(tmp_path / "images_8.u8", images)
    assert not store.flags.writeable
    index = [np.array([7, 3, 3, 40]), np.array([49]), np.arange(10)]
    whole = images_to_tensor(images)  # the old way: the whole catalogue as floats
    for workers in (0, 2):
        got = list(stream_batches(store, index, torch.device("cpu"), workers=workers))
        assert len(got) == len(index)
        for idx, x in zip(index, got, strict=True):
            assert x.dtype == torch.float32 and x.shape == (len(idx), 3, 8, 8)
            assert torch.equal(x, whole[torch.from_numpy(idx)])
    assert gather_rows(store, [2, 1]).flags.writeable  # a copy: the store itself is never written
    assert to_model_input(images[:1]).min() >= -1 and to_model_input(images[:1]).max() <= 1
    chunks = map_chunks(lambda x: x.mean(dim=(1, 2, 3)), store, torch.device("cpu"), chunk=16)
    np.testing.assert_allclose(chunks, whole.mean(dim=(1, 2, 3)).numpy(), rtol=1e-6)


def test_a_worker_reopens_the_memory_map_instead_of_pickling_the_catalogue(tmp_path: Path) -> None:
    images = np.random.default_rng(1).integers(0, 256, size=(400, 16, 16, 3), dtype=np.uint8)
    rows = ImageRows(write_store(tmp_path / "images_16.u8", images))
    blob = pickle.dumps(rows)
    assert len(blob) < images.nbytes / 20  # the file's name, not its 300 KB
    again = pickle.loads(blob)
    assert torch.equal(again[np.array([5, 399])], torch.from_numpy(images[[5, 399]]))
    in_memory = pickle.loads(pickle.dumps(ImageRows(images[:4])))
    assert torch.equal(in_memory[np.array([3])], torch.from_numpy(images[[3]]))


def test_shards_split_a_global_batch_between_ranks() -> None:
    parts = [shard(7, DistEnv(rank, 2)) for rank in (0, 1)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(7))
    assert shard(1, DistEnv(1, 2)).tolist() == [0]  # never an empty batch
    assert shard(5, DistEnv()).tolist() == list(range(5))


def test_mixed_precision_is_off_on_the_cpu_unless_asked() -> None:
    cpu = torch.device("cpu")
    assert not resolve_precision(None, "bfloat16", cpu).enabled
    assert resolve_precision(True, "bfloat16", cpu).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="float16 needs a CUDA device"):
        resolve_precision(True, "float16", cpu)
    with pytest.raises(ValueError, match="amp_dtype"):
        resolve_precision(True, "int8", cpu)
    scaler = resolve_precision(None, "bfloat16", cpu).scaler()
    assert not scaler.is_enabled()


# ---------------------------------------------------------------- resume, early stopping, seeds


@pytest.mark.integration
def test_dvbpr_resumed_after_a_crash_ends_with_the_uninterrupted_weights(tmp_path: Path) -> None:
    from couturier.export.training.train_dvbpr import train_dvbpr

    world = tiny_world(tmp_path / "data")
    prof = tiny_dvbpr()  # 192 pairs / 32 = 6 steps per epoch, 18 in all; resume.pt every 2 steps
    straight = train_dvbpr(world, tmp_path / "straight", prof, baselines=False, progress=False)
    with pytest.raises(Crash):
        train_dvbpr(world, tmp_path / "crashed", prof, baselines=False, progress=False, on_step=crash_at(9))
    assert not (tmp_path / "crashed" / "checkpoint.pt").exists()
    saved = load_resume(tmp_path / "crashed", prof.to_dict())
    assert saved is not None and saved["progress"]["step"] == 8 and saved["progress"]["batch"] == 2  # mid-epoch 2
    resumed = train_dvbpr(world, tmp_path / "crashed", prof, baselines=False, progress=False, resume=True)
    assert resumed.metrics["resumed_from_step"] == 8
    assert resumed.metrics["steps_done"] == straight.metrics["steps_done"] == 18
    assert_same_state(resumed.model.state_dict(), straight.model.state_dict())
    assert resumed.metrics["test_auc"] == straight.metrics["test_auc"]
    assert resumed.metrics["seeds"]["validation_negatives"] == prof.seed + 1
    # the served checkpoint keeps the format the loaders read
    from couturier.export.training.train_dvbpr import load_dvbpr

    assert_same_state(load_dvbpr(tmp_path / "crashed").state_dict(), straight.model.state_dict())


@pytest.mark.integration
def test_dvbpr_stops_early_when_validation_auc_stops_improving(tmp_path: Path) -> None:
    from couturier.export.training.train_dvbpr import train_dvbpr

    world = tiny_world(tmp_path / "data")
    # lr 0: the validation AUC never improves on the first epoch's, so patience 2 stops after epoch 3
    res = train_dvbpr(
        world, tmp_path / "run", tiny_dvbpr(epochs=10, lr=0.0, patience=2), baselines=False, progress=False
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["epochs_done"] == 3 and metrics["stopped_early"] and metrics["best_epoch"] == 1
    assert metrics["seeds"]["weights_and_bpr_sampler"] == 0 and metrics["profile"]["patience"] == 2
    assert res.metrics["steps_done"] == 18
    # a finished run resumed does not train again
    again = train_dvbpr(
        world, tmp_path / "run", tiny_dvbpr(epochs=10, lr=0.0, patience=2), baselines=False, progress=False, resume=True
    )
    assert again.metrics["resumed_from_step"] == 18 and again.metrics["epochs_done"] == 3


@pytest.mark.integration
def test_resume_refuses_a_state_saved_with_other_settings(tmp_path: Path) -> None:
    from couturier.export.training.train_dvbpr import train_dvbpr

    world = tiny_world(tmp_path / "data")
    with pytest.raises(Crash):
        train_dvbpr(world, tmp_path / "run", tiny_dvbpr(), baselines=False, progress=False, on_step=crash_at(3))
    with pytest.raises(ValueError, match=r"lr: 0\.01 -> 0\.05.*delete .*resume\.pt"):
        train_dvbpr(world, tmp_path / "run", tiny_dvbpr(lr=0.05), baselines=False, progress=False, resume=True)


@pytest.mark.integration
def test_gan_resumed_after_a_crash_ends_with_the_uninterrupted_weights(tmp_path: Path) -> None:
    from couturier.export.training.train_gan import train_gan

    world = tiny_world(tmp_path / "data")  # 60 items / 16 = 3 batches per permutation: crosses epochs
    prof = tiny_gan()
    straight = train_gan(world, tmp_path / "straight", prof, progress=False)
    with pytest.raises(Crash):
        train_gan(world, tmp_path / "crashed", prof, progress=False, on_step=crash_at(7))
    state = torch.load(tmp_path / "crashed" / RESUME, weights_only=False)
    assert state["step"] == 6 and {"generator_ema", "opt_d", "opt_g", "rng", "perm"} <= state.keys()
    resumed = train_gan(world, tmp_path / "crashed", prof, progress=False, resume=True)
    assert resumed.metrics["resumed_from_step"] == 6 and resumed.metrics["steps_done"] == 8
    assert_same_state(resumed.generator.state_dict(), straight.generator.state_dict())
    assert_same_state(resumed.discriminator.state_dict(), straight.discriminator.state_dict())
    assert resumed.metrics["final"] == straight.metrics["final"]
    assert straight.metrics["seeds"]["noise"] == prof.seed


@pytest.mark.integration
def test_infogan_and_synthtriplet_resume_where_they_crashed(tmp_path: Path) -> None:
    from couturier.export.training.data_access import synthetic_prepared
    from couturier.export.training.train_infogan import train_infogan
    from couturier.export.training.train_synthtriplet import train_synthtriplet

    prep = synthetic_prepared(n=48, n_heldout=12, size=16)
    ig = dict(steps=5, batch_size=16, g_channels=(16, 8, 8), d_channels=(8, 8, 16), max_seconds=None)
    ig.update(checkpoint_every=2, threads=1)
    straight = train_infogan(prep, tmp_path / "ig", "demo", **ig)
    with pytest.raises(Crash):
        train_infogan(prep, tmp_path / "ig-crashed", "demo", on_step=crash_at(3), **ig)
    resumed = train_infogan(prep, tmp_path / "ig-crashed", "demo", resume=True, **ig)
    assert resumed["resumed_from_step"] == 2 and resumed["steps_done"] == straight["steps_done"] == 5
    a, b = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=False) for d in ("ig", "ig-crashed"))
    assert_same_state(a["generator"], b["generator"])
    assert_same_state(a["discriminator"], b["discriminator"])

    def fake_text(texts: list[str]) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(0)
        return {t: rng.standard_normal(384).astype(np.float32) for t in sorted(set(texts))}

    st = dict(steps=4, batch_size=8, channels=(8, 8, 8), critic_channels=(8, 8, 8), max_seconds=None)
    st.update(checkpoint_every=2, threads=1, text_fn=fake_text)
    first = train_synthtriplet(prep, tmp_path / "st", tmp_path / "ig", "demo", **st)
    with pytest.raises(Crash):
        train_synthtriplet(prep, tmp_path / "st-crashed", tmp_path / "ig", "demo", on_step=crash_at(3), **st)
    again = train_synthtriplet(prep, tmp_path / "st-crashed", tmp_path / "ig", "demo", resume=True, **st)
    assert again["resumed_from_step"] == 2 and again["steps_done"] == first["steps_done"] == 4
    a, b = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=False) for d in ("st", "st-crashed"))
    assert_same_state(a["generator"], b["generator"])
    assert again["seeds"] == first["seeds"] and again["final"] == first["final"]


# ---------------------------------------------------------------- DistributedDataParallel


WORKER = """
import json, os, sys
from pathlib import Path

import torch

sys.path.insert(0, {tests!r})
from test_training_scale import tiny_dvbpr, tiny_gan, tiny_world

import couturier.export.training.train_dvbpr as train_module
from couturier.export.training import distributed
from couturier.export.training.train_dvbpr import train_dvbpr
from couturier.export.training.train_gan import train_gan

out = Path(sys.argv[1])
env = distributed.init_from_env(prefer_cuda=False)
saved = []
real_save = torch.save
def recording_save(obj, path, *args, **kwargs):
    if isinstance(path, (str, os.PathLike)):  # files (torch.distributed pickles objects into buffers too)
        saved.append(str(path))
    return real_save(obj, path, *args, **kwargs)


torch.save = recording_save
rows = []
stream = train_module.stream_batches
train_module.stream_batches = lambda images, index, *a, **k: (rows.extend(map(len, index)), stream(images, index, *a, **k))[1]
world = tiny_world(out / f"data{{env.rank}}")  # the same data on every rank (deterministic), its own files
dvbpr = train_dvbpr(world, out / "runs" / "dvbpr", tiny_dvbpr(epochs=1), baselines=False, progress=False)
gan = train_gan(world, out / "runs" / "gan", tiny_gan(steps=4), progress=False)
torch.save = real_save
torch.save(
    {{"dvbpr": dvbpr.model.state_dict(), "generator": dict(gan.generator.named_parameters())}},
    out / f"rank{{env.rank}}.pt",
)
(out / f"rank{{env.rank}}.json").write_text(
    json.dumps({{"rank": env.rank, "world_size": env.world_size, "saved": saved, "metrics": bool(dvbpr.metrics),
                "rows": sum(rows)}})
)
distributed.shutdown()
"""


@pytest.mark.integration
@pytest.mark.slow
def test_torchrun_two_cpu_processes_train_dvbpr_and_the_gan_in_lockstep(tmp_path: Path) -> None:
    from couturier.export.training.train_dvbpr import train_dvbpr

    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER.format(tests=str(TESTS))))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    done = subprocess.run([*cmd, str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-8000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["rank"] for r in ranks] == [0, 1]
    assert [r["rows"] for r in ranks] == [192, 192]  # DVBPR: half of 192 (user, bought, other) triples each
    # only rank 0 evaluated and wrote (resume.pt during training, checkpoint.pt at the end)
    assert not ranks[1]["saved"] and not ranks[1]["metrics"] and ranks[0]["metrics"]
    written = {Path(p).parent.name + "/" + Path(p).name.removesuffix(".tmp") for p in ranks[0]["saved"]}
    assert {"dvbpr/checkpoint.pt", "dvbpr/resume.pt", "gan/checkpoint.pt", "gan/resume.pt"} <= written
    metrics = json.loads((tmp_path / "runs" / "dvbpr" / "metrics.json").read_text())
    assert metrics["distributed"] == {"world_size": 2, "backend": "gloo"}
    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert_same_state(states[0]["dvbpr"], states[1]["dvbpr"])
    assert_same_state(states[0]["generator"], states[1]["generator"])
    # each rank trained on half of every global batch: 2 processes compute the 1-process run's steps
    single = train_dvbpr(
        tiny_world(tmp_path / "single"), tmp_path / "single-run", tiny_dvbpr(epochs=1), baselines=False, progress=False
    )
    for key, value in single.model.state_dict().items():
        torch.testing.assert_close(states[0]["dvbpr"][key], value, rtol=1e-3, atol=1e-4)


# ---------------------------------------------------------------- bounded memory


MEMORY_PROBE = """
import json, sys
from pathlib import Path

import numpy as np

sys.path.insert(0, {tests!r})
from test_training_scale import TinyCatalogue, TinyWorld, tiny_dvbpr

from couturier.export.data.interactions import Interactions
from couturier.export.training.train_dvbpr import train_dvbpr


def status(key):
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(key + ":"))
    return int(line.split()[1]) * 1024


def run(out, n, size):
    rng = np.random.default_rng(0)
    writer = np.memmap(out / f"images_{{n}}.u8", dtype=np.uint8, mode="w+", shape=(n, size, size, 3))
    for start in range(0, n, 4096):
        writer[start : start + 4096] = rng.integers(0, 256, size=writer[start : start + 4096].shape, dtype=np.uint8)
    writer.flush()
    del writer
    store = np.memmap(out / f"images_{{n}}.u8", dtype=np.uint8, mode="r", shape=(n, size, size, 3))
    users = 64
    train = [np.sort(rng.choice(n, 6, replace=False)) for _ in range(users)]
    val, test = rng.integers(0, n, users), rng.integers(0, n, users)
    inter = Interactions(users, n, np.arange(users).astype(str), train, val, test)
    world = TinyWorld(TinyCatalogue(store, np.zeros(n, np.int64)), inter)
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS
    before = status("VmRSS")
    train_dvbpr(world, out / f"run{{n}}", tiny_dvbpr(epochs=2, n_negatives=10), baselines=False, progress=False)
    return status("VmHWM") - before


out, n, size = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
run(out, 500, size)  # warm-up: torch's kernels, thread pools and allocator caches are not the catalogue's
print(json.dumps({{"growth": run(out, n, size)}}))
"""


@pytest.mark.integration
@pytest.mark.slow
def test_dvbpr_on_a_memory_mapped_catalogue_never_holds_it_as_floats(tmp_path: Path) -> None:
    """Peak RSS of a DVBPR run on 20,000 memory-mapped 32 px images grows by far less than the
    catalogue as float32 (235 MB; the old whole-catalogue tensor needed 2-3 times that): the page
    cache of the file (59 MB) plus batch-sized work (measured: 77 MB in all; 153 MB at 40,000)."""
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak RSS")
    n, size = 20_000, 32
    script = tmp_path / "probe.py"
    script.write_text(MEMORY_PROBE.format(tests=str(TESTS)))
    # a fixed mmap threshold makes glibc give freed batch buffers back at once, so RSS shows live memory
    # (by default it keeps up to ~64 MB of freed heap, whatever the catalogue size)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path), str(n), str(size)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    growth = json.loads(done.stdout.strip().splitlines()[-1])["growth"]
    as_floats, page_cache = n * size * size * 3 * 4, n * size * size * 3
    assert growth < page_cache + as_floats / 4, f"peak RSS grew {growth / 2**20:.0f} MiB"
