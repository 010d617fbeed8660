#!/usr/bin/env bash
# Runs every test of the workspace: formatting, lints, unit tests, and the system
# tests through the real pcscd + vpcd. Installs what is missing and starts pcscd
# and PostgreSQL (the clearing tests run on SQLite and on PostgreSQL).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

ensure_packages "${BROWSER_PACKAGES[@]}"
ensure_pcscd || exit 1
ensure_postgres

say "cargo fmt --check"
cargo fmt --all -- --check
say "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
say "cargo test"
cargo test --workspace --locked
