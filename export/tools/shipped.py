"""Trained models shipped with the repository (``export/shipped/<profile>/``), and their installation.

``couturier models ship`` copies a trained run (``runs/<profile>/``, the four networks and the judge)
into a git-tracked folder, each checkpoint trimmed to what its loader reads, beside:

* ``manifest.json``   machine-readable: profile, files (bytes, sha256), the fingerprint of the data
                       the run was trained on, seed, steps done, wall times and device per network;
* ``MODEL_CARD.md``   the same for people, with the metrics and the commands that reproduce the run;
* ``SHA256SUMS``      sha256 of every other file (``sha256sum -c SHA256SUMS`` checks it too).

``couturier models verify`` checks the folder; :func:`install` (used by ``couturier demo``) verifies
it, checks that the prepared data is the data the models were trained on, and copies the files to
``runs/<profile>/`` where the loaders read them. Nothing here trains.

Layout of a shipped folder (paths as in ``runs/<profile>/``)::

    dvbpr/ gan/ infogan/ synthtriplet/ judge/   checkpoint.pt + metrics.json each
    judge/samples.json                           the judge's verdict on this GAN (only when it judged it)
    user_vectors.npz                             DVBPR's user table
    manifest.json  MODEL_CARD.md  SHA256SUMS
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from couturier.export.data.dataset import CATALOGUE_NAME, INTERACTIONS_NAME
from couturier.export.data.dataset_folder import MANIFEST_FILE as DATASET_MANIFEST
from couturier.export.data.dataset_folder import Dataset, NotADatasetError, is_legacy_prepared, open_dataset
from couturier.export.data.errors import DataError
from couturier.export.data.fashion_mnist import sha256_file
from couturier.export.pipeline import NETWORKS, USER_VECTORS
from couturier.services.common.errors import PreconditionFailed

#: Where the shipped folders live: ``export/shipped/<profile>/`` (beside this package's sources).
SHIPPED_ROOT = Path(__file__).resolve().parents[1] / "shipped"
MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"
MODEL_CARD = "MODEL_CARD.md"
#: Written into ``runs/<profile>/`` by :func:`install`: where the run came from.
INSTALLED_MARKER = "shipped_manifest.json"
FORMAT_VERSION = 1
#: Upper bound on a whole shipped folder (every file, manifest and card included): it lives in git.
SIZE_LIMIT_BYTES = 25_000_000
#: The judge of generated images: trained by ``couturier judge train`` into ``runs/<profile>/judge/``.
JUDGE = "judge"
CHECKPOINT = "checkpoint.pt"  # as couturier.export.training.common.CHECKPOINT (kept torch-free here)
METRICS = "metrics.json"
JUDGE_SAMPLES = "judge/samples.json"
#: Checkpoint entries no loader reads, dropped from the shipped copy. Only SynthTriplet's critic
#: qualifies: ``load_synthtriplet`` reads the generator alone. The other loaders read every entry they
#: hold (``load_infogan`` needs the InfoGAN generator too, although only the discriminator's trunk is
#: served), so those checkpoints ship whole.
DROPPED_KEYS: dict[str, tuple[str, ...]] = {"synthtriplet": ("critic",)}
#: What each shipped network serves (model names of couturier.services.common.models).
SERVES = {
    "dvbpr": "item_encoder (scoring) and the user vectors; the preference term of pref_grad / shift_grad",
    "gan": "generator, discriminator and the gradient models pref_grad, inv_grad, shift_grad (latent)",
    "infogan": "retrieval_encoder (its discriminator's trunk: visual search)",
    "synthtriplet": "query_generator (multimodal search)",
    JUDGE: "nothing: the independent judge of generated images (evaluation only, never an objective)",
}
_SUM_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


class ShippedModelsError(PreconditionFailed):
    """Shipped models cannot be written, verified or installed; the message says what to do."""


class NothingShippedError(ShippedModelsError):
    """The shipped folder is missing or empty."""


class ShippedIntegrityError(ShippedModelsError):
    """A shipped file is missing, changed, unexpected, or the manifest disagrees with SHA256SUMS."""


class DataMismatchError(ShippedModelsError):
    """The prepared data is not the data the shipped models were trained on."""


class RunConflictError(ShippedModelsError):
    """``runs/<profile>`` already holds a different run."""


class SizeLimitError(ShippedModelsError):
    """The shipped folder would exceed its size limit."""


@dataclass(frozen=True)
class ShippedFile:
    """One file of a shipped folder (``path`` relative to it, POSIX)."""

    path: str
    bytes: int
    sha256: str
    role: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "bytes": self.bytes, "sha256": self.sha256, "role": self.role}


def shipped_dir(profile: str) -> Path:
    """The shipped folder of a training profile (``export/shipped/<profile>``)."""
    return SHIPPED_ROOT / profile


def data_profile_for(training_profile: str) -> str:
    """The data profile a training profile trains on: ``full`` for ``full``, else the demo catalogue."""
    return "full" if training_profile == "full" else "demo"


def train_hint(profile: str) -> str:
    """The command that trains ``profile`` on this machine instead of installing shipped models."""
    return "couturier demo --train" + ("" if profile == "demo" else f" --profile {profile}")


def has_shipment(folder: Path) -> bool:
    """Whether ``folder`` holds anything besides hidden files (e.g. ``.gitkeep``)."""
    return folder.is_dir() and any(not entry.name.startswith(".") for entry in folder.iterdir())


# --- the data fingerprint ------------------------------------------------------------------------------


def _content_sha256(arrays: Mapping[str, np.ndarray]) -> str:
    """sha256 over named arrays (sorted by name: name, dtype, shape, then the bytes), not over any file's
    bytes: the same content hashes the same whatever container holds it."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _open_simulated(prepared_data_dir: Path) -> Dataset:
    """The simulated demo world in ``prepared_data_dir``; :class:`DataMismatchError` saying what to do
    for a folder that is not a dataset, an old-format folder, a damaged dataset or a real one."""
    folder = Path(prepared_data_dir)
    trained_on = "the shipped models were trained on the simulated demo world (`couturier data prepare`)"
    if is_legacy_prepared(folder):
        raise DataMismatchError(
            f"{folder} holds prepared data of an old format (manifest.json, catalogue.npz; no {DATASET_MANIFEST}): "
            f"{trained_on}; re-run `couturier data prepare --force --data-dir {folder}` to rebuild it as a dataset folder"
        )
    try:
        dataset = open_dataset(folder)
    except NotADatasetError as exc:
        raise DataMismatchError(
            f"{exc}\n{trained_on}: build it with `couturier data prepare --data-dir DIR` (an empty or new folder)"
        ) from None
    except DataError as exc:
        raise DataMismatchError(
            f"the dataset in {folder} cannot be read: {exc}\n{trained_on}: rebuild it with "
            f"`couturier data prepare --force --data-dir {folder}` if it is simulated data"
        ) from None
    if dataset.provenance != "simulated":
        raise DataMismatchError(
            f"{folder} holds a {dataset.provenance} dataset ({dataset.name!r}, from {dataset.source!r}), not the "
            f"simulated demo world: {trained_on} and serve only it. Prepare that into another folder "
            "(`couturier data prepare --data-dir DIR`), or train models on this dataset instead of installing them"
        )
    return dataset


