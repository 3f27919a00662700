#!/usr/bin/env bash
# Headless Chromium for the console's browser tests, from the OS packages (Debian/Ubuntu).
# Does nothing when a chromium is already on PATH. Needs root (or sudo) to install.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-browser: no chromium and no apt-get; install Chromium with your OS's package manager" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "ensure-browser: installing chromium (Debian package) for the browser tests"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium
command -v chromium >/dev/null 2>&1
