#!/usr/bin/env bash
# Make sure Chromium (Debian's `chromium` package) is at /usr/bin/chromium, for the dashboard's
# browser test (tests/test_dashboard_browser.py): Playwright drives this system browser through
# `executable_path`, so nothing downloads a browser at run time (never `playwright install`).
# `make test` calls it. Without root, it can only say what is missing: the test then fails,
# loudly, never skips.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "Chromium is not installed and this is not root: run 'sudo apt-get install chromium'" >&2
    exit 1
fi
echo "installing Debian's chromium package (the dashboard's browser test drives it)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium >/dev/null
[ -x /usr/bin/chromium ] || { echo "apt-get installed chromium but /usr/bin/chromium is missing" >&2; exit 1; }
