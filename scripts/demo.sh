#!/usr/bin/env bash
# The main job: the end-to-end demo on the embedded defaults. Today it issues a
# citizen card and a PSAM, puts both into pcscd's virtual reader and runs the
# card's applications through PC/SC (cardholder, load, purchase, transit, proof).
# Installs what is missing and starts pcscd.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

ensure_packages
ensure_pcscd

say "building"
cargo build --release --locked -p card-host -p system-tests --bins
exec target/release/demo "$@"
