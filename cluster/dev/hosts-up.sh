#!/bin/bash
# hosts-up.sh - a test cluster of four hosts on this one Linux machine, and a Slurm that spans them:
# for testing ray-grok's cluster path across a real network boundary (tests/test_hosts.py; CI
# brings it up before pytest) and for trying it by hand.
#
#   sudo cluster/dev/hosts-up.sh                   # about 5 s (Slurm packages: see slurm-up.sh)
#   sudo cluster/dev/on-host rgh0 sinfo            # a command on a host (here the login node)
#   sudo cluster/dev/on-host rgh0 ray-grok launch grids/smoke.yaml --cluster cluster/dev/hosts-slurm.yaml --wait
#   sudo cluster/dev/hosts-down.sh                 # stop and remove all of it
#
# A host is what a process of a real cluster node sees, made of Linux namespaces:
#   - its own network (a network namespace) with two interfaces on two private bridges:
#     eth0 on the management network ($NET.0/24; host names resolve to it, Slurm uses it) and
#     data0 on the data network ($DATA.0/24; the profile's ray.interface, like ib0 on a real site);
#     no default route, no link to this machine's own network: nothing leaves the bridges
#   - its own host name (UTS namespace) and /etc/hosts naming every host
#   - its own processes (PID namespace: /proc shows only them; a small init reaps orphans)
#   - its own /tmp and /dev/shm (node-local disk and shared memory; Ray's temp dirs and sockets)
#   - and, like the nodes of a real cluster, one shared file system: everything else, including
#     $LAB/shared (run directories), the repository and the Python environment.
# The bridges live in a namespace of their own (rgh-sw), so this machine's network namespace gets
# no interface, address or route at all.
#
# Hosts:  rgh0 login node, slurmctld and munged  ($NET.10)
#         rgh1 compute node, slurmd               ($NET.11, data $DATA.11)
#         rgh2 compute node, slurmd               ($NET.12, data $DATA.12)
#         rgh3 not part of the cluster: a stranger on the same networks ($NET.13, data $DATA.13)
# The Slurm is separate from cluster/dev/slurm-up.sh's (which may run at the same time): its own
# munged (own key and socket), config ($LAB/slurm/slurm.conf, through SLURM_CONF), ports, spool
# and state. on-host sets SLURM_CONF and puts $LAB/bin (the sacct stand-in) first on PATH.
# Everything is started under the hosts' inits, so stopping an init stops all of its host.
#
# Must run as root. Idempotent: hosts already up are left alone. Environment:
#   LAB=/var/tmp/ray-grok-hosts   state, logs, the hosts' /tmp and the shared run directories (not
#                                 under /tmp: a host's /tmp is its own)
#   NET=10.213.14  DATA=10.213.15 the two private /24 networks (used inside the namespaces only)
#   SLURM=1                       0: hosts only, no Slurm
set -euo pipefail
LAB=${LAB:-/var/tmp/ray-grok-hosts}
NET=${NET:-10.213.14}
DATA=${DATA:-10.213.15}
SLURM=${SLURM:-1}
HOSTS=(rgh0 rgh1 rgh2 rgh3)
COMPUTE=(rgh1 rgh2)
SW=rgh-sw
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)  # the checkout, which every host must see at its own path
PY=$(python3 -c 'import sys; print(sys.executable)')  # the real interpreter, not a pyenv shim

now_ms() { echo $(($(date +%s%N) / 1000000)); }
since() { local d=$(($(now_ms) - $1)); printf '%d.%01d' $((d / 1000)) $((d % 1000 / 100)); }
say() { echo "[hosts-up] $*"; }
fail() { say "$*"; mkdir -p "$LAB"; echo "$*" > "$LAB/failed"; exit 1; }
init_alive() { [ -s "$LAB/run/$1.init" ] && kill -0 "$(cat "$LAB/run/$1.init")" 2>/dev/null; }

