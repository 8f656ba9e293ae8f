#!/usr/bin/env bash
# Stop the daemons that start-local-cluster.sh started (only those: by their pid files in /run/okd-slurm,
# and only while each pid still runs the expected program). Jobs are cancelled first.
set -uo pipefail
RUN=/run/okd-slurm
alive() { local comm stat; read -r comm stat < <(ps -o comm=,stat= -p "$1" 2>/dev/null) || return 1
          [ "$comm" = "$2" ] && [ "${stat:0:1}" != Z ]; }
if pid=$(cat "$RUN/slurmctld.pid" 2>/dev/null) && alive "$pid" slurmctld; then
  squeue -h -o %i 2>/dev/null | xargs -r scancel 2>/dev/null
  for _ in $(seq 1 50); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.2; done
fi
for name in slurmd slurmctld slurmdbd mariadbd munged; do
  if pid=$(cat "$RUN/$name.pid" 2>/dev/null) && alive "$pid" "$name"; then
    kill "$pid"
    for _ in $(seq 1 150); do alive "$pid" "$name" || break; sleep 0.2; done
    if alive "$pid" "$name"; then kill -9 "$pid"; fi
    echo "stopped $name ($pid)"
  fi
  rm -f "$RUN/$name.pid"
done
