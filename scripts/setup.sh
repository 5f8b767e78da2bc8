#!/usr/bin/env bash
# Make .venv hold torch and a build of hail_ext (editable), installing only what is missing.
#
#   HAIL_TORCH   the torch requirement to install when .venv has none (default torch==2.13.0;
#                any torch >= 2.4 works; a CUDA build of torch plus nvcc also builds the kernels)
#   HAIL_VENV    the virtual environment (default .venv)
#   PYTHON       the interpreter that creates it (default python3)
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${HAIL_VENV:-.venv}
torch_spec=${HAIL_TORCH:-torch==2.13.0}

[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
pip() { "$venv/bin/python" -m pip --disable-pip-version-check -q "$@"; }

if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  echo "setup: installing $torch_spec into $venv"
  pip install "$torch_spec"
fi

# The extension compiles against the torch above, so the build runs without isolation.
pip install "scikit-build-core>=0.10" "pybind11>=2.12" ninja cmake
echo "setup: building hail_ext (first build takes a few minutes)"
pip install --no-build-isolation -e ".[test]"
"$venv/bin/python" -c "import hail_ext; print('setup: hail_ext', hail_ext.build_info())"
