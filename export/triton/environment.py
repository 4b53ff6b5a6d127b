"""The Triton environment: its own virtualenv holding tritonserver (nvidia-pytriton) and numpy < 2.

The Python-backend stub must see numpy < 2 (with numpy 2 every output comes back empty, silently),
while couturier itself uses numpy 2; hence a separate virtualenv, by default ``var/triton/env``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from couturier.export.triton.errors import EnvironmentSetupError

log = logging.getLogger(__name__)

HOME_ENV = "COUTURIER_TRITON_HOME"
#: What the Triton environment installs (pinned: numpy < 2 is a hard requirement of the stub).
REQUIREMENTS: tuple[str, ...] = ("nvidia-pytriton==0.7.0", "numpy<2", "onnxruntime-gpu==1.31.1")
MARKER = "couturier-triton-env.json"

_PROBE = """
import json, site, sys, sysconfig
import numpy, onnxruntime
print(json.dumps({
    "python_version": f"{sys.version_info[0]}.{sys.version_info[1]}",
    "libdir": sysconfig.get_config_var("LIBDIR"),
    "site_packages": site.getsitepackages()[0],
    "numpy": numpy.__version__,
    "onnxruntime": onnxruntime.__version__,
}))
"""


def default_home() -> Path:
    """``$COUTURIER_TRITON_HOME`` if set, else ``./var/triton``."""
    value = os.environ.get(HOME_ENV)
    return Path(value) if value else Path.cwd() / "var" / "triton"


@dataclass(frozen=True)
class TritonEnvironment:
    """A ready Triton virtualenv and the paths inside it the local server needs."""

    env_dir: Path
    python_version: str
    libdir: Path
    site_packages: Path
    numpy_version: str

    @property
    def bin_dir(self) -> Path:
        return self.env_dir / "bin"

    @property
    def triton_root(self) -> Path:
        return self.site_packages / "pytriton" / "tritonserver"

    @property
    def tritonserver(self) -> Path:
        return self.triton_root / "bin" / "tritonserver"

    @property
    def python_backend_dir(self) -> Path:
        """Holds ``libtriton_python.so`` and ``triton_python_backend_utils.py``."""
        return self.triton_root / "backends" / "python"

    @property
    def bundled_libs_dir(self) -> Path:
        """Shared libraries the wheel bundles (libcudart, ...); the copied stub finds them via LD_LIBRARY_PATH."""
        return self.site_packages / "nvidia_pytriton.libs"

    @property
    def stub(self) -> Path:
        """The Python-backend stub built for this environment's Python version."""
        return self.triton_root / "python_backend_stubs" / self.python_version / "triton_python_backend_stub"

    def required_files(self) -> list[Path]:
        return [
            self.tritonserver,
            self.stub,
            self.python_backend_dir / "libtriton_python.so",
            self.python_backend_dir / "triton_python_backend_utils.py",
        ]


def _environment(env_dir: Path, probe: dict[str, str]) -> TritonEnvironment:
    """The environment described by the probe's answer (also what the marker file stores)."""
    return TritonEnvironment(
        env_dir=env_dir,
        python_version=probe["python_version"],
        libdir=Path(probe["libdir"]),
        site_packages=Path(probe["site_packages"]),
        numpy_version=probe["numpy"],
    )


def _from_marker(env_dir: Path) -> TritonEnvironment | None:
    marker = env_dir / MARKER
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    if data.get("requirements") != list(REQUIREMENTS):
        return None
    env = _environment(env_dir, data)
    if not (env_dir / "bin" / "python").exists() or not all(p.exists() for p in env.required_files()):
        return None
    return env


def _run(cmd: list[str], what: str) -> str:
    log.info("triton env: %s", what)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout)[-3000:]
        raise EnvironmentSetupError(f"{what} failed (exit {done.returncode}): {' '.join(cmd)}\n{tail}")
    return done.stdout


def ensure_environment(env_dir: str | Path, *, base_python: str | None = None) -> TritonEnvironment:
    """Create (or validate) the Triton virtualenv; fast when a matching one is already there."""
    env_dir = Path(env_dir).absolute()
    ready = _from_marker(env_dir)
    if ready is not None:
        return ready
    python = env_dir / "bin" / "python"
    if not python.exists():
        env_dir.parent.mkdir(parents=True, exist_ok=True)
        _run([base_python or sys.executable, "-m", "venv", str(env_dir)], f"create virtualenv {env_dir}")
    _run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *REQUIREMENTS],
        "install " + " ".join(REQUIREMENTS),
    )
    data = json.loads(_run([str(python), "-c", _PROBE], "probe the Triton environment").strip().splitlines()[-1])
    if int(data["numpy"].split(".")[0]) >= 2:
        raise EnvironmentSetupError(
            f"{env_dir} has numpy {data['numpy']}; the Python-backend stub needs numpy < 2 (outputs come back empty)"
        )
    env = _environment(env_dir, data)
    missing = [str(p) for p in env.required_files() if not p.exists()]
    if missing:
        raise EnvironmentSetupError(
            f"nvidia-pytriton in {env_dir} lacks {missing}; Python {env.python_version} may be unsupported (3.8-3.13)"
        )
    (env_dir / MARKER).write_text(json.dumps({"requirements": list(REQUIREMENTS), **data}, indent=2))
    log.info("triton env ready: %s (python %s, numpy %s)", env_dir, env.python_version, env.numpy_version)
    return env
