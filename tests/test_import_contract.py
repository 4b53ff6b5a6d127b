"""The serving package stands alone: the import contract (import-linter) holds and would catch a breach."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def package_view(at: Path, services: Path, export: Path = ROOT / "export") -> Path:
    """A ``couturier`` package view like ``make pkgview`` makes, with ``services`` and ``export`` as given."""
    pkg = at / "couturier"
    pkg.mkdir(parents=True)
    (pkg / "services").symlink_to(services)
    (pkg / "export").symlink_to(export)
    (pkg / "v1").symlink_to(ROOT / "protos" / "couturier" / "v1")
    return at


def lint_imports(view: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=view,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_contract_holds_on_the_tree(tmp_path: Path) -> None:
    result = lint_imports(package_view(tmp_path, ROOT / "services"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "3 kept, 0 broken" in result.stdout


def test_contract_catches_a_function_local_import_of_offline_code(tmp_path: Path) -> None:
    services = tmp_path / "services"
    shutil.copytree(ROOT / "services", services, ignore=shutil.ignore_patterns("__pycache__"))
    (services / "common" / "sneaky.py").write_text(
        "def load() -> object:\n    from couturier.export import pipeline\n\n    return pipeline\n"
    )
    result = lint_imports(package_view(tmp_path / "view", services))
    assert result.returncode != 0
    assert "couturier.services.common.sneaky -> couturier.export.pipeline" in result.stdout


def test_contract_catches_one_service_importing_another(tmp_path: Path) -> None:
    services = tmp_path / "services"
    shutil.copytree(ROOT / "services", services, ignore=shutil.ignore_patterns("__pycache__"))
    (services / "scoring" / "shortcut.py").write_text("from couturier.services.latent import optimize\n")
    result = lint_imports(package_view(tmp_path / "view", services))
    assert result.returncode != 0
    assert "couturier.services.scoring.shortcut -> couturier.services.latent.optimize" in result.stdout


def test_contract_catches_training_code_importing_the_judge(tmp_path: Path) -> None:
    """The judge of generated images is never an objective: a trainer that imports it breaks the build."""
    export = tmp_path / "export"
    shutil.copytree(ROOT / "export", export, ignore=shutil.ignore_patterns("__pycache__"))
    (export / "training" / "judged.py").write_text(
        "def objective() -> object:\n    from couturier.export.evaluation import judge\n\n    return judge\n"
    )
    result = lint_imports(package_view(tmp_path / "view", ROOT / "services", export))
    assert result.returncode != 0
    assert "No optimisation code imports the judge of generated images BROKEN" in result.stdout
    assert "couturier.export.training.judged -> couturier.export.evaluation.judge" in result.stdout


def test_every_serving_module_imports_with_offline_code_and_torch_blocked() -> None:
    """What a serving image holds: every module of couturier.services imports without torch, onnx or export."""
    code = """
import importlib, importlib.abc, pkgutil, sys
BLOCKED = ('torch', 'onnx', 'onnxscript', 'sentence_transformers', 'couturier.export')
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in BLOCKED or name.startswith(tuple(b + '.' for b in BLOCKED)):
            raise ImportError('blocked in a serving image: ' + name)
sys.meta_path.insert(0, Block())
import couturier.services
names = [m.name for m in pkgutil.walk_packages(couturier.services.__path__, 'couturier.services.')]
for name in names:
    importlib.import_module(name)
print(len(names))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.strip()) >= 30  # every module was walked, not an empty package