[ "$(id -u)" = 0 ] || fail "must run as root (it creates network namespaces and starts daemons)"
case "$LAB" in /tmp|/tmp/*) fail "LAB=$LAB: must not be under /tmp (each host has its own /tmp)";; esac
command -v ip >/dev/null && command -v nsenter >/dev/null && command -v unshare >/dev/null \
  || fail "needs ip (iproute2), nsenter and unshare (util-linux)"
T_ALL=$(now_ms)

up=0
for h in "${HOSTS[@]}"; do init_alive "$h" && up=$((up + 1)); done
if [ "$up" = "${#HOSTS[@]}" ] && [ -s "$LAB/hosts.json" ]; then
  say "already up (${HOSTS[*]}); stop with $HERE/hosts-down.sh"; exit 0
fi
if [ "$up" != 0 ] || ip netns list 2>/dev/null | grep -qw "$SW"; then
  # the namespace names are fixed: leftovers of this LAB are torn down, another LAB's are not touched
  ls "$LAB"/run/*.init >/dev/null 2>&1 \
    || fail "network namespaces of test hosts exist but $LAB has no record of them: another LAB's? (stop them with LAB=... $HERE/hosts-down.sh)"
  say "partly up: tearing down first"; LAB=$LAB bash "$HERE/hosts-down.sh"
fi
rm -rf "$LAB"/run "$LAB"/log "$LAB"/slurm "$LAB"/munge "$LAB"/host "$LAB"/etc-hosts "$LAB"/failed "$LAB"/hosts.json
mkdir -p "$LAB"/{run,log,bin,shared} "$LAB"/slurm/{ctld,spool,log,run}
chmod 0755 "$LAB"

# --- 1. networks: a switch namespace with two bridges, a veth pair per host and network ----------
T=$(now_ms)
ip netns add "$SW" || fail "cannot create a network namespace (ip netns add: no CAP_SYS_ADMIN, or no netns support)"
ip -n "$SW" link set lo up
for br in br-mgmt br-data; do
  ip -n "$SW" link add "$br" type bridge || fail "cannot create a bridge in a namespace"
  ip -n "$SW" link set "$br" up
done
{ echo "127.0.0.1 localhost"; for i in "${!HOSTS[@]}"; do echo "$NET.$((10 + i)) ${HOSTS[$i]}"; done; } > "$LAB/etc-hosts"
for i in "${!HOSTS[@]}"; do
  h=${HOSTS[$i]}
  ip netns add "$h"
  ip -n "$h" link set lo up
  # created in the switch namespace with the peer directly in the host's: never in this machine's
  ip -n "$SW" link add "m$i" type veth peer name eth0 netns "$h" || fail "cannot create a veth pair"
  ip -n "$SW" link add "d$i" type veth peer name data0 netns "$h"
  ip -n "$SW" link set "m$i" master br-mgmt up
  ip -n "$SW" link set "d$i" master br-data up
  ip -n "$h" addr add "$NET.$((10 + i))/24" dev eth0
  ip -n "$h" addr add "$DATA.$((10 + i))/24" dev data0
  ip -n "$h" link set eth0 up
  ip -n "$h" link set data0 up
done
say "networks: ${HOSTS[*]} on $NET.0/24 (eth0) and $DATA.0/24 (data0), bridged in namespace $SW, in $(since "$T") s"

# --- 2. hosts: an init per host in its own UTS, PID and mount namespaces -------------------------
# The init is PID 1 of the host: it reaps orphans (as a real init does) and exits on SIGTERM, which
# makes the kernel kill every other process of the host.
INIT='import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(1)'
# `ip netns exec` gives the host a fresh /sys without this machine's cgroup mounts, which slurmd
# needs: the same mounts again (a cgroup hierarchy can be mounted in several places)
CGROUPS=$(awk '$2 ~ "^/sys/fs/cgroup" {printf "mkdir -p %s && mount -t %s -o %s %s %s && ", $2, $3, $4, $1, $2}' /proc/self/mounts)
T=$(now_ms)
for h in "${HOSTS[@]}"; do
  mkdir -p "$LAB/host/$h/tmp"; chmod 1777 "$LAB/host/$h/tmp"
  # A checkout under /tmp (a CI clone) would be hidden by the host's own /tmp: inside the host's
  # mount namespace only, it is bound at the same path within that /tmp (hence --rbind below)
  KEEP=true
  case "$REPO" in /tmp/?*) KEEP="mkdir -p $LAB/host/$h/tmp/${REPO#/tmp/} && mount --bind $REPO $LAB/host/$h/tmp/${REPO#/tmp/}";; esac
  # cd / first: the caller's directory may be under /tmp, which the host does not see
  setsid ip netns exec "$h" unshare --uts --pid --mount --fork --propagation private --mount-proc \
    bash -c "cd / && hostname $h && $KEEP && mount --rbind $LAB/host/$h/tmp /tmp \
             && mount -t tmpfs -o size=1g,mode=1777 tmpfs /dev/shm && mount --bind $LAB/etc-hosts /etc/hosts \
             && $CGROUPS exec $PY -c '$INIT'" </dev/null >"$LAB/log/$h.init.log" 2>&1 &
  echo $! > "$LAB/run/$h.unshare"
done
for h in "${HOSTS[@]}"; do  # the init is the child of unshare; its PID here is what nsenter needs
  u=$(cat "$LAB/run/$h.unshare"); pid=""
  for _ in $(seq 50); do
    pid=$(ps -o pid= --ppid "$u" | tr -d ' ' | head -1)
    [ -n "$pid" ] && [ "$(ps -o args= -p "$pid" | cut -c1-${#PY})" = "$PY" ] && break
    pid=""; sleep 0.1
  done
  [ -n "$pid" ] || fail "host $h did not start: $(cat "$LAB/log/$h.init.log")"
  echo "$pid" > "$LAB/run/$h.init"
done
on() { LAB=$LAB "$HERE/on-host" "$@"; }
for h in "${HOSTS[@]}"; do
  [ "$(on "$h" hostname)" = "$h" ] || fail "host $h: wrong host name"
done
say "hosts: $(for h in "${HOSTS[@]}"; do printf '%s (init %s) ' "$h" "$(cat "$LAB/run/$h.init")"; done)in $(since "$T") s"

# the data network carries traffic between hosts (Slurm's registration below tests the other one)
on rgh1 "$PY" -c "import socket; s = socket.create_server(('$DATA.11', 7999)); s.settimeout(10); s.accept()" &
LISTENER=$!
for _ in $(seq 50); do
  on rgh2 "$PY" -c "import socket; socket.create_connection(('$DATA.11', 7999), timeout=2)" 2>/dev/null && break
  sleep 0.1
done
wait "$LISTENER" || fail "rgh2 cannot reach rgh1 on the data network ($DATA.11)"

write_json() {
  "$PY" - "$LAB" "$NET" "$DATA" "$1" "${HOSTS[@]}" <<'EOF'
import json, sys
lab, net, data, slurm, *hosts = sys.argv[1:]
info = {"lab": lab, "shared": f"{lab}/shared", "slurm": slurm == "1",
        "slurm_conf": f"{lab}/slurm/slurm.conf" if slurm == "1" else None,
        "roles": {"rgh0": "login", "rgh1": "compute", "rgh2": "compute", "rgh3": "stranger"},
        "hosts": {h: {"init": int(open(f"{lab}/run/{h}.init").read()), "ip": f"{net}.{10 + i}",
                      "data_ip": f"{data}.{10 + i}"} for i, h in enumerate(hosts)}}
with open(f"{lab}/hosts.json.tmp", "w") as f:
    json.dump(info, f, indent=1)
EOF
  mv "$LAB/hosts.json.tmp" "$LAB/hosts.json"
}
if [ "$SLURM" != 1 ]; then
  write_json 0; say "up (no Slurm) in $(since "$T_ALL") s; stop with $HERE/hosts-down.sh"; exit 0
fi

# --- 3. Slurm: packages, munged, slurm.conf ------------------------------------------------------
for bin in slurmctld slurmd sbatch munged; do
  command -v "$bin" >/dev/null || fail "no $bin: install Slurm first (cluster/dev/slurm-up.sh does, as root)"
done
T=$(now_ms)
# its own munged: own key and socket, so the dev Slurm's munged can come and go
install -d -o munge -g munge -m 0755 "$LAB/munge"  # clients need x on the socket dir
dd if=/dev/urandom of="$LAB/munge/munge.key" bs=1024 count=1 status=none
chown munge:munge "$LAB/munge/munge.key"; chmod 0400 "$LAB/munge/munge.key"
on rgh0 runuser -u munge -- /usr/sbin/munged --socket="$LAB/munge/munge.socket" --key-file="$LAB/munge/munge.key" \
  --pid-file="$LAB/munge/munged.pid" --log-file="$LAB/munge/munged.log" --seed-file="$LAB/munge/munged.seed"
for _ in $(seq 50); do munge -S "$LAB/munge/munge.socket" -n 2>/dev/null | unmunge -S "$LAB/munge/munge.socket" >/dev/null 2>&1 && break; sleep 0.1; done
munge -S "$LAB/munge/munge.socket" -n | unmunge -S "$LAB/munge/munge.socket" >/dev/null || fail "munged did not start: $(tail -5 "$LAB/munge/munged.log")"

# every compute host gets the same share of this machine (they all share its CPUs)
eval "$(slurmd -C | head -1 | tr ' ' '\n' | grep -E '^(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=')"
cat > "$LAB/slurm/slurm.conf" <<EOF
# Slurm across the test hosts of ray-grok's cluster/dev/hosts-up.sh (generated; rerun it after editing).
# Separate from cluster/dev/slurm-up.sh's: own cluster name, munged, ports, spool and state.
ClusterName=raygrokhosts
SlurmctldHost=rgh0($NET.10)
SlurmctldPort=6917
SlurmdPort=6918
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$LAB/munge/munge.socket,cred_expire=10
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=5,sched_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
KillWait=30
MinJobAge=300
ReturnToService=2
StateSaveLocation=$LAB/slurm/ctld
SlurmdSpoolDir=$LAB/slurm/spool/%n
SlurmctldPidFile=$LAB/slurm/run/slurmctld.pid
SlurmdPidFile=$LAB/slurm/run/slurmd.%n.pid
SlurmctldLogFile=$LAB/slurm/log/slurmctld.log
SlurmdLogFile=$LAB/slurm/log/slurmd.%n.log
$(for h in "${COMPUTE[@]}"; do
  i=${h#rgh}
  echo "NodeName=$h NodeAddr=$NET.$((10 + i)) NodeHostname=$h CPUs=$CPUs Boards=$Boards SocketsPerBoard=$SocketsPerBoard CoresPerSocket=$CoresPerSocket ThreadsPerCore=$ThreadsPerCore RealMemory=1000 State=UNKNOWN"
done)
PartitionName=hosts Nodes=$(IFS=,; echo "${COMPUTE[*]}") Default=YES MaxTime=INFINITE State=UP
EOF
for h in "${COMPUTE[@]}"; do mkdir -p "$LAB/slurm/spool/$h"; done
install -m 0755 "$HERE/sacct" "$LAB/bin/sacct"  # no accounting database: see cluster/dev/sacct

# --- 4. daemons: slurmctld on the login host, a slurmd on each compute host --------------------------
on rgh0 /usr/sbin/slurmctld  # daemonizes; its parent becomes rgh0's init
for h in "${COMPUTE[@]}"; do on "$h" /usr/sbin/slurmd -N "$h"; done
ST=""
for _ in $(seq 150); do
  ST=$(on rgh0 sinfo -h -o '%T' 2>/dev/null | sort -u | tr '\n' ' ' || true)
  [ "$(on rgh0 sinfo -h -t idle -o '%D' 2>/dev/null | head -1)" = "${#COMPUTE[@]}" ] && break
  sleep 0.2
done
[ "$(on rgh0 sinfo -h -t idle -o '%D' 2>/dev/null | head -1)" = "${#COMPUTE[@]}" ] \
  || fail "Slurm nodes not idle ($ST): $(tail -5 "$LAB/slurm/log/slurmctld.log")"
say "Slurm: slurmctld on rgh0, slurmd on ${COMPUTE[*]}, munged with its own key, in $(since "$T") s"
on rgh0 sinfo -o '%P %a %l %D %T %N'
write_json 1
say "up in $(since "$T_ALL") s; run on a host: $HERE/on-host HOST CMD...; stop: $HERE/hosts-down.sh"
