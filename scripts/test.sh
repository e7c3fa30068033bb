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
# kws synth's other engines and their voices (tests/kws use all three engines)
command -v flite >/dev/null || need+=(flite)
command -v festival >/dev/null || need+=(festival)
# ... and kws realvoice's recordings
for pkg in festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts pocketsphinx-testdata; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
command -v systemd-analyze >/dev/null || need+=(systemd)  # the units' checks; journald for log priorities
command -v zsh >/dev/null || need+=(zsh)  # `gpumon completion zsh` is loaded by a real zsh
# A real Prometheus for tests/prometheus (promtool comes with it); amtool checks the
# Alertmanager example (deploy/prometheus/).
command -v prometheus >/dev/null || need+=(prometheus)
command -v amtool >/dev/null || need+=(prometheus-alertmanager)
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
