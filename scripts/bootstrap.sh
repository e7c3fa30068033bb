#!/usr/bin/env bash
# Creates ./.venv with gpumon and gpumon-agent installed from this checkout (editable).
#   bash scripts/bootstrap.sh          the two programs only
#   bash scripts/bootstrap.sh --test   plus kws, torch (local CPU wheel) and the test tools
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
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
