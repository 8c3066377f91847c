#!/bin/bash
# slurm-down.sh - stop what slurm-up.sh started: cancel every job (while the daemons can still
# deliver the signals), then stop slurmd, slurmctld and munged by their PID files (TERM, KILL
# after 10 s), and remove the sacct stand-in link. Never stops anything by process name.
#   env: LAB=/tmp/ray-grok-slurm   PURGE=1 also deletes Slurm's state and logs under $LAB
#        KEEP_MUNGE=1              leave munged running
set -u
LAB=${LAB:-/tmp/ray-grok-slurm}
say() { echo "[slurm-down] $*"; }
stop_pidfile() {  # $1 pidfile, $2 expected command name
  local f=$1 name=$2 p
  [ -s "$f" ] || { say "$name: no pidfile ($f)"; return 0; }
  p=$(cat "$f")
  if kill -0 "$p" 2>/dev/null && [ "$(cat /proc/"$p"/comm 2>/dev/null)" = "$name" ]; then
    kill -TERM "$p"
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$p" 2>/dev/null; then kill -KILL "$p"; say "$name ($p) killed"; else say "$name ($p) stopped"; fi
  else
    say "$name: pid $p not running"
  fi
}
[ "$(id -u)" = 0 ] || { say "must run as root"; exit 1; }
# job processes (slurmstepd and its tasks) outlive slurmd: cancel jobs while the daemons are up,
# and wait past KillWait so every task got its SIGTERM and, if needed, its SIGKILL
if running_ctld=$(cat "$LAB/run/slurmctld.pid" 2>/dev/null) && kill -0 "$running_ctld" 2>/dev/null \
   && squeue -h >/dev/null 2>&1; then
  jobs=$(squeue -h -o %i)
  if [ -n "$jobs" ]; then
    # shellcheck disable=SC2086
    scancel --quiet $jobs
    for _ in $(seq 90); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.5; done
    say "cancelled jobs: $(echo $jobs); still listed: $(squeue -h -o %i | wc -l)"
  else
    say "no jobs"
  fi
fi
stop_pidfile "$LAB/run/slurmd.pid" slurmd
stop_pidfile "$LAB/run/slurmctld.pid" slurmctld
if [ "${KEEP_MUNGE:-0}" != 1 ]; then stop_pidfile /run/munge/munged.pid munged; fi
if [ "$(readlink /usr/local/bin/sacct 2>/dev/null)" = "$LAB/bin/sacct" ]; then
  rm -f /usr/local/bin/sacct; say "removed the sacct stand-in link"
fi
if [ "${PURGE:-0}" = 1 ]; then rm -rf "$LAB"/spool "$LAB"/log "$LAB"/run "$LAB"/bin; say "state purged ($LAB)"; fi
exit 0
