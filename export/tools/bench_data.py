"""``couturier bench data``: import and training throughput, and peak memory, on a generated shop.

1. **A shop table** of ``n`` products is generated once into a work folder (reused while its marker,
   ``generated.json``, matches ``n`` and the seed): photo-like JPEGs of varied sizes (128-256 px a side,
   a silhouette per category on white, coloured and shaded, with sensor noise), six categories, a
   ``colour`` and a ``price`` attribute, and for each catalogue size ``m`` a products table of the first
   ``m`` products with ``m / 10`` users buying ~8 of them each, with timestamps.
2. **Import**: ``import_table`` of each size at ``image_size`` px in a child process; wall seconds,
   images/s, peak RSS of the importing process (its own ``VmHWM``) and of its image-decoding workers
   (grandchildren: sampled from ``/proc`` every 0.1 s, as the peak RSS of the whole process tree).
3. **Opening**: ``open_dataset(dir, image_size=...)`` once per size in a child process; it builds the
   dataset's derived catalogue copy (held-out products left out) in the cache, as ``couturier train``
   does on first use. Measured separately so the training figures are training's own.
4. **Training**, one child process per network and size, demo profile (the 2-core CPU settings): DVBPR
   for one epoch or ``dvbpr_seconds`` (whichever ends first) then its evaluation over the whole
   catalogue, and the conditional GAN for ``gan_steps`` steps. Training images/s counts the images
   through the network per step (DVBPR: positive + negative per triple; GAN: the real images) over
   full steps after a warm-up; peak RSS is the training process's ``VmHWM`` (its image store is a
   memory map: pages read count in RSS, and the sampled peak of file-backed vs anonymous RSS is given,
   as are the sampled peaks during the steps and after them).

Every measurement also records the CPU time of its process tree over its wall time ("cores used") and
the load average before it: on a shared machine that says how much of the cores it actually got.
glibc keeps freed heap blocks, so the anonymous RSS of a long evaluation can wander by hundreds of MB
between identical runs; ``malloc_mmap_threshold`` (e.g. 65536) runs training with a fixed mmap
threshold, whose RSS is then live memory only (and whose steps are slower).

The results go to ``bench_data.json`` and ``bench_data.md`` with the machine's description and the
targets of issue 9 (import >= 1,000 images/s; peak training RSS under 3 GB and independent of the
catalogue size). The measuring process shares the cores with what it measures.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from couturier.export.data.errors import DataError

#: Targets of issue 9 item 7 (on the 2-core machine).
IMPORT_TARGET_IMAGES_PER_S = 1000.0
TRAINING_RSS_TARGET_BYTES = 3_000_000_000  # 3 GB (decimal: stricter than 3 GiB)
#: Allowed growth of peak training RSS from the smallest to the largest catalogue, beyond the growth of
#: the image store itself (whose pages a memory map may hold): this share of the smaller peak.
RSS_GROWTH_TOLERANCE = 0.10

GENERATOR_VERSION = 1
CATEGORIES = ("tops", "trousers", "dresses", "shoes", "bags", "hats")
COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (30, 30, 35),
    "white": (235, 235, 230),
    "grey": (128, 128, 128),
    "navy": (30, 45, 100),
    "blue": (50, 100, 200),
    "red": (190, 35, 45),
    "green": (40, 130, 70),
    "yellow": (230, 195, 50),
    "pink": (230, 140, 170),
    "brown": (120, 80, 45),
    "beige": (215, 195, 160),
    "purple": (110, 60, 150),
}
# Silhouettes in unit coordinates (x right, y down), one or more polygons per category.
_SHAPES: dict[str, list[list[tuple[float, float]]]] = {
    "tops": [
        [
            (0.30, 0.10),
            (0.42, 0.10),
            (0.50, 0.18),
            (0.58, 0.10),
            (0.70, 0.10),
            (0.95, 0.30),
            (0.85, 0.42),
            (0.75, 0.35),
            (0.75, 0.92),
            (0.25, 0.92),
            (0.25, 0.35),
            (0.15, 0.42),
            (0.05, 0.30),
        ]
    ],
    "trousers": [[(0.28, 0.05), (0.72, 0.05), (0.78, 0.95), (0.58, 0.95), (0.50, 0.35), (0.42, 0.95), (0.22, 0.95)]],
    "dresses": [[(0.40, 0.05), (0.60, 0.05), (0.62, 0.35), (0.88, 0.95), (0.12, 0.95), (0.38, 0.35)]],
    "shoes": [[(0.05, 0.50), (0.14, 0.40), (0.42, 0.42), (0.60, 0.58), (0.92, 0.66), (0.95, 0.80), (0.05, 0.80)]],
    "bags": [
        [(0.15, 0.38), (0.85, 0.38), (0.90, 0.92), (0.10, 0.92)],
        [
            (0.30, 0.38),
            (0.33, 0.15),
            (0.67, 0.15),
            (0.70, 0.38),
            (0.62, 0.38),
            (0.60, 0.22),
            (0.40, 0.22),
            (0.38, 0.38),
        ],
    ],
    "hats": [
        [(0.05, 0.70), (0.95, 0.70), (0.90, 0.80), (0.10, 0.80)],
        [(0.25, 0.72), (0.28, 0.35), (0.40, 0.22), (0.60, 0.22), (0.72, 0.35), (0.75, 0.72)],
    ],
}
_MARKER = "generated.json"
_GEN_CHUNK = 500


# -- the generated shop ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ShopTable:
    """The generated shop: ``n`` photos under ``folder/img`` and one products/interactions pair per size."""

    folder: Path
    n: int
    seed: int
    reused: bool
    wall_s: float
    image_bytes: int
    tables: dict[int, tuple[Path, Path]] = field(default_factory=dict)


def _attributes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Category code, colour code and price of products 0..n-1 (a prefix is the same for any larger n)."""
    rng = np.random.default_rng([seed, 1])
    categories = rng.integers(len(CATEGORIES), size=n)
    colours = rng.integers(len(COLOURS), size=n)
    prices = np.round(rng.lognormal(3.5, 0.6, size=n), 2)
    return categories, colours, prices


