#!/usr/bin/env bash
# Chart tests: renders helm/aegis with the real Helm (embedded in the PyPI
# package helm-python-sdk), lints it, validates every manifest against the
# Kubernetes schemas and checks what matters. Needs python3 (3.9+) and, the
# first time, access to PyPI. The virtualenv lives outside the clone
# (AEGIS_PY_VENV) and is reinstalled only when tests/helm/requirements.txt
# changes. Extra arguments go to pytest (e.g. -k keda).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${AEGIS_PY_VENV:-$HOME/.cache/aegis-venv}"
requirements=tests/helm/requirements.txt
python="${PYTHON:-python3}"

if ! command -v "$python" >/dev/null 2>&1; then
  echo "test-helm: $python not found; install python3 (Debian: apt-get install python3 python3-venv)" >&2
  exit 1
fi

want="$(sha256sum "$requirements" | cut -d' ' -f1) $("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
stamp="$venv/.aegis-requirements"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "test-helm: installing $requirements into $venv"
  rm -rf "$venv"
  if ! "$python" -m venv "$venv" 2>/dev/null; then
    echo "test-helm: python3 -m venv failed; on Debian: apt-get install python3-venv" >&2
    exit 1
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
  echo "$want" >"$stamp"
fi

exec "$venv/bin/python" -m pytest tests/helm -p no:cacheprovider "$@"
