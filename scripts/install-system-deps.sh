#!/usr/bin/env bash
# System packages the test suite needs beyond the Python venv, all from Debian 12:
# - a real Slurm (22.05) and munge, for the `slurm` tests (tests/slurm/), which start a throw-away
#   local cluster themselves;
# - Prometheus Alertmanager (`alertmanager` tests), Prometheus (`prometheus` tests) and Chromium
#   (`browser` tests: the HTML report rendered headless), each started by the tests on 127.0.0.1.
#
# Idempotent: does nothing when every binary is already there. Needs root (or passwordless sudo) and
# apt; on a machine without either it says so and exits 0, and the slurm tests skip themselves.
# No daemon is started or enabled here (Debian does not start them without systemd anyway).
set -euo pipefail

BINARIES=(slurmctld slurmd sbatch squeue sinfo scontrol scancel munged mungekey
          prometheus-alertmanager prometheus chromium)
PACKAGES=(slurmctld slurmd slurm-client munge prometheus-alertmanager prometheus chromium)

missing=()
for b in "${BINARIES[@]}"; do
    command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || missing+=("$b")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-system-deps: apt-get not found; install ${PACKAGES[*]} by hand (missing: ${missing[*]})." >&2
    echo "install-system-deps: the slurm tests will be skipped." >&2
    exit 0
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        echo "install-system-deps: not root and no passwordless sudo; missing: ${missing[*]}." >&2
        echo "install-system-deps: the slurm tests will be skipped." >&2
        exit 0
    fi
fi

echo "install-system-deps: installing ${PACKAGES[*]} (missing: ${missing[*]})"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"
