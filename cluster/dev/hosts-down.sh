#!/bin/bash
# hosts-down.sh - stop and remove what hosts-up.sh made: each host's init gets SIGTERM (its exit
# makes the kernel kill every process of the host: Slurm daemons, munged, jobs, Ray), then SIGKILL
# after 10 s; then the network namespaces go (and with them every interface and address).
# Nothing is stopped by name; an init is only signalled while it still is that host's.
#   env: LAB=/var/tmp/ray-grok-hosts   PURGE=1 also deletes $LAB (logs, the hosts' /tmp, shared runs)
set -u
LAB=${LAB:-/var/tmp/ray-grok-hosts}
HOSTS=(rgh0 rgh1 rgh2 rgh3)
SW=rgh-sw
say() { echo "[hosts-down] $*"; }
[ "$(id -u)" = 0 ] || { say "must run as root"; exit 1; }
ours() {  # $1 host, $2 pid: the pid is alive and in the host's network namespace
  [ -n "$2" ] && [ "$(stat -L -c %i "/proc/$2/ns/net" 2>/dev/null)" = "$(stat -L -c %i "/run/netns/$1" 2>/dev/null)" ]
}
pids=()
for h in "${HOSTS[@]}"; do
  p=$(cat "$LAB/run/$h.init" 2>/dev/null || true)
  if ours "$h" "$p"; then kill -TERM "$p"; pids+=("$h:$p"); fi
done
for hp in "${pids[@]}"; do
  h=${hp%%:*}; p=${hp#*:}
  for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$p" 2>/dev/null; then kill -KILL "$p"; say "$h: init $p killed"; else say "$h: stopped (init $p)"; fi
done
for ns in "${HOSTS[@]}" "$SW"; do
  if ip netns list | grep -qw "$ns"; then ip netns del "$ns" && say "removed network namespace $ns"; fi
done
rm -f "$LAB/hosts.json" "$LAB"/run/*.init "$LAB"/run/*.unshare
if [ "${PURGE:-0}" = 1 ]; then rm -rf "$LAB"; say "purged $LAB"; fi
exit 0
