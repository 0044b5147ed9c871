#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time. Not part of CI.
#
#   scripts/fuzz.sh                 # each target FUZZ_SECONDS (default 60) seconds
#   FUZZ_SECONDS=600 scripts/fuzz.sh extract docker_save
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
# Corpora grow in fuzz/corpus/TARGET (seeded from fuzz/seeds/TARGET and, for
# docker_save, the example and fixture tarballs); crashes land in
# fuzz/artifacts/TARGET. Turn each crash into a regression test before fixing.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here/fuzz"
seconds="${FUZZ_SECONDS:-60}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(reference manifest docker_save extract tar_names)
fi

cargo +nightly fuzz build -O

status=0
for t in "${targets[@]}"; do
    corpus="corpus/$t"
    mkdir -p "$corpus"
    if [ -d "seeds/$t" ]; then
        cp -n "seeds/$t"/* "$corpus"/ 2>/dev/null || true
    fi
    if [ "$t" = docker_save ]; then
        for f in "$here"/examples/*.tar "$here"/tests/fixtures/docker-save/*.tar; do
            [ -f "$f" ] && [ "$(stat -c %s "$f")" -lt 4000000 ] && cp -n "$f" "$corpus"/ 2>/dev/null || true
        done
    fi
    echo "== $t: ${seconds}s"
    # -timeout: one input may take at most 10 s (a hang is a finding);
    # -rss_limit_mb: unbounded allocation is a finding too.
    if ! cargo +nightly fuzz run -O "$t" "$corpus" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=1048576 \
        -print_final_stats=1; then
        echo "== $t: FOUND A CRASH (see fuzz/artifacts/$t)"
        status=1
    fi
done
exit $status
