#!/usr/bin/env bash
# Creates ./.venv with gpumon and gpumon-agent installed from this checkout (editable).
#   bash scripts/bootstrap.sh          the two programs only
#   bash scripts/bootstrap.sh --test   plus kws, torch (local CPU wheel) and the test tools
#   bash scripts/bootstrap.sh --oldest ./.venv-oldest: the agent on the oldest releases its
#                                      ranges allow (agent/constraints-oldest.txt), for its tests
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ "${1:-}" = "--oldest" ]; then
  # Lab servers keep old libraries: nvidia-ml-py 11.450.51 and psutil 5.8.0 (built from sdists,
  # psutil with gcc). The central package too, for the agent tests that run `gpumon claim`.
  [ -x .venv-oldest/bin/python ] || "$python" -m venv .venv-oldest
  # pytest, pytest-timeout: the ranges of the test extra in pyproject.toml.
  .venv-oldest/bin/python -m pip install --quiet --disable-pip-version-check \
    -c agent/constraints-oldest.txt -e './agent[metrics]' -e . 'pytest>=8,<10' 'pytest-timeout>=2.3,<3'
  exit 0
fi
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
if [ "${1:-}" = "--test" ]; then
  # torch first, pinned: any other spec would download the CUDA build (GBs).
  "${pip[@]}" torch==2.13.0
  "${pip[@]}" -e './agent[metrics]' -e '.[test]' -e ./kws
else
  "${pip[@]}" -e ./agent -e .
fi