def _image_name(i: int) -> str:
    return f"img/{i // 1000:03d}/{i:06d}.jpg"


def product_photo(index: int, category: int, colour: int, seed: int) -> bytes:
    """A JPEG product photo: the category's silhouette in the colour, shaded, on white, with noise."""
    import io

    from PIL import Image, ImageDraw

    rng = np.random.default_rng([seed, 2, index])
    width, height = (int(v) for v in rng.integers(128, 257, size=2))
    side = min(width, height) * rng.uniform(0.75, 0.95)
    x0 = (width - side) / 2 + rng.uniform(-0.05, 0.05) * width
    y0 = (height - side) / 2 + rng.uniform(-0.05, 0.05) * height
    flip = rng.random() < 0.5
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    for polygon in _SHAPES[CATEGORIES[category]]:
        draw.polygon([(x0 + side * ((1 - x) if flip else x), y0 + side * y) for x, y in polygon], fill=255)
    alpha = np.asarray(mask, dtype=np.float32)[..., None] / 255.0
    rgb = np.clip(np.array(list(COLOURS.values())[colour], np.float32) + rng.normal(0, 12, 3), 0, 255)
    # light from the upper left: a gradient across the item, and a pattern on some items (stripes)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    shade = 1.1 - 0.25 * (xx / width + yy / height)
    if rng.random() < 0.3:
        period = rng.uniform(6, 16)
        shade = shade * (1.0 - 0.18 * (np.sin(yy * 2 * np.pi / period) > 0.6))
    item = rgb[None, None, :] * shade[..., None]
    picture = alpha * item + (1.0 - alpha) * 250.0
    picture += rng.normal(0, 3.0, size=picture.shape).astype(np.float32)  # sensor noise
    out = io.BytesIO()
    Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8), "RGB").save(
        out, format="JPEG", quality=int(rng.integers(85, 96))
    )
    return out.getvalue()


def _write_photos(folder: str, start: int, stop: int, seed: int, categories: list[int], colours: list[int]) -> int:
    written = 0
    for k, i in enumerate(range(start, stop)):
        path = Path(folder) / _image_name(i)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = product_photo(i, categories[k], colours[k], seed)
        path.write_bytes(data)
        written += len(data)
    return written


