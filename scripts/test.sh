#!/usr/bin/env bash
# The project's full check, locally and in CI (`.ci/run` calls this):
#   1. system packages the integration tests drive (apt, only when missing)
#   2. cargo fmt --check
#   3. cargo clippy --all-targets -D warnings, and scripts/shape.py (no module
#      cycle, no file over 1,000 lines)
#   4. cargo test --no-fail-fast (unit, integration and doc tests), then the
#      extraction and tar unit tests again with every extraction staged
#      ahead (OCCYSTRAP_TEST_STAGED=1, src/layer/extract/stage.rs)
# Stops at the first failing step with a non-zero exit (within step 4 every
# test binary still runs, so one report shows all failing tests).
#
# Env: CARGO_TARGET_DIR (optional), TEST_ARGS (extra args after `cargo test`,
# e.g. TEST_ARGS="--test it -- docker_save" to run one module),
# RUST_TEST_THREADS (default 4: the integration tests mostly wait on
# subprocesses).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
started=$(date +%s)
log=$(mktemp -t occystrap-test.XXXXXX)
trap 'rm -f "$log"' EXIT

step() { printf '\n==> %s\n' "$*" >&2; }
elapsed() { echo "$(( $(date +%s) - started ))s"; }
fail() {
  printf '\ntest.sh: FAILED at step "%s" after %s\n' "$1" "$(elapsed)" >&2
  exit 1
}

# --- 1. system packages -----------------------------------------------------
# docker-registry: the loopback registry; skopeo, podman (+runc): peers that
# check what occystrap writes; umoci: OCI layouts; busybox-static: real binary
# content for test images; apache2-utils: htpasswd; jq, pigz: scripts;
# python3: the peak-RSS helper of the bomb tests; openssl: the TLS test CA.
pkgs=(docker-registry skopeo umoci runc podman busybox-static jq pigz apache2-utils python3 openssl)
missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  step "installing system packages: ${missing[*]}"
  sudo=()
  if [[ $(id -u) -ne 0 ]]; then sudo=(sudo); fi
  apt_opts=(-q -o Acquire::Retries=3 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" update </dev/null \
    || fail "apt-get update"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install -y "${missing[@]}" </dev/null \
    || fail "apt-get install"
else
  step "system packages present"
fi

command -v cargo >/dev/null || fail "cargo not found (install Rust: https://rustup.rs)"
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  command -v rustup >/dev/null || fail "rustfmt/clippy missing and no rustup to add them"
  step "adding rustfmt and clippy"
  rustup component add rustfmt clippy || fail "rustup component add"
fi
[[ -d tests/fixtures/docker-save ]] \
  || echo "warning: tests/fixtures/docker-save not found; fixture tests will fail" >&2

# --- 2. format ---------------------------------------------------------------
step "cargo fmt --all -- --check"
cargo fmt --all -- --check || fail "cargo fmt"

# --- 3. lint -----------------------------------------------------------------
step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings || fail "cargo clippy"
step "scripts/shape.py"
python3 scripts/shape.py || fail "module shape"

# --- 4. tests ----------------------------------------------------------------
export RUST_TEST_THREADS=${RUST_TEST_THREADS:-4}
read -r -a test_args <<<"${TEST_ARGS:-}"
step "cargo test --no-fail-fast${test_args[*]:+ ${test_args[*]}} (RUST_TEST_THREADS=$RUST_TEST_THREADS)"
set +e
cargo test --no-fail-fast "${test_args[@]}" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END{print s+0}')
failed=$(grep -Eo '^test result: .* ([0-9]+) failed' "$log" | grep -Eo '[0-9]+ failed' | awk '{s+=$1} END{print s+0}')
if [[ $rc -ne 0 ]]; then
  grep -E '^test .* FAILED$' "$log" | sed 's/^/  /' >&2 || true
  fail "cargo test ($passed passed, $failed failed)"
fi
# Without TEST_ARGS only: a run narrowed to one module stays narrowed.
if [[ -z ${TEST_ARGS:-} ]]; then
  step "extraction tests, staged ahead (OCCYSTRAP_TEST_STAGED=1)"
  set +e
  OCCYSTRAP_TEST_STAGED=1 cargo test --lib -- layer:: tarfmt:: 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  set -e
  staged=$(grep -Eo '^test result: .* ([0-9]+) passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END{print s+0}')
  if [[ $rc -ne 0 ]]; then
    grep -E '^test .* FAILED$' "$log" | sed 's/^/  /' >&2 || true
    fail "staged extraction tests"
  fi
  passed=$((passed + staged))
fi

printf '\ntest.sh: OK (fmt, clippy, %s tests passed) in %s\n' "$passed" "$(elapsed)" >&2
