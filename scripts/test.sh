#!/usr/bin/env bash
# The test command: installs what the tests need when it is missing, builds, and runs every test.
# Usage: scripts/test.sh            (as root on Debian installs missing packages first)
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests and benchmarks drive, keyed by a command each provides.
declare -A NEED=(
  [nbdkit]=nbdkit [qemu-io]=qemu-utils [nbdinfo]=libnbd-bin [nbdfuse]=libnbd-bin
  [fio]=fio [nbd-client]=nbd-client [drbdmeta]=drbd-utils [fusermount3]=fuse3
  [ip]=iproute2 [mkfs.ext4]=e2fsprogs [losetup]=mount [sha256sum]=coreutils
  [unshare]=util-linux [cc]=gcc
)
missing=()
for cmd in "${!NEED[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/sbin/$cmd" ] || [ -x "/usr/sbin/$cmd" ] || missing+=("${NEED[$cmd]}")
done
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || missing+=(cargo)
if [ ${#missing[@]} -gt 0 ]; then
  pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing $pkgs"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
  else
    echo "test.sh: missing packages: $pkgs (not root or no apt-get: tests that need them will say SKIP)" >&2
  fi
fi
command -v cargo >/dev/null 2>&1 || { echo "test.sh: no cargo; install a Rust toolchain (rustup)" >&2; exit 1; }
# FUSE needs its device node, which some containers lack until it is created.
if [ "$(id -u)" -eq 0 ] && [ ! -e /dev/fuse ]; then mknod -m 666 /dev/fuse c 10 229 2>/dev/null || true; fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo build"
cargo build --workspace --all-targets --quiet
echo "== cargo test"
set +e
cargo test --workspace --no-fail-fast 2>&1 | tee target/test.log
rc=${PIPESTATUS[0]}
set -e
echo "== loom models"; scripts/loom.sh || rc=1
# The seeded simulation of two nodes under faults (repl-sim): thousands of seeds per fault
# level with the release binary; TANDEM_SIM_SEEDS sets how many per level (0 skips).
sim_seeds=${TANDEM_SIM_SEEDS:-2000}
sim_rc=0
if [ "$sim_seeds" -gt 0 ]; then
  echo "== repl-sim: $sim_seeds seeds per fault level, 1000 steps each"
  cargo build --release -p repl-sim --quiet
  for level in none light heavy; do
    target/release/repl-sim --seeds "0..$sim_seeds" --faults "$level" --steps 1000 \
      >"target/sim-$level.log" 2>&1 || sim_rc=1
    grep -E '^(=== seed|summary:)' "target/sim-$level.log" || true
  done
  [ "$sim_rc" -eq 0 ] || echo "repl-sim found violations: see target/sim-*.log"
fi
# Every fuzz target briefly (cargo-fuzz, AddressSanitizer); TANDEM_FUZZ_SECONDS=0 skips it.
fuzz_secs=${TANDEM_FUZZ_SECONDS:-15}
fuzz_rc=0
if [ "$fuzz_secs" -gt 0 ]; then
  echo "== fuzz: seeds and regression cases, then ${fuzz_secs}s per target"
  (cd fuzz && cargo test --release --quiet) >target/fuzz.log 2>&1 || fuzz_rc=$?
  grep -E '^test result' target/fuzz.log || true
  [ "$fuzz_rc" -ne 0 ] || fuzz/run-briefly.sh "$fuzz_secs" >>target/fuzz.log 2>&1 || fuzz_rc=$?
  grep -E '^(=== |no findings|fuzzing found)|stat::number_of_executed_units|SUMMARY|ERROR' target/fuzz.log || true
  [ "$fuzz_rc" -eq 0 ] || { echo "fuzzing found a problem (exit $fuzz_rc): see target/fuzz.log"; tail -40 target/fuzz.log; }
fi
# The runner's own summary lines are kept; add one overall line for humans and CI.
passed=$(grep -Eo '[0-9]+ passed' target/test.log | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' target/test.log | awk '{s+=$1} END {print s+0}')
echo "tandem: $passed passed, $failed failed"
[ "$rc" -eq 0 ] && [ "$failed" -eq 0 ] && [ "$fuzz_rc" -eq 0 ] && [ "$sim_rc" -eq 0 ]