def _fingerprint(dataset: Dataset) -> dict[str, Any]:
    simulation = dataset.manifest.get("simulation") or {}
    catalogue = dataset.catalogue
    tables: dict[str, dict[str, Any]] = {
        CATALOGUE_NAME: {
            "content_sha256": _content_sha256(
                {
                    "product_ids": np.asarray(catalogue.product_ids, dtype=str),
                    "images": catalogue.images,
                    "category": np.asarray(catalogue.category, dtype=np.int64),
                    "fm_class": np.asarray(catalogue.fm_class, dtype=np.int64),
                    "colour": np.asarray(catalogue.colour, dtype=np.int64),
                }
            ),
            "n_items": len(catalogue.product_ids),
        }
    }
    interactions = dataset.interactions
    if interactions is not None:
        tables[INTERACTIONS_NAME] = {
            "content_sha256": _content_sha256(
                {
                    "user_ids": np.asarray(interactions.user_ids, dtype=str),
                    "train_indptr": np.concatenate([[0], np.cumsum([len(t) for t in interactions.train])]).astype(
                        np.int64
                    ),
                    "train_indices": interactions.train_pairs()[:, 1],
                    "validation": interactions.validation,
                    "test": interactions.test,
                }
            ),
            "n_users": interactions.n_users,
        }
    return {
        "data_profile": simulation.get("profile"),
        "fashion_mnist_sha256": simulation.get("fashion_mnist_sha256"),
        "tables": tables,
    }


def data_fingerprint(prepared_data_dir: Path) -> dict[str, Any]:
    """What identifies the simulated demo world in a dataset folder: its data profile and Fashion-MNIST
    checksums (the manifest's ``simulation`` entry), and the content sha256 of its catalogue and its
    simulated interactions.

    The content hashes are computed over the arrays the models train on (catalogue: product ids,
    images, category, Fashion-MNIST class, colour; interactions: user ids, the CSR train lists,
    validation and test items), not over the files, so that a container written differently (another
    numpy, another format of the same data) does not change them. They equal those of the format
    before dataset folders, which the shipped models were trained on. A folder that is not a dataset,
    or a real dataset, is a :class:`DataMismatchError` saying what to do.
    """
    return _fingerprint(_open_simulated(prepared_data_dir))


