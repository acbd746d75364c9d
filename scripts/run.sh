#!/usr/bin/env bash
# The run command: builds tandem, brings up resource r0 from an embedded default config on this
# node, promotes it, exports it over NBD and shows its status the way DRBD shows it.
# Replication to a second node is not built yet: r0's peer is configured but never connects, so
# the node runs as DRBD's "first node, peer not yet there" (StandAlone, UpToDate/DUnknown).
# Usage: scripts/run.sh [SIZE]   (default 1G); Ctrl-C takes r0 down and stops the daemon.
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-1G}
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"; fi
if ! command -v nbdinfo >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get update -qq && apt-get install -y -qq libnbd-bin >/dev/null
fi
cargo build --release --quiet -p drbdadm-compat -p tandemd -p nbd-server
export TANDEM_RUN_DIR=${TANDEM_RUN_DIR:-/run/tandem}
data=${TANDEM_DATA_DIR:-/var/lib/tandem/quickstart}
mkdir -p "$TANDEM_RUN_DIR" "$data"
node=${TANDEM_NODE:-$(uname -n)}
export TANDEM_NODE=$node
conf="$data/r0.res"
cat >"$conf" <<RES
# tandem quickstart: one volume on this node; the peer is named but not started.
resource r0 {
  protocol C;
  on $node {
    device    /dev/drbd0;
    disk      $data/disk.img;
    address   127.0.0.1:7789;
    meta-disk internal;
  }
  on tandem-peer {
    device    /dev/drbd0;
    disk      $data/peer.img;
    address   127.0.0.2:7789;
    meta-disk internal;
  }
}
RES
drbdadm=target/release/drbdadm
[ -e "$data/disk.img" ] || truncate -s "$size" "$data/disk.img"
if ! $drbdadm -c "$conf" get-gi r0 >/dev/null 2>&1; then
  echo "--- drbdadm create-md r0"
  $drbdadm -c "$conf" create-md r0
fi
echo "--- drbdadm up r0"
$drbdadm -c "$conf" up r0
trap 'echo "--- drbdadm down r0"; $drbdadm -c "$conf" down r0; pkill -F "$TANDEM_RUN_DIR/tandemd.lock" 2>/dev/null || true' EXIT
echo "--- drbdadm primary --force r0"
$drbdadm -c "$conf" primary --force r0
echo "--- drbdadm status r0"
$drbdadm -c "$conf" status r0
echo "--- drbdadm proc-drbd   (also in $TANDEM_RUN_DIR/proc-drbd)"
$drbdadm -c "$conf" proc-drbd
uri="nbd+unix:///r0?socket=$TANDEM_RUN_DIR/nbd.sock"
if command -v nbdinfo >/dev/null 2>&1; then
  echo "--- nbdinfo $uri"
  nbdinfo "$uri" | sed -n '1,12p'
fi
cat <<MSG
--- r0 is Primary and exported over NBD:
    qemu-io -f raw '$uri'
    nbdfuse DIR/disk '$uri'
    nbd-client -unix $TANDEM_RUN_DIR/nbd.sock /dev/nbd0 -N r0
    TANDEM_RUN_DIR=$TANDEM_RUN_DIR $drbdadm -c $conf status r0
--- Ctrl-C takes r0 down.
MSG
# Wait for Ctrl-C (or SIGTERM); the EXIT trap takes the resource down.
trap 'kill $! 2>/dev/null; exit 0' INT TERM
while :; do sleep 3600 & wait $!; done
