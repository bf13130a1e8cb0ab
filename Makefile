# The README's first commands, as tasks. `make quickstart` needs no root; `make test` installs Chromium and
# PostgreSQL with apt-get (as root) for the browser and tracking-server tests.
.PHONY: install quickstart install-test test report ui

install:
	bash scripts/install.sh

quickstart: install
	.venv/bin/ablation -m study=quickstart

install-test:
	bash scripts/install.sh --test

test: install-test
	.venv/bin/python -m pytest

report:
	.venv/bin/ablation-report report

ui:
	.venv/bin/mlflow ui --backend-store-uri sqlite:///runs/mlflow.db --host 127.0.0.1 --port 5000
