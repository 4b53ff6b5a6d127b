"""Build hook: generate the protobuf/gRPC stubs from protos/ (never hand-edited, never committed).

Everything else about the distribution is declared in pyproject.toml. The import package layout maps
the repository's top-level folders into one namespace::

    couturier.services  <- services/
    couturier.export    <- export/
    couturier.v1        <- protos/couturier/v1/   (the .proto files and their generated stubs)
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTO_ROOT = ROOT / "protos"
PACKAGE_DIRS = {
    "couturier.services": "services",
    "couturier.export": "export",
    "couturier.v1": "protos/couturier/v1",
}


def generate_stubs() -> list[Path]:
    """Run protoc (from grpcio-tools) over every .proto; outputs land next to the sources."""
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    if not protos:
        raise RuntimeError(f"no .proto files under {PROTO_ROOT}")
    include = str(Path(grpc_tools.__file__).parent / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={PROTO_ROOT}",
        f"--pyi_out={PROTO_ROOT}",
        f"--grpc_python_out={PROTO_ROOT}",
        *(str(p.relative_to(PROTO_ROOT)) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on " + " ".join(args[-len(protos) :]))
    return protos


def find_mapped_packages() -> list[str]:
    packages = []
    for name, folder in PACKAGE_DIRS.items():
        base = ROOT / folder
        for init in sorted(base.rglob("__init__.py")):
            rel = init.parent.relative_to(base)
            packages.append(".".join([name, *rel.parts]) if rel.parts else name)
    return packages


class BuildPyWithStubs(build_py):
    def run(self) -> None:
        generate_stubs()
        super().run()


setup(
    package_dir=PACKAGE_DIRS,
    packages=find_mapped_packages(),
    package_data={"couturier.v1": ["*.proto", "*.pyi"], "couturier.services": ["py.typed"]},
    cmdclass={"build_py": BuildPyWithStubs},
)
