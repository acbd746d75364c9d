#!/usr/bin/env bash
# The run command: builds tandem and runs a two-node replicated volume on this machine from an
# embedded default config: nodes "alpha" (127.0.0.1) and "beta" (127.0.0.2), one tandemd each
# (run directories $TANDEM_RUN_DIR/alpha and /beta), DRBD's first-sync workflow (create-md and
# up on both, primary --force on alpha, full resync to beta), the volume exported over NBD on
# alpha, and the status of both nodes as DRBD shows it.
# Usage: scripts/run.sh [SIZE]   (default 1G); Ctrl-C takes r0 down on both and stops the daemons.
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-1G}
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"; fi
if ! command -v nbdinfo >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get update -qq && apt-get install -y -qq libnbd-bin >/dev/null
fi
cargo build --release --quiet -p drbdadm-compat -p tandemd -p nbd-server
run=${TANDEM_RUN_DIR:-/run/tandem}
data=${TANDEM_DATA_DIR:-/var/lib/tandem/quickstart}
mkdir -p "$run/alpha" "$run/beta" "$data"
conf="$data/r0.res"
cat >"$conf" <<RES
# tandem quickstart: two nodes on one machine, told apart by TANDEM_NODE.
resource r0 {
  protocol C;
  net  { connect-int 1; ping-int 2; }
  disk { resync-rate 1000M; }
  on alpha {
    device    /dev/drbd0;
    disk      $data/alpha.img;
    address   127.0.0.1:7789;
    meta-disk internal;
  }
  on beta {
    device    /dev/drbd0;
    disk      $data/beta.img;
    address   127.0.0.2:7789;
    meta-disk internal;
  }
}
RES
drbdadm=target/release/drbdadm
on() { local n=$1; shift; TANDEM_NODE=$n TANDEM_RUN_DIR=$run/$n $drbdadm -c "$conf" "$@"; }
fresh=0
for n in alpha beta; do
  [ -e "$data/$n.img" ] || truncate -s "$size" "$data/$n.img"
  if ! on $n get-gi r0 >/dev/null 2>&1; then
    echo "--- $n: drbdadm create-md r0"
    on $n create-md r0
    fresh=1
  fi
done
stop() {
  for n in alpha beta; do
    echo "--- $n: drbdadm down r0"
    on $n down r0 || true
    pkill -F "$run/$n/tandemd.lock" 2>/dev/null || true
  done
}
trap stop EXIT
for n in alpha beta; do
  echo "--- $n: drbdadm up r0"
  on $n up r0
done
wait_for() { # NODE COMMAND EXPECTED: poll until `drbdadm COMMAND r0` prints EXPECTED (60 s)
  for _ in $(seq 600); do [ "$(on "$1" "$2" r0)" = "$3" ] && return 0; sleep 0.1; done
  echo "timed out waiting for $1 $2 = $3" >&2; return 1
}
wait_for alpha cstate Connected
if [ $fresh = 1 ]; then
  echo "--- alpha: drbdadm primary --force r0   (fresh metadata: full sync alpha -> beta)"
  on alpha primary --force r0
  sleep 0.5
  on alpha proc-drbd | tail -n +3
else
  echo "--- alpha: drbdadm primary r0"
  on alpha primary r0
fi
wait_for beta dstate UpToDate/UpToDate
for n in alpha beta; do
  echo "--- $n: drbdadm status r0"
  on $n status r0
  echo "--- $n: drbdadm proc-drbd   (also in $run/$n/proc-drbd)"
  on $n proc-drbd
done
uri="nbd+unix:///r0?socket=$run/alpha/nbd.sock"
if command -v nbdinfo >/dev/null 2>&1; then
  echo "--- nbdinfo $uri"
  nbdinfo "$uri" | sed -n '1,12p'
fi
cat <<MSG
--- r0 is Primary on alpha, replicated to beta (protocol C), exported over NBD:
    qemu-io -f raw '$uri'
    nbdfuse DIR/disk '$uri'
    nbd-client -unix $run/alpha/nbd.sock /dev/nbd0 -N r0
    TANDEM_NODE=beta TANDEM_RUN_DIR=$run/beta $drbdadm -c $conf status r0
--- Ctrl-C takes r0 down on both nodes.
MSG
# Wait for Ctrl-C (or SIGTERM); the EXIT trap takes the resource down.
trap 'kill $! 2>/dev/null; exit 0' INT TERM
while :; do sleep 3600 & wait $!; done
