#!/usr/bin/env bash
# Debian's Chromium and its chromedriver for the browser test of tests/test_widgets.py (no browser can be downloaded by pip or
# playwright here). Idempotent: a fast no-op when both are present. Needs root (CI runs as root) and apt-get.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then exit 0; fi
if ! command -v apt-get >/dev/null; then echo "install_browser.sh: no apt-get: install chromium and chromedriver yourself"; exit 1; fi
sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null
/usr/bin/chromium --version
