#!/usr/bin/env bash
# Create .venv-autofaiss: autofaiss 2.18 pinned with what it needs (numpy<2, pyarrow<18).
# It lives apart from .venv on purpose: the main environment needs numpy>=2 and must never import
# autofaiss. benchmarks/autofaiss_peer.py runs in it, on the same .npy vectors as our index.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
VENV="${VENV:-.venv-autofaiss}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "autofaiss==2.18.0" "numpy<2" "pyarrow<18"
"$VENV/bin/python" -c "import autofaiss, faiss, numpy; print('autofaiss env ok: faiss', faiss.__version__, 'numpy', numpy.__version__)"
