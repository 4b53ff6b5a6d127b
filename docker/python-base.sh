#!/usr/bin/env bash
# Stand-in for python:3.11-slim-bookworm, built from Debian packages with buildah, for machines that
# reach Debian mirrors and PyPI but no container registry. Usage (root, buildah and debootstrap installed):
#
#   docker/python-base.sh [TAG]        # default TAG: localhost/couturier-python:3.11-bookworm
#
# What it holds: a `debootstrap --variant=minbase bookworm` root file system plus python3 (3.11),
# python3-venv and ca-certificates, and a virtual environment at /opt/python whose bin/ comes first on
# PATH, so `python`, `python3` and `pip` resolve there as in the official image (Debian's own python3
# refuses `pip install` into the system, PEP 668). CA certificates the host added under
# /usr/local/share/ca-certificates (a TLS-intercepting proxy's, say) are copied in so pip can reach
# PyPI from inside builds; /etc/pip.conf points pip at the system bundle.
#
# Idempotent: an existing TAG is kept (FORCE=1 rebuilds). Variables: DEBIAN_MIRROR (default
# http://deb.debian.org/debian), DEBIAN_SECURITY_MIRROR (default http://deb.debian.org/debian-security).
set -euo pipefail

TAG=${1:-localhost/couturier-python:3.11-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
VENV=/opt/python

for tool in buildah debootstrap; do
  command -v "$tool" >/dev/null || { echo "python-base.sh: $tool missing (apt-get install buildah debootstrap)" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "python-base.sh: run as root (debootstrap creates device nodes and owners)" >&2; exit 2; }

if [ "${FORCE:-0}" != 1 ] && buildah inspect --type image "$TAG" >/dev/null 2>&1; then
  echo "python-base.sh: $TAG exists (FORCE=1 rebuilds)"
  exit 0
fi

ctr=$(buildah from scratch)
cleanup() { buildah umount "$ctr" >/dev/null 2>&1 || true; buildah rm "$ctr" >/dev/null 2>&1 || true; }
trap cleanup EXIT
root=$(buildah mount "$ctr")

echo "python-base.sh: debootstrap bookworm (minbase) into $root from $MIRROR"
debootstrap --variant=minbase --include=ca-certificates bookworm "$root" "$MIRROR"

cat >"$root/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb $SECURITY_MIRROR bookworm-security main
EOF
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
fi
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$root/etc/pip.conf"
# the chroot needs a resolver for apt; the image gets the runtime's own at run time
cp /etc/resolv.conf "$root/etc/resolv.conf"

in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"; }
in_root apt-get update -qq
in_root apt-get upgrade -y -qq
in_root apt-get install -y -qq --no-install-recommends python3 python3-venv ca-certificates
in_root update-ca-certificates >/dev/null
in_root python3 -m venv "$VENV"
in_root "$VENV/bin/python" -c "import ssl, venv, ensurepip, sqlite3; print('python', __import__('sys').version.split()[0])"
in_root apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/apt/* "$root"/var/log/*.log \
  "$root"/tmp/* "$root"/root/.cache
: >"$root/etc/resolv.conf"

buildah config \
  --env "PATH=$VENV/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
  --env LANG=C.UTF-8 \
  --cmd python3 \
  --label "org.opencontainers.image.description=couturier stand-in for python:3.11-slim-bookworm (debootstrap minbase + python3, venv at $VENV)" \
  "$ctr"
buildah umount "$ctr" >/dev/null
buildah commit --rm "$ctr" "$TAG"
trap - EXIT
echo "python-base.sh: built $TAG"