def data_differences(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
    """How the prepared data ``actual`` differs from ``expected`` (both from :func:`data_fingerprint`)."""
    differences = []
    for key in ("data_profile", "fashion_mnist_sha256"):
        if expected.get(key) != actual.get(key):
            differences.append(
                f"{key}: the models were trained with {expected.get(key)!r}, the data has {actual.get(key)!r}"
            )
    for name, want in (expected.get("tables") or {}).items():
        have = (actual.get("tables") or {}).get(name, {})
        if want.get("content_sha256") != have.get("content_sha256"):
            differences.append(
                f"{name} content_sha256: trained on {want.get('content_sha256')}, the data has {have.get('content_sha256')}"
            )
    return differences


# --- ship ------------------------------------------------------------------------------------------------


def _run_files(run_dir: Path) -> dict[str, str]:
    """Relative path -> role of every file a run must hold to be shipped."""
    files = {}
    for network in (*NETWORKS, JUDGE):
        files[f"{network}/{CHECKPOINT}"] = "checkpoint"
        files[f"{network}/{METRICS}"] = "metrics"
    files[USER_VECTORS] = "user_vectors"
    return files


def _producer(path: str, profile: str) -> str:
    if path.startswith(f"{JUDGE}/"):
        return f"couturier judge train --profile {profile}"
    if path == USER_VECTORS or path.startswith("dvbpr/"):
        return f"couturier train --profile {profile} --only dvbpr"
    return f"couturier train --profile {profile} --only {path.split('/')[0]}"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ShippedModelsError(f"cannot read {path}: {exc}") from exc
    return data if isinstance(data, dict) else {}


def _trim_checkpoint(source: Path, target: Path, dropped: tuple[str, ...]) -> list[str]:
    """Copy a torch checkpoint without the entries ``dropped``; returns the entries really dropped."""
    import torch

    checkpoint = torch.load(source, map_location="cpu", weights_only=False)
    removed = [key for key in dropped if key in checkpoint]
    for key in removed:
        del checkpoint[key]
    torch.save(checkpoint, target)
    return removed


def check_loaders(folder: Path) -> None:
    """Load every shipped network with the code that serves it (raises what the loader raises)."""
    from couturier.export.evaluation.judge import load_judge
    from couturier.export.training.train_dvbpr import load_dvbpr
    from couturier.export.training.train_gan import load_gan
    from couturier.export.training.train_infogan import load_infogan
    from couturier.export.training.train_synthtriplet import load_synthtriplet

    load_dvbpr(folder / "dvbpr")
    load_gan(folder / "gan")
    load_infogan(folder / "infogan").encoder()
    load_synthtriplet(folder / "synthtriplet")
    load_judge(folder / JUDGE)


def _judged_this_gan(samples: Mapping[str, Any], gan_metrics: Mapping[str, Any]) -> bool:
    """Whether ``judge/samples.json`` judged the run's GAN (same steps and training wall time)."""
    return (
        samples.get("gan_steps") == gan_metrics.get("steps_done")
        and samples.get("gan_train_wall_s") == gan_metrics.get("train_wall_s")
        and samples.get("gan_steps") is not None
    )


def _check_same_shoppers(run_dir: Path, dataset: Dataset, prepared_data_dir: Path) -> None:
    """The run's user table must list the prepared data's shoppers (it was trained on that data)."""
    with np.load(run_dir / USER_VECTORS, allow_pickle=False) as vectors:
        run_users = vectors["user_ids"]
    data_users = dataset.interactions.user_ids if dataset.interactions is not None else np.zeros(0, dtype=str)
    if run_users.shape != data_users.shape or not np.array_equal(run_users, data_users):
        raise DataMismatchError(
            f"{run_dir / USER_VECTORS} holds {len(run_users)} shoppers that are not the {len(data_users)} of the "
            f"prepared data in {prepared_data_dir}: the run was trained on other data. Ship with --data-dir "
            "pointing at the data it was trained on"
        )


def _network_summary(network: str, metrics: Mapping[str, Any], dropped: list[str]) -> dict[str, Any]:
    profile = metrics.get("profile") or {}
    unit = "steps" if "steps_done" in metrics else "epochs"
    return {
        "checkpoint": f"{network}/{CHECKPOINT}",
        "metrics": f"{network}/{METRICS}",
        "dropped_checkpoint_entries": dropped,
        "unit": unit,
        "done": metrics.get(f"{unit}_done"),
        "configured": profile.get(unit),
        "stopped_by_max_seconds": metrics.get("stopped_by_max_seconds"),
        "train_wall_s": metrics.get("train_wall_s"),
        "device": metrics.get("device"),
        "seed": metrics.get("seed", profile.get("seed")),
        "training_profile": profile.get("name"),
    }


def _files_of(folder: Path, roles: Mapping[str, str]) -> list[ShippedFile]:
    return [
        ShippedFile(path, (folder / path).stat().st_size, sha256_file(folder / path), role)
        for path, role in sorted(roles.items())
    ]


def _all_files(folder: Path) -> list[str]:
    """Every non-hidden file under ``folder`` (POSIX paths relative to it), sorted."""
    return sorted(
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def _write_sums(folder: Path) -> None:
    lines = [f"{sha256_file(folder / path)}  {path}" for path in _all_files(folder) if path != SUMS]
    (folder / SUMS).write_text("\n".join(lines) + "\n")


def ship(
    runs_root: Path,
    profile: str,
    dest: Path,
    *,
    prepared_data_dir: Path,
    device_description: str | None = None,
    size_limit: int = SIZE_LIMIT_BYTES,
    verify_loaders: bool = True,
    echo: Callable[[str], None] | None = None,
) -> Path:
    """Write the shipped folder ``dest`` from the trained run ``runs_root/profile``; returns ``dest``.

    ``prepared_data_dir`` is the data the run was trained on (its fingerprint goes into the manifest);
    ``device_description`` names the hardware (e.g. "NVIDIA H200"), the metrics only say cpu or cuda.
    ``verify_loaders`` loads every trimmed checkpoint with its loader before anything is written to
    ``dest``. Refuses (nothing changes in ``dest``) when a file is missing, the data is not the run's,
    or the folder would exceed ``size_limit`` bytes. A previous shipment in ``dest`` is replaced.
    """
    say = echo or (lambda line: None)
    run_dir = Path(runs_root) / profile
    dest = Path(dest)
    roles = _run_files(run_dir)
    missing = [path for path in roles if not (run_dir / path).is_file()]
    if missing:
        raise ShippedModelsError(
            f"{run_dir} is not a complete trained run: missing "
            + "; ".join(f"{path} (made by `{_producer(path, profile)}`)" for path in missing)
        )
    dataset = _open_simulated(prepared_data_dir)
    data = _fingerprint(dataset)
    data_profile = (data.get("data_profile") or {}).get("name")
    if data_profile != data_profile_for(profile):
        raise DataMismatchError(
            f"the {profile!r} models train on the {data_profile_for(profile)!r} data, but {prepared_data_dir} holds "
            f"{data_profile!r} data; pass --data-dir with the data the run was trained on"
        )
    _check_same_shoppers(run_dir, dataset, Path(prepared_data_dir))
    if dest.exists() and has_shipment(dest) and not (dest / MANIFEST).is_file():
        raise ShippedModelsError(f"{dest} holds files but no {MANIFEST}: not a shipped folder, refusing to replace it")

    staging = dest.parent / f".{dest.name}.shipping"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        metrics: dict[str, dict[str, Any]] = {}
        networks: dict[str, dict[str, Any]] = {}
        for path in roles:
            target = staging / path
            target.parent.mkdir(parents=True, exist_ok=True)
            network = path.split("/")[0]
            dropped: list[str] = []
            if path.endswith(CHECKPOINT) and network in DROPPED_KEYS:
                dropped = _trim_checkpoint(run_dir / path, target, DROPPED_KEYS[network])
                if dropped:
                    say(f"{path}: dropped {', '.join(dropped)} (no loader reads it)")
            else:
                shutil.copyfile(run_dir / path, target)
            if path.endswith(METRICS):
                metrics[network] = _read_json(target)
            if path.endswith(CHECKPOINT):
                networks[network] = {"dropped": dropped}
        notes: list[str] = []
        samples: dict[str, Any] | None = None
        if (run_dir / JUDGE_SAMPLES).is_file():
            judged = _read_json(run_dir / JUDGE_SAMPLES)
            if _judged_this_gan(judged, metrics.get("gan", {})):
                shutil.copyfile(run_dir / JUDGE_SAMPLES, staging / JUDGE_SAMPLES)
                roles = {**roles, JUDGE_SAMPLES: "judge_samples"}
                samples = judged
            else:
                notes.append(
                    f"{JUDGE_SAMPLES} not shipped: it judged another GAN ({judged.get('gan_run')}, "
                    f"{judged.get('gan_steps')} steps); run `couturier judge samples --profile {profile}`"
                )
        if verify_loaders:
            try:
                check_loaders(staging)
            except Exception as exc:
                raise ShippedModelsError(f"a shipped checkpoint does not load: {type(exc).__name__}: {exc}") from exc
        files = _files_of(staging, roles)
        manifest = _manifest(
            profile,
            run_dir,
            files,
            data,
            {net: _network_summary(net, metrics[net], networks[net]["dropped"]) for net in (*NETWORKS, JUDGE)},
            device_description,
            size_limit,
            notes,
        )
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        (staging / MODEL_CARD).write_text(render_model_card(manifest, metrics, samples))
        _write_sums(staging)
        sizes = {path: (staging / path).stat().st_size for path in _all_files(staging)}
        total = sum(sizes.values())
        if total > size_limit:
            largest = sorted(sizes.items(), key=lambda item: -item[1])[:4]
            raise SizeLimitError(
                f"the shipped folder would hold {total:,} bytes, above its limit of {size_limit:,} bytes; largest: "
                + ", ".join(f"{path} {size:,}" for path, size in largest)
                + ". Shrink the networks (training profile) or trim more checkpoint entries; nothing was written"
            )
        _replace(dest, staging)
        say(f"shipped {len(sizes)} files, {total:,} bytes, into {dest}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def _replace(dest: Path, staging: Path) -> None:
    """Put the staged files in ``dest``: a previous shipment's files go, hidden files (.gitkeep) stay."""
    dest.mkdir(parents=True, exist_ok=True)
    for entry in dest.iterdir():
        if entry.name.startswith("."):
            continue
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    for entry in staging.iterdir():
        shutil.move(str(entry), dest / entry.name)


def _common(values: Iterable[Any]) -> Any:
    distinct = {json.dumps(value, sort_keys=True) for value in values}
    return json.loads(distinct.pop()) if len(distinct) == 1 else None


def _manifest(
    profile: str,
    run_dir: Path,
    files: list[ShippedFile],
    data: dict[str, Any],
    networks: dict[str, dict[str, Any]],
    device_description: str | None,
    size_limit: int,
    notes: list[str],
) -> dict[str, Any]:
    data_profile = data_profile_for(profile)
    return {
        "format_version": FORMAT_VERSION,
        "profile": profile,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "source_run": str(run_dir),
        "files": [file.to_dict() for file in files],
        "files_bytes": sum(file.bytes for file in files),
        "size_limit_bytes": size_limit,
        "data": {
            **data,
            "real": "garment shapes and classes: Fashion-MNIST (Debian package dataset-fashion-mnist)",
            "simulated": "garment colours, shoppers and their purchases",
            "prepare_command": f"couturier data prepare --profile {data_profile}",
        },
        "seed": _common(net["seed"] for net in networks.values()),
        "device": {
            "torch": {name: net["device"] for name, net in networks.items()},
            "description": device_description,
        },
        "train_wall_s": {name: net["train_wall_s"] for name, net in networks.items()},
        "networks": networks,
        "reproduce": [
            f"couturier data prepare --profile {data_profile}",
            f"couturier train --profile {profile}",
            f"couturier judge train --profile {profile}",
            f"couturier models ship --profile {profile}",
        ],
        "notes": notes,
    }


# --- the model card --------------------------------------------------------------------------------------


def _get(data: Mapping[str, Any] | None, dotted: str) -> Any:
    value: Any = data
    for key in dotted.split("."):
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def _num(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or value is None:
        return "n/a"
    if isinstance(value, (int, float)):
        return f"{value:.{digits}f}" if isinstance(value, float) else f"{value:,}"
    return str(value)


def _headlines(network: str, m: Mapping[str, Any], samples: Mapping[str, Any] | None) -> list[str]:
    """The metrics worth a line per network (n/a when the metrics file lacks them)."""
    if network == "dvbpr":
        return [
            f"test AUC (all items): DVBPR {_num(_get(m, 'test_auc.dvbpr.full_auc'))}, popularity "
            f"{_num(_get(m, 'test_auc.popularity.full_auc'))}, BPR-MF {_num(_get(m, 'test_auc.bpr_mf.full_auc'))}, "
            f"planted-taste oracle {_num(_get(m, 'test_auc.oracle_simulated.full_auc'))} (simulated ceiling)",
            f"test AUC when the held-out purchase is a cold item (no training purchase): DVBPR {_num(_get(m, 'test_auc.dvbpr.full_auc_cold'))}, "
            f"BPR-MF {_num(_get(m, 'test_auc.bpr_mf.full_auc_cold'))}",
            f"best validation sampled AUC {_num(_get(m, 'best_val_sampled_auc'))} at epoch {_num(_get(m, 'best_epoch'))}",
        ]
    if network == "gan":
        lines = [f"1-NN category consistency of samples: {_num(_get(m, 'category_consistency_1nn.overall'))}"]
        if samples:
            lines.append(
                f"judge's category accuracy on samples {_num(_get(samples, 'generated.overall.accuracy'))} vs real "
                f"held-out items {_num(_get(samples, 'real_ceiling.overall.accuracy'))}; FID in judge features "
                f"{_num(_get(samples, 'fid_ratio.overall'), 1)}x real-vs-real (judge/samples.json)"
            )
        return lines
    if network == "infogan":
        return [
            "held-out image search precision@10: category "
            f"{_num(_get(m, 'retrieval_precision.category.p@10'))}, colour "
            f"{_num(_get(m, 'retrieval_precision.colour.p@10'))}, class and colour "
            f"{_num(_get(m, 'retrieval_precision.class_colour.p@10'))}"
        ]
    if network == "synthtriplet":
        return [
            f"target recall@10 / @50 with the synthetic query image: {_num(_get(m, 'recall.synthetic_image.R@10'))} / "
            f"{_num(_get(m, 'recall.synthetic_image.R@50'))} (image only: "
            f"{_num(_get(m, 'recall.image_only.R@10'))} / {_num(_get(m, 'recall.image_only.R@50'))})",
            f"attribute precision@10 with the synthetic image: {_num(_get(m, 'attribute_p@10.synthetic_image'))}",
        ]
    return [
        f"held-out category accuracy {_num(_get(m, 'heldout_accuracy'))} on {_num(_get(m, 'n_heldout'))} real items"
    ]


def render_model_card(
    manifest: Mapping[str, Any], metrics: Mapping[str, Mapping[str, Any]], samples: Mapping[str, Any] | None = None
) -> str:
    """``MODEL_CARD.md`` from the manifest and each network's metrics."""
    profile = manifest["profile"]
    data = manifest["data"]
    data_profile = data.get("data_profile") or {}
    tables = data.get("tables") or {}
    device = manifest["device"]
    torch_devices = sorted({str(d) for d in device["torch"].values()})
    hardware = device.get("description") or "not recorded"
    lines = [
        f"# Model card: couturier `{profile}` models",
        "",
        f"Shipped {manifest['created_at']} from `{manifest['source_run']}` by `couturier models ship`. "
        "`couturier demo` installs them into `runs/"
        f"{profile}/` and serves them; `couturier models verify` checks this folder.",
        "",
        "## Data: real shapes, SIMULATED colours and shoppers",
        "",
        "- **Real**: garment shapes and classes are Fashion-MNIST (28x28 grayscale, Debian package "
        "`dataset-fashion-mnist`, checked by sha256), mapped to 6 categories.",
        "- **SIMULATED**: every item's colour, the shoppers, their purchases and their tastes. The metrics below "
        "measure the system on these simulated shoppers, not on real people.",
        f"- Data profile `{data_profile.get('name')}` (seed {data_profile.get('seed')}): "
        f"{_num(_get(tables, 'catalogue.n_items'))} catalogue items, "
        f"{_num(_get(tables, 'interactions_simulated.n_users'))} simulated shoppers, "
        f"{data_profile.get('image_size')}x{data_profile.get('image_size')} RGB images.",
        f"- Fingerprint (content sha256, checked on install): catalogue "
        f"`{_get(tables, 'catalogue.content_sha256')}`, interactions "
        f"`{_get(tables, 'interactions_simulated.content_sha256')}`.",
        *([f"- Verified: {data['verified']}."] if data.get("verified") else []),
        "",
        "## Training",
        "",
        f"- Training profile `{profile}`, seed {_num(manifest.get('seed'))}.",
        f"- Device: {', '.join(torch_devices)} (hardware: {hardware}).",
        f"- Training wall time: {_num(sum(v for v in manifest['train_wall_s'].values() if v), 0)} s in all.",
        "",
        "| network | serves | trained | wall time | capped by max_seconds |",
        "|---|---|---|---|---|",
    ]
    for name, net in manifest["networks"].items():
        trained = f"{_num(net['done'])} of {_num(net['configured'])} {net['unit']}"
        capped = "**yes**" if net.get("stopped_by_max_seconds") else "no"
        lines.append(f"| {name} | {SERVES.get(name, '')} | {trained} | {_num(net['train_wall_s'], 1)} s | {capped} |")
    capped_nets = [name for name, net in manifest["networks"].items() if net.get("stopped_by_max_seconds")]
    if capped_nets:
        lines += [
            "",
            f"**Warning**: {', '.join(capped_nets)} stopped at the wall-clock cap before the configured length.",
        ]
    lines += ["", "## Metrics (on the simulated shoppers and the held-out catalogue)", ""]
    for name in manifest["networks"]:
        lines.append(f"- **{name}**")
        lines += [f"  - {line}" for line in _headlines(name, metrics.get(name, {}), samples)]
    lines += ["", "Every figure comes from the network's `metrics.json` in this folder.", ""]
    dropped = {name: net["dropped_checkpoint_entries"] for name, net in manifest["networks"].items()}
    if any(dropped.values()):
        lines += [
            "## Trimmed checkpoints",
            "",
            *[
                f"- `{name}/{CHECKPOINT}` ships without {', '.join(f'`{key}`' for key in keys)} (no loader reads it)."
                for name, keys in dropped.items()
                if keys
            ],
            "",
        ]
    lines += [
        "## Reproduce",
        "",
        "```bash",
        *manifest["reproduce"],
        "```",
        "",
        "Step counts, not wall time, define a run, so the seed reproduces it on the same kind of device "
        "(GPU kernels are not bit-for-bit deterministic across hardware).",
        "",
        "## Files",
        "",
        "| file | bytes | sha256 |",
        "|---|---|---|",
        *[f"| `{f['path']}` | {f['bytes']:,} | `{f['sha256']}` |" for f in manifest["files"]],
        "",
        f"`{SUMS}` lists the sha256 of every file here (`sha256sum -c {SUMS}`); `{MANIFEST}` is the "
        "machine-readable form of this card.",
    ]
    if manifest.get("notes"):
        lines += ["", "## Notes", "", *[f"- {note}" for note in manifest["notes"]]]
    return "\n".join(lines) + "\n"


# --- verify and install ----------------------------------------------------------------------------------


def _safe_relative(path: str) -> bool:
    parts = PurePosixPath(path).parts
    return bool(parts) and not PurePosixPath(path).is_absolute() and ".." not in parts and "\\" not in path


def _read_sums(folder: Path) -> tuple[dict[str, str], list[str]]:
    sums: dict[str, str] = {}
    problems: list[str] = []
    for number, line in enumerate((folder / SUMS).read_text().splitlines(), 1):
        if not line.strip():
            continue
        match = _SUM_LINE.match(line)
        if not match or not _safe_relative(match.group(2)):
            problems.append(f"{SUMS} line {number} is malformed: {line[:80]!r}")
            continue
        sums[match.group(2)] = match.group(1)
    return sums, problems


def verify(shipped: Path) -> dict[str, Any]:
    """Check a shipped folder: every file against ``SHA256SUMS``, and the manifest against both; returns
    the manifest. Raises :class:`NothingShippedError` for a missing or empty folder and
    :class:`ShippedIntegrityError` naming every file that is missing, changed or unexpected."""
    shipped = Path(shipped)
    if not has_shipment(shipped):
        raise NothingShippedError(
            f"no shipped models in {shipped} (the folder is {'empty' if shipped.is_dir() else 'missing'}): "
            "write them from a trained run with `couturier models ship --profile PROFILE`, "
            "or train on this machine with `couturier demo --train`"
        )
    fix = (
        f"restore the folder (e.g. `git checkout -- {shipped}`) or ship it again from the trained run "
        "(`couturier models ship`); or train on this machine with `couturier demo --train`"
    )
    for required in (SUMS, MANIFEST):
        if not (shipped / required).is_file():
            raise ShippedIntegrityError(f"{shipped} failed verification: {required} is missing; {fix}")
    sums, problems = _read_sums(shipped)
    for path, expected in sums.items():
        if not (shipped / path).is_file():
            problems.append(f"{path} is missing")
        elif (actual := sha256_file(shipped / path)) != expected:
            problems.append(f"{path} changed: its sha256 is {actual}, {SUMS} says {expected}")
    problems += [f"{path} is not listed in {SUMS}" for path in _all_files(shipped) if path != SUMS and path not in sums]
    if problems:
        raise ShippedIntegrityError(f"{shipped} failed verification:\n  - " + "\n  - ".join(problems) + f"\n{fix}")
    try:
        manifest = json.loads((shipped / MANIFEST).read_text())
    except json.JSONDecodeError as exc:
        raise ShippedIntegrityError(f"{shipped / MANIFEST} is not JSON ({exc}); {fix}") from exc
    problems = _manifest_problems(manifest, sums)
    if problems:
        raise ShippedIntegrityError(
            f"{shipped / MANIFEST} disagrees with the folder:\n  - " + "\n  - ".join(problems) + f"\n{fix}"
        )
    return manifest


def _manifest_problems(manifest: Any, sums: Mapping[str, str]) -> list[str]:
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        return [f"format_version is not {FORMAT_VERSION} (written by another version of couturier?)"]
    problems = []
    if not isinstance(manifest.get("profile"), str) or not manifest["profile"]:
        problems.append("profile is missing")
    files = {entry.get("path"): entry for entry in manifest.get("files", []) if isinstance(entry, dict)}
    for path, entry in files.items():
        if not isinstance(path, str) or not _safe_relative(path):
            problems.append(f"file entry {path!r} is not a relative path inside the folder")
        elif path not in sums:
            problems.append(f"{path} is in the manifest but not in {SUMS}")
        elif entry.get("sha256") != sums[path]:
            problems.append(f"{path}: manifest sha256 {entry.get('sha256')} differs from {SUMS} {sums[path]}")
    described = set(files) | {MANIFEST, MODEL_CARD}
    problems += [f"{path} is in {SUMS} but not in the manifest" for path in sums if path not in described]
    problems += [f"the manifest lacks {path}" for path in _run_files(Path()) if path not in files]
    return problems


def run_differences(shipped: Path, run_dir: Path) -> list[str]:
    """The shipped checkpoints and user vectors that ``run_dir`` holds with other bytes ([] when nothing is
    shipped): a run that is not the shipped one, e.g. trained here. Reads the manifest without verifying."""
    try:
        manifest = json.loads((Path(shipped) / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return []
    return [
        entry["path"]
        for entry in manifest.get("files", [])
        if entry.get("role") in ("checkpoint", "user_vectors")
        and (run_dir / entry["path"]).is_file()
        and sha256_file(run_dir / entry["path"]) != entry.get("sha256")
    ]


def install(
    shipped: Path,
    runs_root: Path,
    prepared_data_dir: Path,
    *,
    profile: str | None = None,
    overwrite: bool = False,
    echo: Callable[[str], None] | None = None,
) -> Path:
    """Verify ``shipped`` and the prepared data, then copy the files into ``runs_root/<profile>/``; returns
    that run folder. ``profile``, when given, must be the shipped one. Files already there with the same
    sha256 are kept; a different file is a :class:`RunConflictError` unless ``overwrite`` (then each
    replaced file is named through ``echo``). Nothing is copied when any check fails."""
    say = echo or (lambda line: None)
    manifest = verify(shipped)
    if profile is not None and manifest["profile"] != profile:
        raise ShippedModelsError(
            f"{shipped} holds the {manifest['profile']!r} models, not {profile!r}: "
            f"pass the {profile!r} shipped folder, or train with `{train_hint(profile)}`"
        )
    profile = manifest["profile"]
    actual = data_fingerprint(prepared_data_dir)
    differences = data_differences(manifest.get("data", {}), actual)
    if differences:
        data_profile = (_get(manifest, "data.data_profile.name")) or data_profile_for(profile)
        raise DataMismatchError(
            f"the shipped {profile!r} models were trained on other data than {prepared_data_dir} holds:\n  - "
            + "\n  - ".join(differences)
            + f"\nre-prepare the data they were trained on (`couturier data prepare --profile {data_profile}`, with "
            f"--data-dir {prepared_data_dir} if it is not the default), or train on this data with `{train_hint(profile)}`"
        )
    run_dir = Path(runs_root) / profile
    entries = list(manifest["files"])
    conflicts = [
        entry["path"]
        for entry in entries
        if (run_dir / entry["path"]).is_file() and sha256_file(run_dir / entry["path"]) != entry["sha256"]
    ]
    if conflicts and not overwrite:
        raise RunConflictError(
            f"{run_dir} already holds a different run ({', '.join(conflicts)} differ from the shipped files); "
            f"move it away to install the shipped models from {shipped}, or keep it and complete it with "
            f"`{train_hint(profile)}`"
        )
    for path in conflicts:
        say(f"overwriting {run_dir / path} with the shipped file")
    copied = 0
    for entry in entries:
        target = run_dir / entry["path"]
        if target.is_file() and entry["path"] not in conflicts:
            continue  # already this exact file
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".installing")
        shutil.copyfile(Path(shipped) / entry["path"], partial)  # a fresh mtime: older ONNX exports get redone
        partial.replace(target)
        copied += 1
    shutil.copyfile(Path(shipped) / MANIFEST, run_dir / INSTALLED_MARKER)
    kept = f" ({len(entries) - copied} were already there)" if copied < len(entries) else ""
    say(f"installed {copied} of {len(entries)} shipped files into {run_dir}{kept}")
    return run_dir
