# Shared set-up for scripts/demo.sh and scripts/test.sh: installs what is missing
# from Debian's packages and starts the real parts (pcscd with the vpcd driver).
# Sourced, not run.

set -euo pipefail

# Debian packages the build and the tests need:
#   libpcsclite-dev, pkg-config: the `pcsc` crate links libpcsclite;
#   pcscd, vsmartcard-vpcd: the real PC/SC daemon and its virtual reader driver;
#   opensc: opensc-tool, an ordinary PC/SC client the tests also drive the card with;
#   libnfc-bin: libnfc's tools, a real PN532 driver the emulator is tested against.
REQUIRED_PACKAGES=(pkg-config libpcsclite-dev pcscd vsmartcard-vpcd opensc libnfc-bin)
# Only the test suite needs these: the kiosk's and the operator's screens are
# tested in a real headless browser (Debian's chromium driven through
# chromedriver), and the CJK fonts let its screenshots show the Chinese text.
BROWSER_PACKAGES=(chromium chromium-driver fonts-noto-cjk)
VPCD_PORT=35963

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# ensure_packages [EXTRA_PACKAGE ...]: REQUIRED_PACKAGES and the extra ones.
ensure_packages() {
  local missing=()
  for package in "${REQUIRED_PACKAGES[@]}" "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
  fi
  command -v cargo >/dev/null 2>&1 || { echo "cargo (Rust 1.89 or newer) is needed: see https://rustup.rs" >&2; exit 1; }
}

vpcd_listening() {
  (exec 3<>"/dev/tcp/127.0.0.1/$VPCD_PORT") 2>/dev/null
}

# pcscd must be running with the vpcd driver loaded: vpcd then listens on
# 127.0.0.1:35963 (slot 0) and :35964 (slot 1). A pcscd started before vpcd was
# installed has not loaded it and is restarted. Returns 1 (after saying why)
# when pcscd cannot be had here: the tests stop, the demo goes on in-process.
ensure_pcscd() {
  if vpcd_listening; then return 0; fi
  if pgrep -x pcscd >/dev/null 2>&1; then
    say "restarting pcscd so that it loads the vpcd driver"
    as_root pkill -x pcscd || true
    for _ in $(seq 50); do pgrep -x pcscd >/dev/null 2>&1 || break; sleep 0.1; done
  else
    say "starting pcscd"
  fi
  as_root pcscd || { echo "pcscd could not be started" >&2; return 1; }
  for _ in $(seq 100); do vpcd_listening && return 0; sleep 0.1; done
  echo "pcscd did not open the vpcd reader on 127.0.0.1:$VPCD_PORT (see /etc/reader.conf.d/vpcd)" >&2
  return 1
}

# PostgreSQL for the clearing tests: 127.0.0.1:5432, user postgres, database
# `test`, trust authentication on loopback. Installs Debian's `postgresql` when
# it is missing, starts the cluster when it is stopped, creates the database.
POSTGRES_PORT=5432

postgres_listening() {
  (exec 3<>"/dev/tcp/127.0.0.1/$POSTGRES_PORT") 2>/dev/null
}

ensure_postgres() {
  if postgres_listening; then return 0; fi
  if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
    say "installing postgresql"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  fi
  local version
  version="$(ls /etc/postgresql | sort -V | tail -n 1)"
  local hba="/etc/postgresql/$version/main/pg_hba.conf"
  # Tests connect as postgres over loopback without a password (never do this on a shared host).
  if ! as_root grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
    as_root sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
  fi
  say "starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 100); do postgres_listening && break; sleep 0.1; done
  postgres_listening || { echo "PostgreSQL did not start on 127.0.0.1:$POSTGRES_PORT" >&2; exit 1; }
  if ! psql -h 127.0.0.1 -U postgres -d test -Atc 'select 1' >/dev/null 2>&1; then
    psql -h 127.0.0.1 -U postgres -d postgres -c 'CREATE DATABASE test' >/dev/null
  fi
}
