#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS each (default 20) and exits non-zero if any of them
# finds a crash, a hang or a leak. For CI and for a quick check before committing.
#
#   fuzz/run-briefly.sh [SECONDS] [TARGET...]
#
# FUZZ_SANITIZER=none trades AddressSanitizer for more executions per second; it builds into fuzz/target/san-none so the two builds do not evict each other.
#
# New inputs go to fuzz/target/corpus/<target> (ignored by git); the committed seeds in
# fuzz/corpus/<target> are only read. A finding is saved under fuzz/artifacts/<target>/ and can
# be replayed with: RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<file>
set -euo pipefail
cd "$(dirname "$0")"

secs=${1:-20}
shift || true
# cargo-fuzz needs nightly flags (-Zsanitizer); the stable toolchain accepts them this way.
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi

sanitizer=${FUZZ_SANITIZER:-address}
build=(-s "$sanitizer")
if [ "$sanitizer" != address ]; then
    build+=(--target-dir "target/san-$sanitizer")
fi

failed=()
for t in "${targets[@]}"; do
    case $t in
        nbd_requests) extra=(-max_len=16384) ;;
        metadata_loader) extra=(-max_len=16384) ;;
        *) extra=() ;;
    esac
    mkdir -p "target/corpus/$t" "corpus/$t"
    echo "=== $t: ${secs}s"
    if ! cargo fuzz run "${build[@]}" "$t" "target/corpus/$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=30 -rss_limit_mb=2048 -print_final_stats=1 "${extra[@]}"; then
        failed+=("$t")
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzzing found problems in: ${failed[*]} (see fuzz/artifacts/)" >&2
    exit 1
fi
echo "no findings in ${targets[*]}"
