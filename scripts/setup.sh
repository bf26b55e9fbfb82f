#!/usr/bin/env bash
# Installs what building, testing and the quickstart need, idempotently: Debian packages
# (PostgreSQL 15 server and client for the PostgreSQL tests, which start clusters of their own;
# sqlite3 and its headers for the SQLite driver and the quickstart; curl and jq for the
# quickstart's API calls; restic and pgBackRest for the
# benchmark comparisons; NFS-Ganesha with its VFS backend and rpcbind for the NFS backend's
# tests, which start servers of their own, and libnfs' nfs-cp, the plain-copy reference over NFS)
# and the moto S3 server from PyPI for the S3 tests. Safe to run again;
# does nothing when everything is present. Installing postgresql-15 may create and start
# Debian's default cluster on port 5432: harmless, the tests never use it.
set -euo pipefail

need_apt=()
command -v sqlite3 >/dev/null || need_apt+=(sqlite3)
[ -f /usr/include/sqlite3.h ] || need_apt+=(libsqlite3-dev)
[ -x /usr/lib/postgresql/15/bin/initdb ] || need_apt+=(postgresql-15)
[ -x /usr/lib/postgresql/15/bin/psql ] || need_apt+=(postgresql-client-15)
command -v mount >/dev/null || need_apt+=(mount)
# The quickstart talks to the control plane's API with curl and reads its answers with jq.
command -v curl >/dev/null || need_apt+=(curl)
command -v jq >/dev/null || need_apt+=(jq)
# The NFS tests: Ganesha exports a temporary directory; it needs a portmapper running.
command -v ganesha.nfsd >/dev/null || need_apt+=(nfs-ganesha)
ls /usr/lib/*/ganesha/libfsalvfs.so >/dev/null 2>&1 || need_apt+=(nfs-ganesha-vfs)
command -v rpcbind >/dev/null || need_apt+=(rpcbind)
command -v nfs-cp >/dev/null || need_apt+=(libnfs-utils)
if [ "${BULWARK_SETUP_BENCH:-0}" = 1 ]; then
  command -v restic >/dev/null || need_apt+=(restic)
  command -v pgbackrest >/dev/null || need_apt+=(pgbackrest)
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
