#!/usr/bin/env bash
# The main job: the end-to-end demo on the embedded defaults, a whole simulated
# city day (docs/demo.md): cards issued through clearing, buses, kiosks, hospital
# counters, a lost card, a torn purchase, uploads, run-day and the settlement.
# Route 1's validator reads through pcscd + vpcd when pcscd can be had here,
# in-process otherwise (the demo says which). Installs what is missing and
# starts pcscd, and PostgreSQL when the day is to run on it. Options go to the
# demo: --cards N --transactions N --seed N --postgres URL --in-process --quiet
# (or CITIZEN_CARD_DATABASE_URL=postgres://... instead of --postgres).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

in_process=no
postgres=no
[ -n "${CITIZEN_CARD_DATABASE_URL:-}" ] && postgres=yes
for argument in "$@"; do
  case "$argument" in
    --in-process) in_process=yes ;;
    --postgres|--postgres=*) postgres=yes ;;
  esac
done

ensure_packages
if [ "$in_process" = no ] && ! ensure_pcscd; then
  say "no pcscd with the vpcd reader here: every terminal runs in-process"
fi
if [ "$postgres" = yes ]; then
  ensure_postgres
fi

say "building"
cargo build --release --locked -p card-host -p system-tests --bins
exec target/release/demo "$@"
