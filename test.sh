#!/usr/bin/env bash
# The test command: sets up what the tests need, then runs them. Safe to run by hand, again and again:
#   - the install (install.sh: .venv reused, installed packages skipped);
#   - Debian's SLURM, munge and MariaDB for the tests marked `slurm` (apt-get, with sudo when not root; only when
#     one of them is missing; tests/slurm_cluster.py starts and stops the daemons itself, without systemd);
#   - ruff (pyproject.toml), then pytest on two workers. Extra arguments go to pytest (bash test.sh -k grid).
# The quick loop, without SLURM: . .venv/bin/activate && python -m pytest tests -m "not slurm" -n 2 --dist loadfile
set -euo pipefail
cd "$(dirname "$0")"

if [[ ! -d ../shared/data ]]; then
  echo "error: ../shared/data is missing; the tests read the real BabyLM and BLiMP files there" >&2
  exit 1
fi
bash install.sh

export PATH="$PATH:/usr/sbin:/sbin"  # the SLURM and MariaDB daemons live in sbin
SLURM_PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server)
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! command -v mariadbd >/dev/null \
   || ! command -v slurmdbd >/dev/null; then
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${SLURM_PACKAGES[@]}"
fi
# Debian starts the packaged services where systemd runs; the tests need the ports to themselves.
for svc in slurmctld slurmd slurmdbd munge mariadb; do
  (command -v systemctl >/dev/null && systemctl stop "$svc" 2>/dev/null) || true
done

.venv/bin/ruff check .  # pyflakes rules and 120 columns (pyproject.toml); a finding stops here

set +e
# --no-loadscope-reorder: files in collection order (the SLURM file first, tests/conftest.py), not xdist's default of
# the files with the most tests first, which left the longest file (SLURM, ~7 min) to end the run alone.
# --max-worker-restart=0: a worker ended by the hang backstop (tests/conftest.py) ends the run, not retried.
.venv/bin/python -m pytest tests -n 2 --dist loadfile --no-loadscope-reorder --max-worker-restart=0 -ra \
  --durations=40 "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit $rc
