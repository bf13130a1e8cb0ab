"""A server fit to share: `scripts/mlflow_server.sh --auth` behind MLflow's basic auth, its backend password in no
process's command line, the clients' credentials never on stdout, and a run's artifacts on the server whenever the
tracking URI is http(s). One server (on PostgreSQL when there is one) serves every check, and one tiny run."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import DATA_ROOT
from processes import SCRIPT, TINY, free_port, run_command, runs_by_role, spawn, wait_for

from ablation.contract import redact
from ablation.store import StoreError, check

ADMIN_PASSWORD = "admin-" + os.urandom(6).hex()  # 12 characters or more: MLflow's rule


def group_cmdlines(pgid: int) -> dict[int, str]:
    """The command line of every process in a process group (the server, its uvicorn supervisor and workers)."""
    lines = {}
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            if proc.name.isdigit() and int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                lines[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return lines


def get(url: str, user: str | None = None, password: str | None = None) -> int:
    request = urllib.request.Request(url)
    if user:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:  # not listening yet
        return 0


def test_auth_needs_an_admin_password_and_never_has_a_default(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_AUTH_")}
    command = ["bash", SCRIPT, "--auth", f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "artifacts", free_port()]
    done = run_command(command, 60, env={**env, "MLFLOW_BIN": "/nonexistent/mlflow"})
    assert done.returncode == 2 and "needs the admin's password in MLFLOW_AUTH_ADMIN_PASSWORD" in done.stderr
    env["MLFLOW_AUTH_ADMIN_PASSWORD"] = "x"
    short = run_command(command, 60, env={**env, "MLFLOW_BIN": "/nonexistent/mlflow"})
    assert short.returncode == 2 and "too short" in short.stderr


@pytest.mark.slow
def test_shared_server_with_auth_keeps_every_password_private(request, tmp_path, cache_dir, monkeypatch):
    try:
        postgres = request.getfixturevalue("postgres")
    except pytest.skip.Exception:
        postgres = None
    if postgres:  # the password in the URI, as a user might give it, and nowhere else (no PGPASSWORD)
        secret = postgres["env"].get("PGPASSWORD") or pytest.skip("$ABLATION_POSTGRES_URI: no password known")
        backend = postgres["uri"].replace("://mlflow@", f"://mlflow:{secret}@")
    else:
        secret, backend = None, f"sqlite:///{tmp_path}/server.db"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    env = {"MLFLOW_BIN": str(Path(sys.executable).with_name("mlflow")), "MLFLOW_WORKERS": "2"}
    env["MLFLOW_AUTH_ADMIN_PASSWORD"] = ADMIN_PASSWORD
    server = spawn(request, ["bash", str(SCRIPT), "--auth", backend, str(tmp_path / "artifacts"), str(port)], log, env)
    wait_for(lambda: get(f"{url}/health") == 200, 180, "the server answering /health", log, server, interval=0.5)

    # `ps`: no process of the server's (uvicorn's supervisor, its workers) shows the backend URI or its password.
    cmdlines = wait_for(lambda: (c := group_cmdlines(server.pid)) and len(c) >= 3 and c, 60, "the workers", log)
    for pid, cmdline in cmdlines.items():
        assert backend not in cmdline and "--backend-store-uri" not in cmdline, (pid, cmdline)
        assert secret is None or secret not in cmdline, pid
    assert any("--app-name basic-auth" in c for c in cmdlines.values()), cmdlines
    if secret:
        assert "holds a password" in log.read_text()  # the script's warning, the password itself not repeated
        assert secret not in log.read_text()

    # Basic auth: nobody without credentials, the admin with them; the store check tells a wrong password at once.
    search = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert get(search) == 401 and get(search, "admin", "wrong-password!") == 401
    assert get(search, "admin", ADMIN_PASSWORD) == 200
    with pytest.raises(StoreError, match=r"refused the credentials \(HTTP 401\)") as raised:
        check(f"http://admin:wrong-password!@127.0.0.1:{port}", create=True)
    assert "wrong-password" not in str(raised.value)
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    with pytest.raises(StoreError, match=r"asks for a user and password \(HTTP 401\)"):
        check(f"http://127.0.0.1:{port}", create=True)
    user_url = f"http://admin:{ADMIN_PASSWORD}@127.0.0.1:{port}"
    check(user_url, create=True)

    # A run with the credentials in `tracking.uri`, and no `tracking=server`: its artifacts go to the server, and
    # neither MLflow's "View run at" line nor anything else prints the password.
    runs = tmp_path / "runs"
    command = [
        sys.executable,
        "-m",
        "ablation",
        *TINY,
        "epochs=1",
        f"tracking.uri={user_url}",
        "tracking.experiment=shared",
        f"paths.runs={runs}",
        f"data.cache_dir={cache_dir}",
        f"data.root={DATA_ROOT}",
    ]
    done = run_command(command, 600, env={k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")})
    output = done.stdout + done.stderr
    assert done.returncode == 0, redact(output[-4000:])
    assert ADMIN_PASSWORD not in output, "the password reached the console"
    assert not (runs / "mlflow.db").exists() and not (runs / "mlartifacts").exists()
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
    client, _, [run] = runs_by_role(url, "shared")
    assert run.info.status == "FINISHED" and run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert run.data.params["tracking.artifact_location"] == "None"
    assert len(list((tmp_path / "artifacts").rglob("model.keras"))) == 1
    if postgres and postgres["psql"]:  # the runs really are in PostgreSQL
        count = subprocess.run(
            [*json.loads(postgres["psql"]), "SELECT COUNT(*) FROM runs"],
            env={**os.environ, **postgres["env"]},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert count.stdout.strip() == "1", count.stderr
