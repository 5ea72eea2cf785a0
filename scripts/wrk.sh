#!/usr/bin/env bash
# Make sure wrk (Debian's `wrk` package), the load generator bench/ingest.py drives the servers
# with, is on this machine: it is written in C and runs outside Python, so it measures the
# servers rather than itself. Without root, it can only say what is missing.
set -euo pipefail

if command -v wrk >/dev/null; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "wrk is not installed and this is not root: run 'sudo apt-get install wrk'" >&2
    exit 1
fi
echo "installing Debian's wrk package (the load generator of bench/ingest.py)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends wrk >/dev/null
command -v wrk >/dev/null || { echo "apt-get installed wrk but no wrk is on PATH" >&2; exit 1; }
