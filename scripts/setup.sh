#!/usr/bin/env bash
# Installs what building, testing and the quickstart need, idempotently: Debian packages
# (sqlite3 for the quickstart, restic for the benchmark comparison) and the moto S3 server
# from PyPI for the S3 tests. Safe to run again; does nothing when everything is present.
set -euo pipefail

need_apt=()
command -v sqlite3 >/dev/null || need_apt+=(sqlite3)
command -v mount >/dev/null || need_apt+=(mount)
if [ "${BULWARK_SETUP_BENCH:-0}" = 1 ]; then
  command -v restic >/dev/null || need_apt+=(restic)
  command -v /usr/bin/time >/dev/null || need_apt+=(time)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]} (apt-get)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! python3 -c 'import moto.server, flask_cors' 2>/dev/null; then
  echo "setup: installing moto[server] (pip) for the S3 tests"
  python3 -m pip install -q --disable-pip-version-check 'moto[server]>=5,<6'
fi
