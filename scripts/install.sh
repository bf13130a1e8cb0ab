#!/usr/bin/env bash
# Sets up a fresh machine. Without arguments: what training needs, no root: a virtual environment, .venv,
# holding the project (`pip install -e .`; the commands ablation, ablation-report, ablation-predict).
# With --test: also the system packages the tests use (Debian's Chromium for the browser tests, PostgreSQL
# for the tracking-server test; apt-get, as root) and the test tools (`pip install -e ".[dev]"`).
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
if [ "${1:-}" = "--test" ]; then
  extras="[dev]"
  packages=(chromium postgresql)
  if command -v apt-get >/dev/null; then
    if [ "$(id -u)" -eq 0 ]; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
    else
      echo "not root: install ${packages[*]} with sudo apt-get install, or the browser and server tests fail" >&2
    fi
  fi
elif [ -n "${1:-}" ]; then
  echo "usage: bash scripts/install.sh [--test]" >&2
  exit 2
fi

python3 -m venv .venv
.venv/bin/pip install -q -U pip
.venv/bin/pip install -q -e ".${extras}"
echo "installed: activate with 'source .venv/bin/activate'"
