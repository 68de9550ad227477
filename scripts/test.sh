#!/usr/bin/env bash
# Install everything the tests need on a fresh Debian machine, then run them all:
# lint (ruff), types (mypy), and the pytest suite against a real distribution registry.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# The upstream registry, and every client the tests pull with. openssl makes test
# certificates; util-linux gives unshare/mount for the private namespaces some tests use.
need_apt=()
command -v docker-registry >/dev/null || need_apt+=(docker-registry)
command -v skopeo >/dev/null || need_apt+=(skopeo)
command -v dockerd >/dev/null || need_apt+=(docker.io)
command -v containerd >/dev/null || need_apt+=(containerd)
command -v podman >/dev/null || need_apt+=(podman)
command -v buildah >/dev/null || need_apt+=(buildah)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v unshare >/dev/null || need_apt+=(util-linux)
# The cluster tests coordinate their replicas through a real Redis (started per test).
command -v redis-server >/dev/null || need_apt+=(redis-server)
# The S3 tests run a real S3 server: Ceph's radosgw on a private one-monitor, one-OSD
# cluster in a temp dir (tests/support/s3_server.py).
command -v radosgw >/dev/null || need_apt+=(radosgw)
command -v ceph-mon >/dev/null || need_apt+=(ceph-mon)
command -v ceph-osd >/dev/null || need_apt+=(ceph-osd)
# The image test builds its own Debian base (no container registry is reachable), and the
# systemd unit in deploy/ is checked with systemd-analyze verify.
command -v mmdebstrap >/dev/null || need_apt+=(mmdebstrap)
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
# The status page's tests drive Debian's headless browser through chromedriver (selenium).
command -v chromium >/dev/null || need_apt+=(chromium)
command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
if [ ${#need_apt[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# Exactly the pinned set (requirements.lock, made by scripts/lock.sh), and an audit of it
# against the index's vulnerability data: a known vulnerability stops the run.
pip_install=(.venv/bin/pip install -q --disable-pip-version-check -c requirements.lock)
"${pip_install[@]}" pip setuptools
"${pip_install[@]}" -e '.[test]'
.venv/bin/python scripts/audit_deps.py requirements.lock

.venv/bin/ruff check .
.venv/bin/mypy
# The sdist and wheel a user would get (the image installs the same wheel, built from the
# same pyproject.toml), with metadata the package index would render.
dist="$(mktemp -d)"
.venv/bin/python -m build --outdir "$dist" . >"$dist/build.log" 2>&1 || { tail -n 40 "$dist/build.log"; exit 1; }
.venv/bin/twine check --strict "$dist"/*.whl "$dist"/*.tar.gz
.venv/bin/python -m pytest "$@"
# A bounded soak (scripts/soak.py): mixed pulls, hostile requests and upstream faults in turn;
# a wrong byte, a 500, or RSS/fd growth past its bounds stops the script. SOAK_MINUTES=0 skips.
if [ "${SOAK_MINUTES:-1}" != 0 ]; then
  soak_out="$(mktemp -d)"
  .venv/bin/python scripts/soak.py --minutes "${SOAK_MINUTES:-1}" --interval 15 \
    --json "$soak_out/soak.json"
fi
# Coverage-guided fuzzing of the parsers strangers feed, for a bounded time.
# A crash stops the script (set -e) with the input saved under the temp directory.
fuzz_out="$(mktemp -d)"
.venv/bin/python fuzz/fuzz_parsers.py -max_total_time="${FUZZ_SECONDS:-30}" \
  -artifact_prefix="$fuzz_out/" >"$fuzz_out/log" 2>&1 || { tail -n 40 "$fuzz_out/log"; exit 1; }
echo "fuzz: $(grep -o 'Done [0-9]* runs in [0-9]* second(s)' "$fuzz_out/log")"
