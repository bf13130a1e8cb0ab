#!/usr/bin/env bash
# Sets up a fresh machine in one command: the system packages the tests use (Debian's Chromium for the
# browser tests, PostgreSQL for the tracking-server test) and a virtual environment, .venv, holding the
# project with its dev tools (`pip install -e ".[dev]"`).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(chromium postgresql)
if command -v apt-get >/dev/null; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
  else
    echo "not root: install ${packages[*]} with sudo apt-get install, or the browser and server tests fail" >&2
  fi
fi

python3 -m venv .venv
.venv/bin/pip install -q -U pip
.venv/bin/pip install -q -e ".[dev]"
echo "installed: activate with 'source .venv/bin/activate'"
