#!/usr/bin/env bash
# Refresh requirements.lock: resolve the runtime and test dependencies in pyproject.toml (and the
# venv's own pip and setuptools) to their newest releases in a throwaway venv, and pin what
# got installed. scripts/test.sh and the README install against this file, and
# scripts/audit_deps.py audits exactly it, so what is audited is what runs.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp" build' EXIT  # pip builds the project in ./build
"$PYTHON" -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q --disable-pip-version-check -U pip setuptools
"$tmp/venv/bin/pip" install -q --disable-pip-version-check '.[test]'
{
  echo "# Every package the mirror and its tests install, pinned. Made by scripts/lock.sh;"
  echo "# audited in CI by scripts/audit_deps.py. Python $("$tmp/venv/bin/python" -c 'import platform; print(platform.python_version())')."
  "$tmp/venv/bin/pip" freeze --all --exclude pullthrough | LC_ALL=C sort -f -t= -k1,1
} >requirements.lock
echo "requirements.lock: $(grep -c '==' requirements.lock) packages"
