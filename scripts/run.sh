#!/usr/bin/env bash
# The run command: builds tandem and serves a volume over NBD, then shows what a client sees.
# Until the replicated daemon lands this serves one file with tandem-nbd (no replication yet).
# Usage: scripts/run.sh [SIZE]   (default 1G); Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-1G}
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"; fi
if ! command -v nbdinfo >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get update -qq && apt-get install -y -qq libnbd-bin >/dev/null
fi
cargo build --release --quiet -p nbd-server
dir=${TANDEM_RUN_DIR:-/run/tandem}
mkdir -p "$dir"
img="$dir/quickstart.img"
[ -e "$img" ] || truncate -s "$size" "$img"
sock="$dir/nbd.sock"
fifo=$(mktemp -u); mkfifo "$fifo"
target/release/tandem-nbd serve "$img" --socket "$sock" --name quickstart >"$fifo" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -f "$fifo"' EXIT INT TERM
# Wait for the banner (the server prints it once it listens), then show what a client sees.
exec 3<"$fifo"
while IFS= read -r line <&3; do
  echo "$line"
  case $line in serving*) break ;; esac
done
while IFS= read -r line <&3; do echo "$line"; case $line in *nbd-client*) break ;; esac; done
uri="nbd+unix:///quickstart?socket=$sock"
if command -v nbdinfo >/dev/null 2>&1; then
  echo "--- status (nbdinfo) ---"
  nbdinfo "$uri" | sed -n '1,30p'
fi
echo "--- serving until Ctrl-C ---"
wait $pid
