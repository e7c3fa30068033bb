#!/usr/bin/env bash
# The whole test suite from a fresh clone: system packages, the venv, lint, the Python 3.8
# check of the agent, then pytest (extra arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
command -v gcc >/dev/null || need+=(gcc libc6-dev)
# psutil 5.8.0 (the oldest the agent allows) builds from its sdist against Python's headers.
python3 -c 'import os, sysconfig; os.stat(sysconfig.get_paths()["include"] + "/Python.h")' \
  2>/dev/null || need+=(python3-dev)
command -v espeak-ng >/dev/null || need+=(espeak-ng)
command -v sox >/dev/null || need+=(sox)
command -v systemd-analyze >/dev/null || need+=(systemd)  # checks deploy/systemd/gpumon-agent.service
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "installing system packages: ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

bash scripts/bootstrap.sh --test
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# Lab servers run old Pythons: the agent must need nothing newer than 3.8.
.venv/bin/vermin --no-tips --violations --target=3.8- --eval-annotations agent/gpumon_agent
# Commands above gpumon.fleet above gpumon.sheet above gpumon.poll above the agent
# ([tool.importlinter] in pyproject.toml), and no import cycles (lazy imports count).
.venv/bin/lint-imports --no-cache
python3 ../shared/tools/import_cycles.py . agent/gpumon_agent gpumon kws/kws
.venv/bin/python -m pytest "$@"
# The agent's tests again on the oldest nvidia-ml-py, psutil and prometheus-client its ranges
# allow (agent/constraints-oldest.txt), against the same fake NVML: lab servers are old.
bash scripts/bootstrap.sh --oldest
.venv-oldest/bin/python -m pytest tests/agent
