#!/usr/bin/env bash
# Make sure PostgreSQL's server programs are on this machine (Debian's `postgresql` package), for
# the tests that run every store against PostgreSQL too. `make test` calls it; the tests start
# their own throwaway cluster (tests/pg_server.py), so nothing here starts or configures one.
# Without root, it can only say what is missing: the tests then fail, loudly, never skip.
set -euo pipefail

if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "PostgreSQL's server is not installed and this is not root: run 'sudo apt-get install postgresql'" >&2
    exit 1
fi
echo "installing Debian's postgresql package (the tests run every store against it)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends postgresql >/dev/null
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || {
    echo "apt-get installed postgresql but no initdb is under /usr/lib/postgresql/*/bin" >&2
    exit 1
}
