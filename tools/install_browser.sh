#!/usr/bin/env bash
# Installs the headless browser that tests/host/test_web_*.py drive: Debian's own `chromium` package (nothing is
# downloaded from anywhere but the distribution's apt mirror; Playwright's browser download is not used).
# Idempotent: does nothing when a Chromium is already there. Needs root (CI runs as root) or sudo.
# Usage: bash tools/install_browser.sh            (CHROMIUM_PATH overrides where the tests look for the browser)
set -euo pipefail
for cand in "${CHROMIUM_PATH:-}" /usr/bin/chromium /usr/bin/chromium-browser; do
  if [ -n "$cand" ] && [ -x "$cand" ]; then
    echo "[browser] ready: $cand ($("$cand" --version 2>/dev/null || echo 'version unknown'))"
    exit 0
  fi
done
SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "[browser] need root to apt-get install chromium (or set CHROMIUM_PATH to an installed Chromium)" >&2; exit 1
  fi
fi
echo "[browser] installing Debian's chromium"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
echo "[browser] ready: /usr/bin/chromium ($(/usr/bin/chromium --version 2>/dev/null || echo 'version unknown'))"
