#!/usr/bin/env bash
# Chart tests: renders helm/aegis with the real Helm (embedded in the PyPI
# package helm-python-sdk), lints it, validates every manifest against the
# Kubernetes schemas (kubernetes-validate, offline) and checks what matters.
# Needs python3 >= 3.10 with venv and, the first time, access to PyPI.
# The virtualenv lives outside the clone (AEGIS_PY_VENV) and pip runs only when
# tests/helm/requirements.txt (or the Python version) changed since the last
# install. Extra arguments go to pytest (e.g. -k keda).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${AEGIS_PY_VENV:-$HOME/.cache/aegis-venv}"
requirements=tests/helm/requirements.txt
python="${PYTHON:-python3}"

have() { command -v "$1" >/dev/null 2>&1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif have sudo; then sudo "$@"; else return 1; fi; }

# A fresh Debian machine may lack python3 or its venv module: install them.
if { ! have "$python" || ! "$python" -c 'import ensurepip, venv' 2>/dev/null; } && have apt-get; then
  echo "test-helm: installing the Debian packages python3 and python3-venv" >&2
  as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv || true
fi
if ! have "$python"; then
  echo "test-helm: $python not found; install Python 3.10+ with its venv module" >&2
  exit 1
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "test-helm: $("$python" --version) is too old; helm-python-sdk needs Python 3.10+" >&2
  exit 1
fi

# The stamp is per requirements file, so other tools may share the virtualenv.
want="$(sha256sum "$requirements" | cut -d' ' -f1) $("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
stamp="$venv/.aegis-helm-requirements"
if [ ! -x "$venv/bin/python" ]; then
  echo "test-helm: creating the virtualenv $venv"
  mkdir -p "$(dirname "$venv")"
  if ! "$python" -m venv "$venv"; then
    rm -rf "$venv"
    echo "test-helm: '$python -m venv' failed; on Debian: apt-get install python3-venv" >&2
    exit 1
  fi
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "test-helm: installing $requirements into $venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
  echo "$want" >"$stamp"
fi

exec "$venv/bin/python" -m pytest tests/helm -p no:cacheprovider "$@"
