#!/usr/bin/env bash
# The main job: the end-to-end demo on the embedded defaults, a whole simulated
# city day (docs/demo.md): cards issued through clearing, buses, kiosks, hospital
# counters, a lost card, a torn purchase, uploads, run-day and the settlement.
# Route 1's validator reads through pcscd + vpcd. Installs what is missing and
# starts pcscd. Options go to the demo: --cards N --transactions N --seed N
# --postgres URL --in-process --quiet.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

ensure_packages
ensure_pcscd

say "building"
cargo build --release --locked -p card-host -p system-tests --bins
exec target/release/demo "$@"
