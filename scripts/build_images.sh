#!/usr/bin/env bash
# Build every target of docker/service.Dockerfile (`make images`), tagged couturier/<target>:<version>
# with the version from pyproject.toml. Run from anywhere; the build context is the repository root.
#
#   scripts/build_images.sh [TARGET...]     # default: scoring latent retrieval orchestrator tools
#
# Engine: docker when its daemon answers, else buildah (`buildah bud --isolation chroot --layers`).
# Base image: PYTHON_IMAGE when set; otherwise docker uses the Dockerfile's default
# (python:3.11-slim-bookworm) and buildah the Debian-built stand-in of docker/python-base.sh
# (localhost/couturier-python:3.11-bookworm, built once, then reused). ENGINE=docker|buildah forces one.
# The targets are built one after another: they share the build and runtime stages, which the
# second and later builds take from the layer cache.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
DOCKERFILE=docker/service.Dockerfile
STANDIN=localhost/couturier-python:3.11-bookworm
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(scoring latent retrieval orchestrator tools)
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n1)
[ -n "$VERSION" ] || { echo "build_images.sh: no version in pyproject.toml" >&2; exit 2; }

engine=${ENGINE:-}
if [ -z "$engine" ]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    engine=docker
  elif command -v buildah >/dev/null; then
    engine=buildah
  else
    cat >&2 <<'EOF'
build_images.sh: no container engine. Either a running Docker daemon, or buildah (root):
  apt-get install buildah debootstrap      # Debian 12 / Ubuntu 22.04 or newer
EOF
    exit 2
  fi
fi

# rootful buildah: its storage (/var/lib/containers) and debootstrap need root
if [ "$engine" = buildah ] && [ "$(id -u)" != 0 ]; then
  exec sudo --preserve-env=PYTHON_IMAGE,ENGINE,DEBIAN_MIRROR,DEBIAN_SECURITY_MIRROR,FORCE "$0" "${TARGETS[@]}"
fi

base_args=()
if [ -n "${PYTHON_IMAGE:-}" ]; then
  base_args=(--build-arg "PYTHON_IMAGE=$PYTHON_IMAGE")
elif [ "$engine" = buildah ]; then
  "$ROOT/docker/python-base.sh" "$STANDIN"
  base_args=(--build-arg "PYTHON_IMAGE=$STANDIN")
fi

for target in "${TARGETS[@]}"; do
  tag="couturier/$target:$VERSION"
  echo "build_images.sh: $engine builds $tag" >&2
  start=$(date +%s)
  case "$engine" in
    docker)
      DOCKER_BUILDKIT=1 docker build -f "$DOCKERFILE" --target "$target" -t "$tag" "${base_args[@]}" . ;;
    buildah)
      # --format docker keeps HEALTHCHECK (OCI image configs have no field for it); --pull=false
      # takes the base from local storage when it is there (the stand-in never is anywhere else)
      buildah bud --isolation chroot --layers --format docker --pull=false \
        -f "$DOCKERFILE" --target "$target" -t "$tag" "${base_args[@]}" . ;;
    *)
      echo "build_images.sh: unknown ENGINE=$engine (docker or buildah)" >&2; exit 2 ;;
  esac
  echo "build_images.sh: built $tag in $(( $(date +%s) - start )) s" >&2
done
