#!/usr/bin/env bash
# The loom models of what threads in tandemd share: the disk thread's handoff
# (nbd-server/tests/loom_ring.rs) and the status board (tandemd/tests/loom_status.rs).
# Built with --cfg tandem_loom, not --cfg loom (tokio does not build under --cfg loom), in
# target/loom so that the main build is not invalidated. Full output: target/loom.log.
# Usage: scripts/loom.sh            (LOOM_MAX_PREEMPTIONS=3 unless set)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
export RUSTFLAGS="${RUSTFLAGS:-} --cfg tandem_loom"
export CARGO_TARGET_DIR=target/loom
# No debug info: these binaries are only run.
export CARGO_PROFILE_RELEASE_DEBUG=0
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}"
mkdir -p target
start=$(date +%s)
set +e
cargo test --release -p nbd-server -p tandemd --test loom_ring --test loom_status >target/loom.log 2>&1
rc=$?
set -e
secs=$(($(date +%s) - start))
grep -E '^test result' target/loom.log || true
passed=$(grep -Eo '[0-9]+ passed' target/loom.log | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' target/loom.log | awk '{s+=$1} END {print s+0}')
if [ "$rc" -ne 0 ]; then
  tail -60 target/loom.log
fi
echo "loom: $passed passed, $failed failed in ${secs}s (LOOM_MAX_PREEMPTIONS=$LOOM_MAX_PREEMPTIONS; log: target/loom.log)"
[ "$rc" -eq 0 ] && [ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
