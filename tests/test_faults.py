"""Fault injection: parallel writers, kill -9, SIGTERM and Ctrl-C, a dead worker, NaN, bad config, a lost server;
and the security checks that can be run (no unsafe loading, no config-chosen targets, no password in a record).

See docs/reliability.md for what the framework does in each case.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import signal
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest
from conftest import DATA_ROOT, PROJECT, compose_config
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException
from mlflow.entities import Metric
from omegaconf import open_dict
from processes import (
    TINY,
    ablation,
    assert_complete,
    finish,
    job_runs,
    kill_group,
    run,
    runs_by_role,
    spawn,
    sweep_folder,
    wait_for,
)

from ablation import interrupts, tracking
from ablation.validate import ConfigError

# ---------------------------------------------------------------- parallel writers on a fresh SQLite store


@pytest.mark.slow
def test_four_parallel_jobs_share_a_fresh_sqlite_store_and_a_nan_fails_only_its_run(request, tmp_path, cache_dir):
    """Four joblib workers create, migrate and write one new SQLite store at once; lr=1e30 gives a NaN loss."""
    runs = tmp_path / "runs"
    status, output = run(
        request,
        tmp_path,
        "four",
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=4",
        "batchnorm=false",
        "dropout=0,0.5",
        "optimizer.lr=1e-3,1e30",
        "epochs=2",
        "tracking.experiment=four",
        *TINY,
        runs=runs,
        cache=cache_dir,
    )
    assert status == 1, output[-5000:]  # the sweep ran through, and says that jobs failed
    assert "database is locked" not in output and "No such constraint" not in output

    uri = f"sqlite:///{runs}/mlflow.db"
    assert sorted(e.name for e in mlflow.MlflowClient(uri).search_experiments()) == ["Default", "four"]
    client, parents, children = runs_by_role(uri, "four")
    assert len(parents) == 1 and len(children) == 4
    assert parents[0].info.status == "FAILED" and parents[0].data.tags["error"] == "2 of 4 jobs failed"
    assert len({r.data.tags["ablation.pid"] for r in children}) >= 2  # really in parallel workers
    finite = [r for r in children if r.data.params["optimizer.lr"] == "0.001"]
    exploded = [r for r in children if r.data.params["optimizer.lr"] != "0.001"]
    assert len(finite) == len(exploded) == 2
    for child in finite:  # one value per epoch, no duplicate from a retried write
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert_complete(client, child, epochs=2)
    for child in exploded:
        assert child.info.status == "FAILED"
        assert child.data.tags["error"].startswith("NonFiniteLossError: non-finite training loss at epoch 1")
        assert "test_auc" not in child.data.metrics
    assert output.count("FAILED: ") == 2 and "NonFiniteLossError" in output  # named in the table's footer


# ---------------------------------------------------------------- kill -9, resume; a worker killed by the OS

RESUME_SWEEP = ["-m", "epochs=1,5,60", "tracking.experiment=resume", *TINY]


@pytest.fixture(scope="module")
def killed_and_resumed(request, tmp_path_factory, cache_dir) -> dict:
    """One store, two invocations of one sweep (1, 5 and 60 epochs), each killed with SIGKILL mid-epoch.

    1st, one process (basic launcher): the 1-epoch job finishes; `kill -9` of the process group during the
    5-epoch job's 2nd epoch. 2nd, the same sweep with two joblib workers: the 1-epoch job is SKIPPED, the
    5-epoch job re-runs; once it FINISHED, SIGKILL of the worker running the 60-epoch job.
    """
    tmp_path = tmp_path_factory.mktemp("resume")
    runs, db = tmp_path / "runs", tmp_path / "runs" / "mlflow.db"
    state: dict = {"runs": runs}

    log = tmp_path / "first.log"
    proc = spawn(request, ablation(*RESUME_SWEEP, runs=runs, cache=cache_dir), log)

    def five_epoch_job_training():
        return [r for r in job_runs(db) if r["epochs"] == "5" and r["status"] == "RUNNING" and r["losses"] >= 1]

    [state["killed"]] = wait_for(five_epoch_job_training, 400, "an epoch of the 5-epoch job", log, proc)
    kill_group(proc)  # kill -9 of the whole sweep, launcher and job alike
    state["after_kill"] = {r["run_id"]: r for r in job_runs(db)}

    log = state["second_log"] = tmp_path / "second.log"
    args = [*RESUME_SWEEP, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]  # the launcher is not the config
    proc = spawn(request, ablation(*args, runs=runs, cache=cache_dir), log)

    def rerun_done_long_training():
        jobs = job_runs(db)
        rerun = [r for r in jobs if r["epochs"] == "5" and r["run_id"] != state["killed"]["run_id"]]
        long = [r for r in jobs if r["epochs"] == "60" and r["status"] == "RUNNING" and r["losses"] >= 1]
        return long[0] if rerun and rerun[0]["status"] == "FINISHED" and long else None

    state["worker"] = wait_for(rerun_done_long_training, 400, "the re-run FINISHED beside a training job", log, proc)
    os.kill(int(state["worker"]["pid"]), signal.SIGKILL)  # the OOM killer, say: one worker process only
    start = time.monotonic()
    state["second_output"] = finish(proc, log, 120)
    state["second_exit"], state["second_seconds"] = proc.returncode, time.monotonic() - start
    return state


@pytest.mark.slow
def test_kill_9_mid_epoch_then_the_next_invocation_marks_it_killed_and_reruns_only_it(killed_and_resumed):
    state = killed_and_resumed
    killed = state["killed"]
    assert state["after_kill"][killed["run_id"]]["status"] == "RUNNING"  # nothing could end it
    assert [r["status"] for r in state["after_kill"].values() if r["epochs"] == "1"] == ["FINISHED"]
    assert sorted(r["epochs"] for r in state["after_kill"].values()) == ["1", "5"]  # the 60-epoch job never started

    output = state["second_output"]
    assert f"marked stale run {killed['run_id']} KILLED" in output
    assert "skipped (already FINISHED as run" in output and output.count("skipped (already FINISHED") == 1
    client, parents, children = runs_by_role(f"sqlite:///{state['runs']}/mlflow.db", "resume")
    dead = client.get_run(killed["run_id"])
    assert dead.info.status == "KILLED"
    assert dead.data.tags["error"] == f"process {killed['pid']} died while the run was RUNNING"
    assert len(client.get_metric_history(killed["run_id"], "loss")) >= 1  # what it logged is kept
    assert sorted(r.data.params["epochs"] for r in children) == ["1", "5", "5", "60"]  # the 1-epoch job ran once
    [rerun] = [r for r in children if r.data.params["epochs"] == "5" and r.info.run_id != killed["run_id"]]
    assert_complete(client, rerun, epochs=5)
    assert rerun.data.tags["ablation.config_hash"] == dead.data.tags["ablation.config_hash"]
    first_parent = dead.data.tags["mlflow.parentRunId"]
    assert client.get_run(first_parent).info.status == "KILLED"  # its launcher died too: reaped with it


@pytest.mark.slow
def test_a_killed_joblib_worker_does_not_lose_the_other_jobs_records(killed_and_resumed):
    state = killed_and_resumed
    assert state["second_exit"] != 0 and state["second_seconds"] < 120  # the sweep stops, and says so
    assert "TerminatedWorkerError" in state["second_output"], state["second_output"][-3000:]

    client, parents, children = runs_by_role(f"sqlite:///{state['runs']}/mlflow.db", "resume")
    victim = state["worker"]["run_id"]
    [rerun] = [r for r in children if r.data.params["epochs"] == "5" and r.info.status != "KILLED"]
    assert_complete(client, rerun, epochs=5)  # the other job's records, all there
    [parent] = [p for p in parents if p.info.run_id == rerun.data.tags["mlflow.parentRunId"]]
    sweep_dir = sweep_folder(parent, state["runs"])
    jobs = [json.loads(line) for line in (sweep_dir / "jobs.jsonl").read_text().splitlines()]
    assert sorted(j["status"] for j in jobs) == ["FINISHED", "SKIPPED"]  # the dead job alone has no line
    killed = client.get_run(victim)
    assert killed.info.status == "RUNNING" and len(client.get_metric_history(victim, "loss")) >= 1
    # What the next invocation does first: the dead worker's run and the dead launcher's parent end KILLED.
    assert set(tracking.reap_stale_runs(client, rerun.info.experiment_id, 1800)) == {victim, parent.info.run_id}
    assert client.get_run(victim).info.status == "KILLED"


# ---------------------------------------------------------------- SIGTERM (scancel) and Ctrl-C


@pytest.mark.slow
def test_sigterm_sighup_and_ctrl_c_end_the_run_killed_with_the_reason(request, tmp_path, cache_dir):
    procs = {}
    # SIGTERM in a sweep; Ctrl-C and a closed terminal or lost SSH session (SIGHUP) in a single run
    for name, mode in (("sigterm", ["-m"]), ("sigint", []), ("sighup", [])):
        # Far more epochs than either reaches before its signal: a loaded machine starts one process much later.
        runs = tmp_path / name
        args = [*mode, "epochs=5000", f"tracking.experiment={name}", *TINY]
        # A runner started in the background (`cmd &`) passes SIGINT on as ignored; Python then never turns
        # it into KeyboardInterrupt. Ctrl-C's test needs it as a terminal delivers it.
        restore = {"preexec_fn": lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)} if name == "sigint" else {}
        command = ablation(*args, runs=runs, cache=cache_dir)
        procs[name] = (spawn(request, command, tmp_path / f"{name}.log", **restore), runs)
    for name, (proc, runs) in procs.items():
        db = runs / "mlflow.db"
        wait_for(lambda db=db: [r for r in job_runs(db) if r["losses"] >= 1], 400, f"{name}: an epoch", proc=proc)
    kill_group(procs["sigterm"][0], signal.SIGTERM)  # what scancel and `kill` send
    kill_group(procs["sigint"][0], signal.SIGINT)  # what Ctrl-C sends the foreground process group
    kill_group(procs["sighup"][0], signal.SIGHUP)  # what a closing terminal sends its session
    for name, (proc, runs) in procs.items():
        output = finish(proc, tmp_path / f"{name}.log", 90)
        assert proc.returncode != 0, output[-3000:]
        client, parents, [child] = runs_by_role(f"sqlite:///{runs}/mlflow.db", name)
        assert child.info.status == "KILLED"
        reason = {"sigterm": "interrupted (signal SIGTERM)", "sighup": "interrupted (signal SIGHUP)"}.get(
            name, "interrupted (Ctrl-C)"
        )
        assert child.data.tags["error"] == reason
        assert len(client.get_metric_history(child.info.run_id, "loss")) >= 1
        if name == "sigterm":  # the sweep's parent ends with it, and the job is in the sweep's record
            assert [p.info.status for p in parents] == ["KILLED"]
            jobs = (sweep_folder(parents[0], runs) / "jobs.jsonl").read_text()
            assert json.loads(jobs)["status"] == "KILLED"
        else:
            assert parents == []


@pytest.fixture
def signals_taken():
    """`ablation.interrupts` takes SIGINT, SIGTERM and SIGHUP in this process for the test, then gives them back."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    interrupts.install()
    yield
    interrupts.take()
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_a_signal_during_a_store_call_is_raised_when_it_returns_and_a_second_at_once(signals_taken):
    steps = []
    with pytest.raises(KeyboardInterrupt, match="signal SIGTERM"), interrupts.held():
        signal.raise_signal(signal.SIGTERM)
        steps.append("the call went on to its end")
    assert steps == ["the call went on to its end"]
    assert interrupts.take() is not None
    with pytest.raises(KeyboardInterrupt, match="signal SIGHUP"), interrupts.held():
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGHUP)  # the user insists
        steps.append("not reached")
    assert steps == ["the call went on to its end"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_interrupt_a_finalizer_swallowed_is_raised_at_the_next_batch(signals_taken):
    from ablation.train import RaiseSwallowedInterrupt

    class Finalized:
        def __del__(self):
            signal.raise_signal(signal.SIGTERM)

    Finalized()  # the interrupt lands in __del__: Python prints "Exception ignored in" and goes on
    with pytest.raises(KeyboardInterrupt, match="signal SIGTERM"):
        RaiseSwallowedInterrupt().on_train_batch_end(0)


def test_signals_at_random_moments_of_store_writes_never_leave_the_store_locked_or_a_write_half_done(
    tmp_path, signals_taken
):
    # An interrupt raised inside SQLAlchemy leaks a connection that keeps SQLite's write lock: without
    # `interrupts.held` the next write failed ("database is locked", after 20 s) within a few interrupts.
    client = tracking.client(f"sqlite:///{tmp_path}/mlflow.db")
    run_id = client.create_run(client.create_experiment("signals", str(tmp_path / "artifacts"))).info.run_id
    calls, rng = 0, random.Random(0)
    for attempt in range(60):
        timer = threading.Timer(rng.uniform(0.0005, 0.02), os.kill, (os.getpid(), signal.SIGTERM))
        timer.start()
        with pytest.raises(KeyboardInterrupt, match="signal SIGTERM"):
            while True:
                calls += 1
                client.log_batch(run_id, metrics=[Metric(key, 1.0, 0, calls) for key in "abcd"])
        assert interrupts.take() is not None
        client.set_tag(run_id, "written after the interrupt", str(attempt))
    history = client.get_metric_history(run_id, "a")
    assert [m.step for m in history] == list(range(1, calls + 1))  # the call a signal came in went on to its end
    assert all(len(client.get_metric_history(run_id, key)) == calls for key in "bcd")


# ---------------------------------------------------------------- out-of-range config: refused, nothing recorded

REFUSED = [
    ("dropout=1.5", "dropout=1.5 is not allowed: a float in [0, 1)"),
    ("epochs=0", "epochs=0 is not allowed: an int >= 1"),
    ("data.image_size=0", "data.image_size=0 is not allowed: an int >= "),
    ("data.root=/nonexistent/chest_xray", "data.root='/nonexistent/chest_xray' is not allowed: an existing folder"),
    ("model.stem=small", "model.stem='small' is not allowed: imagenet for the cnn"),
    ("model.width=0.5", "model.width=0.5 is not allowed: 1 for the cnn"),
    ("trainer.tta_widths=[1.1]", "trainer.tta_widths=[1.1] is not allowed: [] (off) or two or more width factors"),
    ("trainer.tta_widths=[1,3]", "trainer.tta_widths=[1.0, 3.0] is not allowed: [] (off) or two or more"),
    ("pack.seeds=[0,0]", "pack.seeds=[0, 0] is not allowed: [] (train `seed` alone) or distinct seeds >= 0"),
    ("pack.workers=0", "pack.workers=0 is not allowed: auto (one per CPU core) or an int >= 1"),
    ("tracking.outage_wait_s=-1", "tracking.outage_wait_s=-1.0 is not allowed: seconds >= 0"),
]


@contextlib.contextmanager
def hydra_job(tmp_path: Path, cache_dir: Path, *overrides: str):
    """The config of one job as `python -m ablation` hands it to run_job, with Hydra's job state set."""
    runs = tmp_path / "runs"
    cfg = compose_config(*TINY, f"paths.runs={runs}", f"data.root={DATA_ROOT}", *overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path / "out")
        cfg.hydra.job.num = 0
        cfg.data.cache_dir = str(cache_dir)
    HydraConfig.instance().set_config(cfg)
    try:
        yield cfg
    finally:
        HydraConfig.instance().cfg = None


@pytest.mark.parametrize(("override", "message"), REFUSED)
def test_an_out_of_range_value_is_refused_before_any_run_exists(tmp_path, cache_dir, override, message):
    """run_job itself, as `python -m ablation` calls it: the error names key, value and what is allowed."""
    from ablation.job import run_job

    runs = tmp_path / "runs"
    with pytest.raises(ConfigError) as refused, hydra_job(tmp_path, cache_dir, override) as cfg:
        run_job(cfg)
    assert str(refused.value).startswith(message)
    assert not runs.exists() or not any(runs.iterdir())  # no store, no experiment, no run


def test_an_interrupt_that_a_clean_up_turns_into_another_error_still_ends_the_run_killed(
    tmp_path, cache_dir, monkeypatch
):
    """A signal's exception can land inside TensorFlow's device scope, whose exit then raises a RuntimeError
    in its place (seen with submitit's SIGUSR2 mid-fit): the run still ends KILLED and the interrupt goes on."""
    import ablation.train
    from ablation.job import run_job

    def preempted_inside_a_device_scope(cfg, callbacks=(), warm=None):
        try:
            raise SystemExit(144)  # what submitit's preemption handler raises
        except SystemExit:
            raise RuntimeError("Exiting device scope without proper scope nesting") from None

    monkeypatch.setattr(ablation.train, "train", preempted_inside_a_device_scope)
    runs = tmp_path / "runs"
    with pytest.raises(SystemExit) as interrupt, hydra_job(tmp_path, cache_dir, "tracking.experiment=masked") as cfg:
        run_job(cfg)
    assert interrupt.value.code == 144
    client = mlflow.MlflowClient(f"sqlite:///{runs}/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("masked").experiment_id])
    assert run.info.status == "KILLED" and run.data.tags["error"].startswith("interrupted (exit 144")


def test_an_op_without_a_deterministic_gpu_kernel_fails_the_run_naming_the_op_and_the_switch(
    tmp_path, cache_dir, monkeypatch
):
    """TensorFlow's op determinism raises UnimplementedError on a GPU for an op that has no deterministic kernel (a
    segment reduction behind the AUC metric on some platforms). Injected here mid-fit, as TensorFlow raises it."""
    import tensorflow as tf

    import ablation.train
    from ablation.job import run_job

    def no_deterministic_kernel(self, batch, logs=None):
        raise tf.errors.UnimplementedError(
            None,
            None,
            "Graph execution error:\n\nDetected at node UnsortedSegmentSum defined at (most recent call last):\n"
            "Deterministic GPU implementation of unsorted segment reduction op not available.\n"
            "\t [[{{node UnsortedSegmentSum}}]] [Op:__inference_one_step_on_iterator_4242]",
        )

    monkeypatch.setattr(ablation.train.RaiseSwallowedInterrupt, "on_train_batch_end", no_deterministic_kernel)
    runs = tmp_path / "runs"
    with (
        pytest.raises(Exception, match="trainer.deterministic=false"),
        hydra_job(tmp_path, cache_dir, "tracking.experiment=determinism") as cfg,
    ):
        run_job(cfg)
    client = mlflow.MlflowClient(f"sqlite:///{runs}/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("determinism").experiment_id])
    error = run.data.tags["error"]
    assert run.info.status == "FAILED" and error.startswith("NonDeterministicOpError: Deterministic GPU implementation")
    assert "(op UnsortedSegmentSum)" in error and "train with trainer.deterministic=false" in error


def test_the_entry_point_returns_the_kept_validation_metric_never_a_test_metric():
    """What an optimising sweeper (Optuna) maximises: `trainer.monitor` at the kept epoch; NaN when nothing trained."""
    from ablation.job import objective

    entry = {"status": "FINISHED", "test_auc": 0.99, "kept_val_auc": 0.91}
    assert objective(entry, compose_config()) == 0.91
    assert objective({**entry, "kept_val_loss": 0.3}, compose_config("trainer.monitor=val_loss")) == 0.3
    assert math.isnan(objective({"status": "REFUSED", "test_auc": 0.99}, compose_config()))


def test_an_unknown_model_is_refused_with_the_list_of_models():
    with pytest.raises(ConfigCompositionException) as refused:
        compose_config("model=vgg")
    assert "Could not find 'model/vgg'" in str(refused.value)
    assert all(name in str(refused.value) for name in ("cnn", "resnet18", "resnet50"))


@pytest.mark.slow
def test_refusals_from_the_command_line_exit_non_zero_and_leave_no_store(request, tmp_path, cache_dir):
    procs = {}
    for i, override in enumerate(["dropout=1.5", "model=vgg", "data.root=/nonexistent/chest_xray"]):
        runs = tmp_path / f"runs{i}"
        log = tmp_path / f"refused{i}.log"
        args = [a for a in TINY if not a.startswith("model=")] + [override]
        procs[override] = (spawn(request, ablation(*args, runs=runs, cache=cache_dir), log), log, runs)
    for override, (proc, log, runs) in procs.items():
        output = finish(proc, log, 180)
        assert proc.returncode == 1, output[-3000:]
        key = override.split("=")[0]
        assert f"{key}=" in output or f"'{key}/" in output, output[-3000:]
        assert not (runs / "mlflow.db").exists() and not (runs / "mlartifacts").exists()


# ---------------------------------------------------------------- security checks

UNSAFE = {
    r"\bpickle\.loads?\(": "pickle of any origin",
    r"\bcloudpickle\b": "cloudpickle",
    r"\bjoblib\.load\(": "joblib.load (pickle)",
    r"allow_pickle\s*=\s*True": "np.load with pickles",
    r"safe_mode\s*=\s*False": "Keras unsafe mode",
    r"enable_unsafe_deserialization": "Keras unsafe deserialization",
    r"\binstantiate\(": "hydra.utils.instantiate on config values",
    r"(?<![.\w])eval\(|(?<![.\w])exec\(": "eval/exec",
    r"\btorch\.load\(": "torch.load (pickle)",
}


def test_no_code_loads_untrusted_pickles_or_instantiates_config_values():
    sources = sorted(p for d in ("ablation", "analysis") for p in (PROJECT / d).rglob("*.py"))
    assert sources
    for path in sources:
        text = path.read_text()
        for pattern, what in UNSAFE.items():
            assert not re.search(pattern, text), f"{path.relative_to(PROJECT)}: {what}"
        for call in re.findall(r"load_model\([^)]*\)", text):  # every model load in Keras' safe mode
            assert "safe_mode=True" in call, f"{path.relative_to(PROJECT)}: {call}"


def test_the_only_targets_in_the_configs_are_the_sweep_callbacks():
    targets = {
        (path.relative_to(PROJECT).as_posix(), line.split(":", 1)[1].strip())
        for path in (PROJECT / "conf").rglob("*.yaml")
        for line in path.read_text().splitlines()
        if line.strip().startswith("_target_:")
    }
    assert targets == {
        ("conf/hydra/default.yaml", "ablation.sweep.SweepSummary"),
        ("conf/hydra/default.yaml", "analysis.callback.SweepReport"),
    }


@pytest.mark.slow
def test_a_callback_target_typed_on_the_command_line_is_blocked_by_hydra(request, tmp_path):
    """The command line is the user's own shell; still, hydra-core>=1.3.6 refuses execution-capable targets."""
    marker = tmp_path / "pwned"
    log = tmp_path / "inject.log"
    for target in ("os.system", "logging.os.system"):  # the second: an alias, GHSA-37p2-j732-x8pj
        inject = f'+hydra.callbacks.x={{_target_:{target},_args_:["touch {marker}"]}}'
        quick = "~hydra.callbacks.sweep_summary"  # not needed here
        proc = spawn(request, [sys.executable, "-m", "ablation", quick, inject, f"paths.runs={tmp_path}"], log)
        output = finish(proc, log, 180)
        assert proc.returncode == 1 and "is blocklisted" in output, output[-3000:]
        assert not marker.exists()


def test_redact_strips_passwords_from_uris_overrides_and_messages():
    assert tracking.redact("postgresql://u:p@db:5432/mlflow") == "postgresql://u:***@db:5432/mlflow"
    assert tracking.redact("tracking.uri=http://a:b@h:1") == "tracking.uri=http://a:***@h:1"
    assert tracking.redact("https://u:p@ss@h/x") == "https://u:***@h/x"  # an unescaped @ in the password
    assert (
        tracking.redact("API request to http://u:pw@h:5000/api failed")
        == "API request to http://u:***@h:5000/api failed"
    )
    for plain in ("http://h:5000", "sqlite:////tmp/mlflow.db", "file:///a/b", "user@host", "a:b@c", "0.5"):
        assert tracking.redact(plain) == plain
    # What the first redaction missed: a password holding /, a bare token, a password as a query parameter.
    assert tracking.redact("postgresql://u:pa/ss@db/mlflow") == "postgresql://u:***@db/mlflow"
    assert tracking.redact("https://ghp_T0KEN@host:5000/x") == "https://***@host:5000/x"
    assert tracking.redact("postgresql://db/m?user=u&password=p/w&sslmode=x") == (
        "postgresql://db/m?user=u&password=***&sslmode=x"
    )
    assert tracking.redact("http://h/api?PWD=x y") == "http://h/api?PWD=*** y"
    assert tracking.redact("http://h/users/a@b") == "http://h/users/a@b"  # an @ in the path is no userinfo


def test_http_tracking_uris_get_bounded_retries_that_the_environment_can_override(monkeypatch):
    for key in tracking.HTTP_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")
    tracking.client("http://127.0.0.1:9")  # no request is made
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "5"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"