def _write_tables(
    folder: Path, m: int, seed: int, categories: np.ndarray, colours: np.ndarray, prices: np.ndarray
) -> tuple[Path, Path]:
    """``products_<m>.csv`` (the first m products) and ``interactions_<m>.csv`` (m / 10 users)."""
    names = list(COLOURS)
    products, interactions = folder / f"products_{m}.csv", folder / f"interactions_{m}.csv"
    with products.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["product_id", "image", "category", "colour", "price"])
        for i in range(m):
            writer.writerow([f"SKU-{i:06d}", _image_name(i), CATEGORIES[categories[i]], names[colours[i]], prices[i]])
    rng = np.random.default_rng([seed, 3, m])
    by_category = [rng.permutation(np.flatnonzero(categories[:m] == c)) for c in range(len(CATEGORIES))]
    everything = rng.permutation(m)
    with interactions.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["user_id", "product_id", "timestamp"])
        for u in range(max(1, m // 10)):
            favourite = by_category[int(rng.integers(len(CATEGORIES)))]
            count = 3 + int(rng.poisson(5))
            stamps = np.sort(1_700_000_000 + rng.integers(0, 365 * 86_400, size=count))
            for t in stamps:
                pool = favourite if len(favourite) and rng.random() < 0.7 else everything
                i = int(pool[int(len(pool) * rng.random() ** 2)])  # skewed popularity: the pool's head sells more
                writer.writerow([f"U{u:06d}", f"SKU-{i:06d}", int(t)])
    return products, interactions


def generate_shop(
    folder: Path,
    n: int,
    sizes: Sequence[int],
    *,
    seed: int = 0,
    workers: int = 2,
    regenerate: bool = False,
    echo: Callable[[str], None] = print,
) -> ShopTable:
    """The shop's photos (reused when ``generated.json`` matches) and one table pair per size."""
    marker = {"generator": GENERATOR_VERSION, "n": n, "seed": seed}
    marker_path = folder / _MARKER
    reused = False
    started = time.perf_counter()
    try:
        previous = json.loads(marker_path.read_text())
    except (OSError, ValueError):
        previous = None
    categories, colours, prices = _attributes(n, seed)
    if not regenerate and isinstance(previous, dict) and {k: previous.get(k) for k in marker} == marker:
        reused = True
        image_bytes = int(previous.get("image_bytes", 0))
        echo(f"shop table: reusing {n:,} generated photos in {folder}")
    else:
        shutil.rmtree(folder / "img", ignore_errors=True)
        marker_path.unlink(missing_ok=True)
        folder.mkdir(parents=True, exist_ok=True)
        echo(f"shop table: generating {n:,} product photos into {folder} ({workers} processes)")
        spans = [(s, min(n, s + _GEN_CHUNK)) for s in range(0, n, _GEN_CHUNK)]
        args = [(str(folder), a, b, seed, categories[a:b].tolist(), colours[a:b].tolist()) for a, b in spans]
        if workers > 1 and len(spans) > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                image_bytes = sum(pool.map(_write_photos, *zip(*args)))
        else:
            image_bytes = sum(_write_photos(*a) for a in args)
        marker_path.write_text(json.dumps({**marker, "image_bytes": image_bytes}, indent=2) + "\n")
    tables = {m: _write_tables(folder, m, seed, categories, colours, prices) for m in sizes}
    return ShopTable(folder, n, seed, reused, round(time.perf_counter() - started, 2), image_bytes, tables)


# -- child processes and their memory ---------------------------------------------------------------


def _status(pid: int | str) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of a process in bytes ({} when it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


def _cpu_ticks(pid: int) -> int:
    """User + system CPU time of a process so far, in clock ticks (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)


def _descendants(root: int) -> list[int]:
    """Every live descendant of ``root`` (by parent pid, from /proc/*/stat)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    out, stack = [], [root]
    while stack:
        for child in parents.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


class TreeWatch(threading.Thread):
    """Samples the memory and CPU time of a process and its descendants every ``interval`` s until stopped."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self._stop_event = threading.Event()
        self.root: dict[str, int] = {}  # peak of each field of the root process
        self.others: dict[int, int] = {}  # pid -> largest VmHWM seen
        self.tree_peak = 0  # largest sum of VmRSS over the tree at one sample
        self.samples = 0
        self.series: list[tuple[float, int, int]] = []  # (time.monotonic(), VmRSS, RssAnon) of the root
        self.cpu: dict[int, int] = {}  # pid -> CPU ticks last seen

    def sample(self) -> None:
        now = time.monotonic()
        root = _status(self.pid)
        if root:
            self.series.append((now, root.get("VmRSS", 0), root.get("RssAnon", 0)))
        for key, value in root.items():
            self.root[key] = max(self.root.get(key, 0), value)
        total = root.get("VmRSS", 0)
        descendants = _descendants(self.pid)
        for pid in descendants:
            status = _status(pid)
            if status:
                self.others[pid] = max(self.others.get(pid, 0), status.get("VmHWM", 0))
                total += status.get("VmRSS", 0)
        for pid in [self.pid, *descendants]:
            self.cpu[pid] = max(self.cpu.get(pid, 0), _cpu_ticks(pid))
        self.tree_peak = max(self.tree_peak, total)
        self.samples += 1

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def phase_peaks(self, start: float, end: float, finished: float) -> dict[str, int]:
        """Sampled peak RSS (and anonymous RSS) of the root during [start, end] and during (end, finished]."""
        steps = [(rss, anon) for t, rss, anon in self.series if start <= t <= end]
        after = [(rss, anon) for t, rss, anon in self.series if end < t <= finished]
        return {
            "sampled_peak_rss_steps_bytes": max((r for r, _ in steps), default=0),
            "sampled_peak_rss_anon_steps_bytes": max((a for _, a in steps), default=0),
            "sampled_peak_rss_after_steps_bytes": max((r for r, _ in after), default=0),
            "sampled_peak_rss_anon_after_steps_bytes": max((a for _, a in after), default=0),
        }

    def cpu_seconds(self, root_cpu_s: float = 0.0) -> float:
        """CPU seconds of the tree: the root's own figure (``root_cpu_s``, exact) or as sampled, plus the
        descendants' as last sampled (their last 0.1 s may be missed)."""
        tick = os.sysconf("SC_CLK_TCK")
        others = sum(v for pid, v in self.cpu.items() if pid != self.pid) / tick
        return max(root_cpu_s, self.cpu.get(self.pid, 0) / tick) + others

    def summary(self) -> dict[str, Any]:
        return {
            "sampled_peak_rss_anon_bytes": self.root.get("RssAnon", 0),
            "sampled_peak_rss_file_bytes": self.root.get("RssFile", 0),
            "child_processes_seen": len(self.others),
            "child_processes_peak_rss_max_bytes": max(self.others.values(), default=0),
            "tree_peak_rss_sum_bytes": self.tree_peak,
            "memory_samples": self.samples,
        }


def run_child(
    task: Mapping[str, Any], folder: Path, name: str, extra_env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Run one measurement (:func:`child_main`) in a fresh Python process; its figures plus the watch's:
    memory peaks, the CPU seconds of its process tree and how many cores that was on average."""
    folder.mkdir(parents=True, exist_ok=True)
    task_path, result_path, log_path = (folder / f"{name}.{ext}" for ext in ("task.json", "result.json", "log"))
    task_path.write_text(json.dumps(task, indent=2, default=str))
    result_path.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "couturier.export.tools.bench_data", str(task_path), str(result_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        watch = TreeWatch(proc.pid)
        watch.start()
        try:
            code = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            watch.stop()
    wall = time.monotonic() - started
    if code != 0 or not result_path.is_file():
        tail = log_path.read_text(errors="replace")[-3000:]
        raise DataError(f"bench data: the {name} measurement failed (exit {code}; log {log_path}):\n{tail}")
    result = json.loads(result_path.read_text())
    result.update(watch.summary())
    cpu_s = watch.cpu_seconds(result.pop("cpu_self_s", 0.0))
    result.update(
        process_wall_s=round(wall, 3),
        process_tree_cpu_s=round(cpu_s, 2),
        cores_used=round(cpu_s / wall, 2) if wall > 0 else None,
        loadavg_1min_before=round(load_before, 2),
    )
    phases = result.pop("phases_monotonic", None)
    if phases:
        result.update(watch.phase_peaks(*phases))
    return result


def _self_memory() -> dict[str, Any]:
    import resource

    status = _status("self")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "cpu_self_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_bytes": status.get("VmHWM", 0),
        "ru_maxrss_self_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "ru_maxrss_children_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
    }


def _step_rate(stamps: Sequence[float], images: Callable[[int], int], warmup: int) -> dict[str, Any]:
    """Images/s over the steps after the first ``warmup`` (all of them when no more are left).

    ``stamps``: the start, then the end of each step; ``images(k)``: images through the network in step k
    (0-based), so that a partial last batch counts what it held.
    """
    durations = np.diff(np.asarray(stamps, dtype=np.float64))
    first = warmup if len(durations) > warmup else 0
    measured = durations[first:]
    seconds = float(measured.sum())
    count = sum(images(k) for k in range(first, len(durations)))
    return {
        "steps": len(durations),
        "steps_measured": len(measured),
        "images_per_step": images(0) if len(durations) else 0,
        "s_per_step_median": round(float(np.median(measured)), 4) if len(measured) else None,
        "images_per_s": round(count / seconds, 1) if seconds > 0 else None,
    }


class _StopTraining(Exception):
    """Raised by the step callback to end a GAN run before its finalisation (``gan_finish`` off)."""


def _child_import(task: Mapping[str, Any]) -> dict[str, Any]:
    from couturier.export.data.importers import import_table

    started = time.perf_counter()
    out = import_table(
        task["products"],
        task["interactions"],
        task["out"],
        image_size=task["image_size"],
        force=True,
        progress=False,
        workers=task["workers"],
    )
    wall = time.perf_counter() - started
    manifest = json.loads((Path(out) / "dataset.json").read_text())
    n = int(manifest["counts"]["products"])
    return {
        "images": n,
        "wall_s": round(wall, 3),
        "images_per_s": round(n / wall, 1),
        "dataset_bytes": sum(p.stat().st_size for p in Path(out).iterdir() if p.is_file()),
        "counts": manifest["counts"],
    }


def _child_open(task: Mapping[str, Any]) -> dict[str, Any]:
    from couturier.export.data.dataset_folder import open_dataset

    started = time.perf_counter()
    ds = open_dataset(task["dataset"], image_size=task["image_size"], cache_dir=task["cache_dir"])
    wall = time.perf_counter() - started
    images = ds.catalogue.images
    return {
        "wall_s": round(wall, 3),
        "catalogue_images": len(images),
        "heldout_images": len(ds.heldout.images),
        "store_bytes": int(images.nbytes),
        "users": ds.interactions.n_users if ds.interactions is not None else 0,
    }


def _child_train(task: Mapping[str, Any]) -> dict[str, Any]:
    import torch

    from couturier.export.data.dataset_folder import open_dataset

    opened = time.monotonic()
    ds = open_dataset(task["dataset"], image_size=task["image_size"], cache_dir=task["cache_dir"])
    open_s = time.monotonic() - opened
    stamps: list[float] = []
    run_dir = Path(task["run_dir"])
    shutil.rmtree(run_dir, ignore_errors=True)
    started = time.monotonic()
    stamps.append(started)
    extra: dict[str, Any]
    if task["network"] == "dvbpr":
        from couturier.export.training.train_dvbpr import train_dvbpr

        result = train_dvbpr(
            ds,
            run_dir,
            "demo",
            baselines=False,
            progress=False,
            on_step=lambda step: stamps.append(time.monotonic()),
            epochs=1,
            max_seconds=task["dvbpr_seconds"],
            checkpoint_every=0,
        )
        batch = int(result.metrics["profile"]["batch_size"])
        pairs = len(ds.interactions.train_pairs())  # one epoch: every training pair once, in batches
        per_epoch = -(-pairs // batch)
        rate = _step_rate(
            stamps, lambda k: 2 * min(batch, pairs - (k % per_epoch) * batch), warmup=task["warmup_steps"]
        )
        extra = {
            "batch_size": batch,
            "stopped_by_max_seconds": result.metrics.get("stopped_by_max_seconds"),
            "test_auc": result.metrics.get("test_auc", {}).get("dvbpr", {}).get("sampled_auc"),
        }
    else:
        from couturier.export.training.profiles import gan_profile
        from couturier.export.training.train_gan import train_gan

        steps, finish = int(task["gan_steps"]), bool(task["gan_finish"])

        def on_step(step: int) -> None:
            stamps.append(time.monotonic())
            if step >= steps and not finish:
                raise _StopTraining

        prof = gan_profile("demo", steps=steps, max_seconds=task["gan_max_seconds"], checkpoint_every=0)
        try:
            metrics = train_gan(ds, run_dir, prof, progress=False, on_step=on_step).metrics
        except _StopTraining:
            metrics = {}
        per_step = min(prof.batch_size, len(ds.catalogue.images))
        rate = _step_rate(stamps, lambda k: per_step, warmup=task["warmup_steps"])
        extra = {
            "batch_size": prof.batch_size,
            "finalised": finish,
            "stopped_by_max_seconds": metrics.get("stopped_by_max_seconds"),
        }
    finished = time.monotonic()
    return {
        "network": task["network"],
        "catalogue_images": len(ds.catalogue.images),
        "store_bytes": int(ds.catalogue.images.nbytes),
        "open_s": round(open_s, 3),
        "loop_s": round(stamps[-1] - started, 3),
        "after_loop_s": round(finished - stamps[-1], 3),
        "train_call_s": round(finished - started, 3),
        "phases_monotonic": [started, stamps[-1], finished],  # steps, then evaluation/finalisation
        "torch_threads": torch.get_num_threads(),
        **rate,
        **extra,
    }


def child_main(task_path: str, result_path: str) -> None:
    """Run the task in ``task_path`` and write its figures (with this process's peak RSS) to ``result_path``."""
    task = json.loads(Path(task_path).read_text())
    kinds = {"import": _child_import, "open": _child_open, "train": _child_train}
    result = kinds[task["kind"]](task)
    result.update(_self_memory())
    Path(result_path).write_text(json.dumps(result, indent=2))


# -- the whole run ---------------------------------------------------------------------------------


@dataclass
class BenchDataOptions:
    out: Path = Path("runs/bench-data")
    work: Path | None = None  # default <out>/work
    n: int = 50_000
    sizes: tuple[int, ...] = ()  # catalogue sizes imported and trained on; default (10,000, n)
    image_size: int = 64
    seed: int = 0
    workers: int | None = None  # image-decoding processes of the import (default: the importer's)
    dvbpr_seconds: float = 60.0
    gan_steps: int = 100
    gan_max_seconds: float = 300.0
    # the GAN's finalisation after its steps (standing BatchNorm statistics over 50 x 256 samples, the
    # sample grid, metrics): part of training, so measured by default; off for quick smoke runs
    gan_finish: bool = True
    warmup_steps: int = 3
    # MALLOC_MMAP_THRESHOLD_ for the training processes (None: glibc's default, as `couturier train` runs):
    # a fixed threshold makes glibc return freed blocks at once, so RSS shows live memory only
    malloc_mmap_threshold: int | None = None
    repeats: int = 1
    regenerate: bool = False

    def catalogue_sizes(self) -> tuple[int, ...]:
        sizes = self.sizes or (min(10_000, self.n), self.n)
        return tuple(sorted({int(s) for s in sizes}))

    def work_dir(self) -> Path:
        return self.work if self.work is not None else self.out / "work"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def machine() -> dict[str, Any]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "memory_bytes": _mem_total(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }


def _median(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The first run's fields, numbers replaced by their median over ``runs``, plus the runs when several."""
    out = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
            out[key] = statistics.median(values)
    if len(runs) > 1:
        out["runs"] = list(runs)
    return out


def _verdicts(report: Mapping[str, Any], sizes: Sequence[int]) -> dict[str, Any]:
    largest, smallest = str(max(sizes)), str(min(sizes))
    rate = report["import"][largest]["images_per_s"]
    peaks = {
        f"{net}@{size}": int(report["training"][net][size]["peak_rss_bytes"])
        for net in report["training"]
        for size in report["training"][net]
    }
    worst = max(peaks, key=lambda k: peaks[k])
    independence: dict[str, Any] = {}
    for net, by_size in report["training"].items():
        small, large = by_size[smallest], by_size[largest]
        growth = int(large["peak_rss_bytes"]) - int(small["peak_rss_bytes"])
        store_growth = int(large["store_bytes"]) - int(small["store_bytes"])
        allowed = store_growth + RSS_GROWTH_TOLERANCE * int(small["peak_rss_bytes"])
        independence[net] = {
            "peak_rss_ratio": round(int(large["peak_rss_bytes"]) / max(1, int(small["peak_rss_bytes"])), 3),
            "peak_rss_anon_ratio": round(
                int(large["sampled_peak_rss_anon_bytes"]) / max(1, int(small["sampled_peak_rss_anon_bytes"])), 3
            ),
            "peak_rss_growth_bytes": growth,
            "store_growth_bytes": store_growth,
            "allowed_growth_bytes": int(allowed),
            "met": bool(growth <= allowed),
        }
    return {
        "import_images_per_s": {
            "target": f">= {IMPORT_TARGET_IMAGES_PER_S:,.0f} images/s at {int(largest):,} products",
            "measured": rate,
            "met": bool(rate >= IMPORT_TARGET_IMAGES_PER_S),
        },
        "training_peak_rss": {
            "target": f"< {TRAINING_RSS_TARGET_BYTES / 1e9:.0f} GB for every network and size",
            "measured_bytes": peaks[worst],
            "worst": worst,
            "met": bool(peaks[worst] < TRAINING_RSS_TARGET_BYTES),
        },
        "training_rss_independent_of_catalogue": {
            "target": (
                f"peak RSS at {int(largest):,} products grows over {int(smallest):,} by no more than the image store "
                f"grows (its pages are memory-mapped) plus {RSS_GROWTH_TOLERANCE:.0%} of the smaller peak"
            ),
            "per_network": independence,
            "met": bool(all(v["met"] for v in independence.values())) and len(sizes) > 1,
        },
    }


def bench_data(opts: BenchDataOptions, echo: Callable[[str], None] = print) -> tuple[Path, Path]:
    """Generate (or reuse) the shop, measure import, opening and training per size, write the report."""
    sizes = opts.catalogue_sizes()
    if max(sizes) > opts.n or min(sizes) < 20:
        raise DataError(f"catalogue sizes must lie between 20 and --n ({opts.n:,}); got {', '.join(map(str, sizes))}")
    if opts.repeats < 1:
        raise DataError("--repeats must be at least 1")
    work = opts.work_dir()
    report: dict[str, Any] = {
        "kind": "couturier bench data",
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": {**asdict(opts), "sizes": list(sizes), "work": str(work), "profile": "demo"},
        "machine": machine(),
    }
    from couturier.export.data.importers.decode_pool import default_workers

    workers = opts.workers if opts.workers is not None else default_workers()
    report["settings"]["workers"] = workers
    shop = generate_shop(
        work / "shop",
        opts.n,
        sizes,
        seed=opts.seed,
        workers=max(1, os.cpu_count() or 1),
        regenerate=opts.regenerate,
        echo=echo,
    )
    report["generation"] = {
        "products": shop.n,
        "reused": shop.reused,
        "wall_s": shop.wall_s,
        "jpeg_bytes": shop.image_bytes,
        "mean_jpeg_bytes": round(shop.image_bytes / max(1, shop.n)),
        "photo_sides_px": [128, 256],
        "categories": list(CATEGORIES),
        "colours": len(COLOURS),
        "interactions": {str(m): _count_rows(shop.tables[m][1]) for m in sizes},
    }
    logs = work / "logs"
    report["import"], report["open"] = {}, {}
    datasets = {m: work / "datasets" / f"shop-{m}" for m in sizes}
    for m in sizes:
        runs = []
        for r in range(opts.repeats):
            task = {
                "kind": "import",
                "products": str(shop.tables[m][0]),
                "interactions": str(shop.tables[m][1]),
                "out": str(datasets[m]),
                "image_size": opts.image_size,
                "workers": workers,
            }
            result = run_child(task, logs, f"import-{m}-{r}")
            echo(
                f"import {m:>7,} products: {result['wall_s']:7.1f} s  {result['images_per_s']:8.1f} images/s  "
                f"peak RSS importer {_mib(result['peak_rss_bytes'])}, decode workers {_mib(result['child_processes_peak_rss_max_bytes'])} "
                f"each (tree {_mib(result['tree_peak_rss_sum_bytes'])}); {result['cores_used']} cores used, "
                f"load {result['loadavg_1min_before']}"
            )
            runs.append(result)
        report["import"][str(m)] = _median(runs)
    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)  # a fresh import may have a new fingerprint: no stale copies
    for m in sizes:
        task = {"kind": "open", "dataset": str(datasets[m]), "image_size": opts.image_size, "cache_dir": str(cache)}
        result = run_child(task, logs, f"open-{m}")
        echo(
            f"open   {m:>7,} products: {result['wall_s']:7.1f} s  peak RSS {_mib(result['peak_rss_bytes'])} (builds the catalogue copy)"
        )
        report["open"][str(m)] = result
    report["training"] = {"dvbpr": {}, "gan": {}}
    training_env = (
        {"MALLOC_MMAP_THRESHOLD_": str(opts.malloc_mmap_threshold)} if opts.malloc_mmap_threshold is not None else None
    )
    for network in ("dvbpr", "gan"):
        for m in sizes:
            runs = []
            for r in range(opts.repeats):
                task = {
                    "kind": "train",
                    "network": network,
                    "dataset": str(datasets[m]),
                    "image_size": opts.image_size,
                    "cache_dir": str(cache),
                    "run_dir": str(work / "train" / f"{network}-{m}"),
                    "dvbpr_seconds": opts.dvbpr_seconds,
                    "gan_steps": opts.gan_steps,
                    "gan_max_seconds": opts.gan_max_seconds,
                    "gan_finish": opts.gan_finish,
                    "warmup_steps": opts.warmup_steps,
                }
                result = run_child(task, logs, f"train-{network}-{m}-{r}", extra_env=training_env)
                echo(
                    f"train  {network:<5} {m:>7,} products: {result['steps']:4d} steps  {result['images_per_s'] or 0:8.1f} images/s  "
                    f"peak RSS {_mib(result['peak_rss_bytes'])} (anon {_mib(result['sampled_peak_rss_anon_bytes'])}, "
                    f"file {_mib(result['sampled_peak_rss_file_bytes'])}; steps {_mib(result['sampled_peak_rss_steps_bytes'])}, "
                    f"after {_mib(result['sampled_peak_rss_after_steps_bytes'])})  loop {result['loop_s']:.0f} s + after "
                    f"{result['after_loop_s']:.0f} s; {result['cores_used']} cores used, load {result['loadavg_1min_before']}"
                )
                runs.append(result)
            report["training"][network][str(m)] = _median(runs)
    report["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    report["targets"] = _verdicts(report, sizes)
    report["notes"] = [
        "One machine: the generator, the measuring process (which samples /proc every 0.1 s) and what it measures "
        "share the same cores, and other jobs on the machine may too (load averages above).",
        "Import: the importer's own peak RSS is its VmHWM; its image-decoding workers are separate processes "
        "(forkserver children), whose peaks were sampled: the largest worker's, and the largest sum over the process "
        "tree at one sample (shared pages counted once per process, so an upper bound).",
        "Training: peak RSS is the training process's VmHWM (no loader workers: the demo profile uses 0). The image "
        "store is a read-only memory map, so the pages training reads count in its RSS (file-backed) and the kernel "
        "may drop them under memory pressure; anonymous RSS is the process's own memory.",
        "Anonymous and file-backed RSS and the peaks in and after the steps are sampled every 0.1 s; 'cores used' is "
        "the CPU time of the measured process tree over its wall time (of the machine's cores: less than the "
        "processes could use means other jobs took the rest), 'load before' the 1-minute load average before it.",
        "Training images/s counts images through the network per step over full steps after a warm-up: DVBPR 2 per "
        "triple (positive, negative), the GAN its real images; DVBPR's after-loop time is its validation and test "
        "evaluation over the whole catalogue, the GAN's its finalisation (standing BatchNorm statistics over 50 x 256 "
        "generated images, the sample grid, a nearest-neighbour check against 3,000 catalogue images).",
    ]
    return write_report(report, opts.out)


def _count_rows(path: Path) -> int:
    with path.open() as fh:
        return max(0, sum(1 for _ in fh) - 1)


def _mib(value: Any) -> str:
    return f"{int(value) / 2**20:,.0f} MiB"


def render_markdown(report: Mapping[str, Any]) -> str:
    m, s, t = report["machine"], report["settings"], report["targets"]
    sizes = [str(v) for v in s["sizes"]]
    yes = {True: "**met**", False: "**NOT met**"}
    lines = [
        "# couturier bench data",
        "",
        f"Generated shop of {s['n']:,} products at {s['image_size']} px, seed {s['seed']}; {report['created_utc']}.",
        "",
        f"- machine: {m['cpu_model']}, {m['cpu_count']} CPUs ({m['cpus_usable']} usable), "
        f"{m['memory_bytes'] / 2**30:.1f} GiB memory, {m['platform']}, Python {m['python']}",
        f"- load average before/after: {m['loadavg_before']} / {m.get('loadavg_after', '-')}",
        "- the measuring process and the measured ones share these cores (and other jobs may too)",
        f"- import: {s['workers']} image-decoding processes; training: demo profile, torch threads "
        f"{_first_training(report, 'torch_threads')}, DVBPR one epoch or {s['dvbpr_seconds']:g} s then its evaluation, "
        f"GAN {s['gan_steps']} steps " + ("then its finalisation" if s["gan_finish"] else "(finalisation skipped)"),
        f"- repeats: {s['repeats']} (figures are medians)" if s["repeats"] > 1 else "- repeats: 1",
        "- training processes' allocator: "
        + (
            "glibc default (as `couturier train` runs)"
            if s.get("malloc_mmap_threshold") is None
            else f"MALLOC_MMAP_THRESHOLD_={s['malloc_mmap_threshold']} (freed blocks go back at once: RSS is live memory)"
        ),
        "",
        "## Targets",
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
        f"| import {t['import_images_per_s']['target']} | {t['import_images_per_s']['measured']:,.0f} images/s | "
        f"{yes[t['import_images_per_s']['met']]} |",
        f"| peak training RSS {t['training_peak_rss']['target']} | {_mib(t['training_peak_rss']['measured_bytes'])} "
        f"({t['training_peak_rss']['worst']}) | {yes[t['training_peak_rss']['met']]} |",
        "| training RSS independent of catalogue size | "
        + ", ".join(
            f"{net} x{v['peak_rss_ratio']} (anon x{v['peak_rss_anon_ratio']})"
            for net, v in t["training_rss_independent_of_catalogue"]["per_network"].items()
        )
        + f" | {yes[t['training_rss_independent_of_catalogue']['met']]} |",
        "",
        f"Independence: {t['training_rss_independent_of_catalogue']['target']}.",
        "",
        "## Import",
        "",
        "| products | wall s | images/s | importer peak RSS | largest decode worker | process tree peak (sum) | "
        "cores used | load before |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in sizes:
        r = report["import"][size]
        lines.append(
            f"| {int(size):,} | {r['wall_s']:.1f} | {r['images_per_s']:,.0f} | {_mib(r['peak_rss_bytes'])} | "
            f"{_mib(r['child_processes_peak_rss_max_bytes'])} | {_mib(r['tree_peak_rss_sum_bytes'])} | "
            f"{r['cores_used']} | {r['loadavg_1min_before']} |"
        )
    lines += [
        "",
        "## Opening (first use: builds the catalogue copy without the held-out products)",
        "",
        "| products | wall s | catalogue images | store | peak RSS |",
        "|---:|---:|---:|---:|---:|",
    ]
    for size in sizes:
        r = report["open"][size]
        lines.append(
            f"| {int(size):,} | {r['wall_s']:.1f} | {r['catalogue_images']:,} | {_mib(r['store_bytes'])} | "
            f"{_mib(r['peak_rss_bytes'])} |"
        )
    lines += [
        "",
        "## Training",
        "",
        "| network | products | steps | images/step | training images/s | s/step | loop s | after loop s | "
        "peak RSS | anon | file-backed | peak in steps (anon) | peak after steps (anon) | cores used | load before |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for net, by_size in report["training"].items():
        for size in sizes:
            r = by_size[size]
            lines.append(
                f"| {net} | {int(size):,} | {r['steps']} | {r['images_per_step']} | {r['images_per_s'] or 0:,.0f} | "
                f"{r['s_per_step_median']} | {r['loop_s']:.1f} | {r['after_loop_s']:.1f} | {_mib(r['peak_rss_bytes'])} | "
                f"{_mib(r['sampled_peak_rss_anon_bytes'])} | {_mib(r['sampled_peak_rss_file_bytes'])} | "
                f"{_mib(r['sampled_peak_rss_steps_bytes'])} ({_mib(r['sampled_peak_rss_anon_steps_bytes'])}) | "
                f"{_mib(r['sampled_peak_rss_after_steps_bytes'])} ({_mib(r['sampled_peak_rss_anon_after_steps_bytes'])}) | "
                f"{r['cores_used']} | {r['loadavg_1min_before']} |"
            )
    lines += ["", "## Notes", ""] + [f"- {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


def _first_training(report: Mapping[str, Any], key: str) -> Any:
    for by_size in report["training"].values():
        for r in by_size.values():
            return r.get(key)
    return "-"


def write_report(report: Mapping[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """``bench_data.json`` and ``bench_data.md`` under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "bench_data.json", out_dir / "bench_data.md"
    json_path.write_text(json.dumps(report, indent=2, default=str, allow_nan=False) + "\n")
    md_path.write_text(render_markdown(report))
    return json_path, md_path


if __name__ == "__main__":  # the measured child process: python -m couturier.export.tools.bench_data TASK RESULT
    child_main(sys.argv[1], sys.argv[2])
