#!/usr/bin/env bash
# Runs Fulcrum's whole test suite on a fresh machine: installs what the tests
# need, builds, then runs unit, property and black-box tests.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cargo >/dev/null || { echo "error: cargo is required (https://rustup.rs)" >&2; exit 1; }
command -v cc >/dev/null || need_apt+=(gcc libc6-dev)
# The dashboard test (crates/fulcrum/tests/dashboard.rs) drives Debian's
# headless Chromium through chromedriver.
command -v chromium >/dev/null || need_apt+=(chromium)
command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
if ((${#need_apt[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
  else sudo apt-get update -qq && sudo apt-get install -y -qq "${need_apt[@]}"; fi
fi

# Many loopback connections at once in the tests: raise the soft limit if we may.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cargo build --workspace --all-targets --locked
cargo test --workspace --locked
