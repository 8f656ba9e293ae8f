#!/usr/bin/env bash
# Install a headless browser for okd-bench's page tests (bench report opened in Chromium via chromedriver):
# Debian's chromium and chromium-driver. Debian/Ubuntu, as root; idempotent. Elsewhere it installs nothing and
# the page tests skip (never in CI, where this must work).
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "install-browser.sh: needs root and apt-get; chromium not installed (the report page tests will skip)" >&2
  if [ -n "${CI:-}" ]; then exit 1; fi
  exit 0
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
command -v chromium >/dev/null && command -v chromedriver >/dev/null
