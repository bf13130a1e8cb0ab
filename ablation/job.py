"""One job of `python -m ablation`: pin a GPU, validate, skip if done, train, record in MLflow, end the run.

A job's run ends FINISHED, FAILED (the message in the `error` tag) or KILLED (Ctrl-C, SIGTERM);
never RUNNING through anything Python can see (`run_lifecycle`). In a sweep, a failed job does not
stop the others. Nothing here imports Keras or TensorFlow: only the training step does, after the
job has been pinned to its GPU.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ablation import console, contract, devices, interrupts, store, sweep, tracking
from ablation.contract import redact
from ablation.outbox import Outbox, ended_unsent, replay
from ablation.resume import Identity, already_finished
from ablation.validate import ConfigError, validate

log = logging.getLogger(__name__)


INTERRUPTED_WAIT_S = 10.0  # how long an interrupted job waits for a store that cannot take its ending


class RunNotEndedError(RuntimeError):
    """Training finished but the tracking store did not record it: the job must not count as done."""


@dataclass
class Outcome:
    """How a run ended, and the fields its line in the sweep's jobs file gets."""

    status: str = "RUNNING"
    error: str | None = None
    fields: dict = field(default_factory=dict)


def _interrupt_behind(error: BaseException) -> BaseException | None:
    """The Ctrl-C, SIGTERM or scheduler exit that `error` was raised while handling, if any.

    The signal's exception lands wherever Python is; inside TensorFlow's device scope, the scope's exit then
    raises `RuntimeError: Exiting device scope without proper scope nesting` in its place.
    """
    context = error.__context__
    while context is not None:
        if isinstance(context, KeyboardInterrupt | SystemExit):
            return context
        context = context.__context__
    return None


def _killed_message(interrupt: BaseException) -> str:
    if isinstance(interrupt, SystemExit):
        # submitit's handler of SLURM's preemption or time-limit signal: it requeued the job, and the
        # sweep (and its parent run) goes on.
        return f"interrupted (exit {interrupt.code}: preempted or timed out, requeued by the scheduler)"
    return f"interrupted ({str(interrupt) or 'Ctrl-C'})"  # Ctrl-C's KeyboardInterrupt has no text


@contextmanager
def run_lifecycle(
    outbox: Outbox,
    parent: str | None = None,
    raise_failures: bool = True,
    on_end: Callable[[Outcome], None] = lambda outcome: None,
    name: str = "",
    files: Path | None = None,
    wait_s: float = 0.0,
) -> Iterator[Outcome]:
    """End the outbox's run FINISHED, FAILED (error tag, exception logged) or KILLED (Ctrl-C, SIGTERM, a scheduler's
    exit, or such an interrupt that a library's clean-up turned into another error), calling `on_end` first.

    An interrupt always propagates (Ctrl-C also ends the sweep's parent run); a failure propagates only with
    `raise_failures` (a sweep's job returns instead, so the other jobs go on). `name` is what the log calls the job.
    The ending is the `outbox`'s last record, waited for at most `wait_s` (an interrupted job: at most
    `INTERRUPTED_WAIT_S`). A run the store would not end FINISHED (it went away) does not count as finished: the job
    fails, naming `files`, the folder that keeps what the run wrote, and the journal its records wait in.
    """
    outcome, run_id = Outcome(), outbox.run_id

    def end(status: str, error: str | None = None, wait: float = wait_s) -> bool | str:
        outbox.end(status, error)
        return outbox.close(wait)

    def killed(interrupt: BaseException) -> None:
        outcome.status, outcome.error = "KILLED", _killed_message(interrupt)
        end("KILLED", outcome.error, min(wait_s, INTERRUPTED_WAIT_S))
        if parent and isinstance(interrupt, KeyboardInterrupt):
            tracking.end_run(outbox.client, parent, "KILLED", outcome.error)
        on_end(outcome)

    try:
        yield outcome
    except (KeyboardInterrupt, SystemExit) as interrupt:
        interrupts.take()
        killed(interrupt)
        raise
    except Exception as error:
        held = interrupts.take()  # a signal came during a store call that then failed
        interrupt = _interrupt_behind(error) or held
        if interrupt is not None:
            killed(interrupt)
            raise interrupt from error
        outcome.status, outcome.error = "FAILED", redact(f"{type(error).__name__}: {error}")
        log.exception("job failed: %s", name or run_id)
        end("FAILED", outcome.error)
        on_end(outcome)
        if raise_failures:
            raise
    else:
        ended = end("FINISHED")
        if ended is not True:
            kept = f"; its files stay in {files}" if files else ""
            kept += f"; its records wait in {outbox.path}, sent by the next command that opens the store"
            outcome.status = "FAILED"
            outcome.error = redact(f"trained, but the store would not end run {run_id} FINISHED ({ended}){kept}")
            log.error("job failed: %s: %s", name or run_id, outcome.error)
            on_end(outcome)
            if raise_failures:
                raise RunNotEndedError(outcome.error)
            return
        outcome.status = "FINISHED"
        on_end(outcome)


@dataclass
class Job:
    """Where a job stands in its sweep, from Hydra's runtime config."""

    num: int
    in_sweep: bool
    sweep_dir: Path
    out_dir: Path
    task: list[str]  # its overrides, passwords redacted (`tracking.uri=http://u:PASS@...`)
    verbose: bool = False  # hydra.verbose: the frameworks' chatter shown (`ablation.console`)

    @classmethod
    def current(cls) -> Job:
        hydra = HydraConfig.get()
        in_sweep = hydra.mode == RunMode.MULTIRUN
        return cls(
            num=hydra.job.num if in_sweep else 0,
            in_sweep=in_sweep,
            sweep_dir=Path(hydra.sweep.dir),
            out_dir=Path(hydra.runtime.output_dir),
            task=[redact(override) for override in hydra.overrides.task],
            verbose=bool(hydra.verbose),
        )

    @property
    def overrides(self) -> str:
        return " ".join(self.task)


def open_store(cfg: DictConfig):
    """The MLflow client and experiment id, checked first (`ablation.store`: `StoreError` says what is wrong), with
    what earlier jobs' journals still hold sent (`ablation.outbox.replay`), then this experiment's dead runs reaped.

    The lock serialises the first touch of a fresh store (schema migration) across parallel jobs:
    MlflowClient opens its store, and so migrates a fresh SQLite file, as it is built.
    """
    store.check(cfg.tracking.uri, create=True, deep=False)  # the command's own check read every page
    Path(cfg.paths.runs).mkdir(parents=True, exist_ok=True)
    with FileLock(str(Path(cfg.paths.runs) / "mlflow-init.lock")):
        client = tracking.client(cfg.tracking.uri)
        experiment_id = tracking.ensure_experiment(client, cfg.tracking.experiment, cfg.tracking.artifact_location)
        replay(client, cfg.tracking.uri, cfg.paths.runs)
        tracking.reap_stale_runs(client, experiment_id, cfg.tracking.heartbeat_timeout_min * 60)
    return client, experiment_id


def _train_and_log(cfg: DictConfig, outbox: Outbox, out_dir: Path, warm: dict | None = None) -> dict:
    """Train, write the run's files, then hand its records to the outbox (each epoch's metrics as it ends, step = epoch
    number; the once-logged metrics at step 0; the files, uploaded once; the datasets); the fields of the job's line.
    `warm`: `ablation.train.train`'s. The run's params were logged when it was claimed (`run_job`)."""
    with console.framework_start():  # Keras and TensorFlow load here, after the GPU is pinned
        from ablation import artifacts
        from ablation.data import files_digest
        from ablation.train import EpochLogger, train

    result = train(cfg, callbacks=[EpochLogger(lambda epoch, m: outbox.metrics(m, step=epoch))], warm=warm)
    outbox.metrics(artifacts.write(cfg, result, out_dir / "artifacts"), step=0)
    outbox.artifacts(out_dir / "artifacts")
    counts = result.data.record(cfg.class_weighting.name)["splits"]
    digests = {name: files_digest(getattr(result.data, name).files, cfg.data.root) for name in counts}
    outbox.datasets(cfg.data.root, {name: (digests[name], counts[name]) for name in counts})
    monitor = f"kept_{cfg.trainer.monitor}"
    auc, accuracy = result.test_metrics["auc"], result.test_metrics["accuracy"]
    log.info("finished run %s: test AUC %.4f, accuracy %.4f", outbox.run_id, auc, accuracy)
    return {"test_auc": round(float(auc), 4), monitor: result.kept_metrics[str(cfg.trainer.monitor)]}


def seed_config(cfg: DictConfig, seed: int) -> DictConfig:
    """The configuration a lone run of `seed` has: what each seed of a pack trains, logs and is resumed by."""
    one = cfg.copy()
    one.seed = seed
    one.pack.seeds = []
    one.pack.workers = "auto"
    return one


def schema_config(plain: dict) -> DictConfig:
    """A resolved config sent to another process as a plain dict, typed by the schema again."""
    from ablation.config import Config

    return OmegaConf.merge(OmegaConf.structured(Config), plain)


@dataclass(frozen=True)
class Seat:
    """One seed's claimed run in a job."""

    seed: int
    run_id: str
    out_dir: Path  # where its files go
    name: str  # its overrides, as a lone run of the seed would have them


@dataclass(frozen=True)
class Lines:
    """Where a job's lines go: the sweep's jobs file and the `[k/N]` progress log (`ablation.sweep`), in a sweep."""

    num: int
    in_sweep: bool
    sweep_dir: Path
    started: float

    def write(self, entry: dict, status: str, error: str | None = None, **fields) -> dict:
        entry.update(status=status, **fields, **({"error": error} if error else {}))
        if self.in_sweep:
            sweep.append_job(self.sweep_dir, entry)
            which = f" (seed {entry['seed']})" if PACKED in entry else ""
            log.info("%s%s", sweep.progress(self.sweep_dir, self.num, status, time.time() - self.started), which)
        return entry


PACKED = "packed_with"  # a packed seed's line in the jobs file: how many seeds its job trained


def train_seats(config: DictConfig | dict, seats: list[Seat], lines: Lines, entries: dict[int, dict]) -> None:
    """Train each seat's seed in turn, each run ended FINISHED, FAILED or KILLED; an interrupt goes on once its run has
    ended. One compiled model serves every seed (`ablation.train.train`'s `warm`). Runs in the job's process, or in a
    pack's worker process (`ablation.workers`), where `config` comes as a plain dict."""
    cfg = config if isinstance(config, DictConfig) else schema_config(config)
    client, warm = tracking.client(cfg.tracking.uri), {}
    for seat in seats:
        _train_seat(seed_config(cfg, seat.seed), client, seat, lines, entries[seat.seed], warm=warm)


def _train_seat(
    cfg: DictConfig,
    client,
    seat: Seat,
    lines: Lines,
    entry: dict,
    parent: str | None = None,
    raise_failures: bool = False,
    warm: dict | None = None,
) -> None:
    """Train one claimed run inside its lifecycle (`run_lifecycle`), its line written as it ends."""
    end = lambda outcome: lines.write(entry, outcome.status, outcome.error, **outcome.fields)  # noqa: E731
    outbox = Outbox(client, cfg.tracking.uri, seat.run_id, cfg.paths.runs)
    wait_s = float(cfg.tracking.outage_wait_s)
    with (
        run_lifecycle(outbox, parent, raise_failures, end, seat.name, seat.out_dir, wait_s) as out,
        tracking.system_metrics(cfg.tracking.uri, seat.run_id, cfg.tracking.system_metrics_s),
    ):
        out.fields = _train_and_log(cfg, outbox, seat.out_dir, warm)


def run_job(cfg: DictConfig) -> dict:
    """Run one configuration, for `seed` or for each of `pack.seeds`; returns the job's entry in the sweep table (a
    pack's: its seeds and the mean of their kept validation metric)."""
    job = Job.current()
    packed = bool(cfg.pack.seeds)
    seeds = [int(seed) for seed in cfg.pack.seeds] if packed else [int(cfg.seed)]
    lines = Lines(job.num, job.in_sweep, job.sweep_dir, time.time())
    task = [tracking.portable_override(override, cfg.paths.root) for override in job.task]
    tasks = {seed: _seed_task(task, seed) if packed else task for seed in seeds}  # a lone run's overrides
    entries = {
        seed: {"job": job.num, "seed": seed, "overrides": " ".join(tasks[seed])}
        | ({PACKED: len(seeds)} if packed else {})
        for seed in seeds
    }
    if job.in_sweep:
        together = f" (seeds {', '.join(map(str, seeds))} together)" if packed else ""
        log.info("%s %s%s", sweep.progress(job.sweep_dir, job.num), job.overrides or "defaults", together)

    if job.verbose:
        console.verbose()  # before any framework starts
    visible = devices.pin_gpu(job.num)  # first: a framework reads CUDA_VISIBLE_DEVICES once, when it starts
    interrupts.install()  # scancel, kill and a closed terminal end the run KILLED, like Ctrl-C
    try:
        validate(cfg)
        devices.select_backend(str(cfg.trainer.backend), cfg.trainer.deterministic)
    except (ConfigError, devices.BackendError) as error:
        log.error("refused %s: %s", job.overrides or "the run", error)
        for entry in entries.values():
            lines.write(entry, "REFUSED", error=str(error))
        if job.in_sweep:
            return entries[seeds[0]]
        raise

    try:
        client, experiment_id = open_store(cfg)
    except store.StoreError as error:
        log.error("%s", error)
        for entry in entries.values():
            lines.write(entry, "FAILED", error=str(error))
        if job.in_sweep:
            return entries[seeds[0]]
        raise SystemExit(2) from None  # one line says it all
    commit = tracking.git_commit(cfg.paths.root)
    monitor = f"kept_{cfg.trainer.monitor}"
    configs = {seed: seed_config(cfg, seed) if packed else cfg for seed in seeds}
    held: list[str] = []  # the runs this job holds, parent included: their heartbeat says they are alive
    parent, seats = None, []

    def create(seed: int, identity: Identity) -> str:
        nonlocal parent
        if parent is None and job.in_sweep:
            parent = sweep.parent_run(client, experiment_id, job.sweep_dir, cfg.tracking.uri, cfg.paths.root)
            held.append(parent)
        tags = {
            contract.ROLE: contract.JOB,
            **identity.tags,
            contract.OVERRIDES: entries[seed]["overrides"],
            contract.GIT_COMMIT: commit,
            **tracking.process_tags(),
            **({contract.DEVICES: visible} if visible is not None else {}),
            **({contract.PARENT: parent} if parent else {}),
            **({contract.PACK: ",".join(map(str, seeds))} if packed else {}),
        }
        run_id = tracking.create_run(client, experiment_id, ", ".join(tasks[seed]) or cfg.model.name, tags)
        held.append(run_id)
        return run_id

    beat_every = cfg.tracking.heartbeat_timeout_min * 60 / 10
    with tracking.heartbeat(client, held, beat_every):
        # Each seed claims its run, params logged, before any trains: each one ends with a status and says what it was.
        try:
            for seed in seeds:
                identity = Identity.of(configs[seed])
                make = functools.partial(create, seed, identity)
                claimed = _claim(client, experiment_id, configs[seed], identity, commit, make, held)
                if not isinstance(claimed, str):
                    done_id, overrides = claimed.info.run_id, entries[seed]["overrides"]
                    log.info(
                        "skipped (already FINISHED as run %s): %s; tracking.skip_finished=false re-runs it",
                        *(done_id, overrides),
                    )
                    kept = {monitor: claimed.data.metrics.get(monitor)}
                    lines.write(entries[seed], "SKIPPED", run_id=done_id, **kept)
                    continue
                tracking.log_params(client, claimed, tracking.run_params(configs[seed]))
                entries[seed]["run_id"], name = claimed, entries[seed]["overrides"]
                log.info("MLflow run %s (%s) in experiment %r", claimed, name or "defaults", cfg.tracking.experiment)
                seats.append(Seat(seed, claimed, job.out_dir / f"seed_{seed}" if packed else job.out_dir, name))
        except BaseException as error:  # nothing trained yet: the runs claimed end, saying why
            interrupt = isinstance(error, KeyboardInterrupt | SystemExit)
            why = _killed_message(error) if interrupt else redact(f"{type(error).__name__}: {error}")
            for run_id in held:
                if run_id != parent or isinstance(error, KeyboardInterrupt):
                    tracking.end_run(client, run_id, "KILLED" if interrupt else "FAILED", f"{why}, before training")
            raise

        if not packed and seats:
            [seat] = seats
            try:
                _train_seat(cfg, client, seat, lines, entries[seat.seed], parent, raise_failures=not job.in_sweep)
            except RunNotEndedError:
                raise SystemExit(1) from None  # trained, and its line says where everything waits: no traceback
        elif seats:
            _train_pack(cfg, client, seats, parent, lines, entries)
    if not packed:
        return entries[seeds[0]]
    kept = [entries[seed][monitor] for seed in seeds if entries[seed].get(monitor) is not None]
    return {"seeds": seeds, monitor: sum(kept) / len(kept) if kept else None}


WAIT_POLL_S = 5.0  # how often a job waiting for another's claim looks at it


def _claim(client, experiment_id: str, cfg: DictConfig, identity: Identity, commit: str, create, held: list[str]):
    """The FINISHED run resume skips to, or the id of the run this job claimed (made by `create`) to train `cfg`.

    Resume alone would let two sweeps into one store both train a configuration neither had finished. So a job trains a
    configuration only if no live run of another job claimed it first (`tracking.claimed_before`); it waits for one that
    did, and then skips to its run, or claims the configuration again if that run failed. Two claims made at once both
    see each other, and agree on which came first (`start_time`, then run id): the other one's run is deleted, and
    dropped from `held`, the runs whose heartbeat the job keeps.
    `tracking.skip_finished=false` asks for another run, and claims nothing.
    """
    timeout_s = cfg.tracking.heartbeat_timeout_min * 60
    while True:
        if done := already_finished(client, experiment_id, cfg, identity, commit):
            return done
        if not cfg.tracking.skip_finished or identity.data is None:
            return create()
        rival = tracking.claimed_before(client, experiment_id, identity.tags, None, timeout_s)
        if rival is None:
            run_id = create()
            rival = tracking.claimed_before(client, experiment_id, identity.tags, run_id, timeout_s)
            if rival is None:
                return run_id
            client.delete_run(run_id)  # both claimed it at once, and the other claim came first
            held.remove(run_id)
        tags = rival.data.tags
        log.info(
            "waiting: run %s (process %s on %s) is training this configuration; this job goes on when it ends",
            *(rival.info.run_id, tags.get(contract.PID), tags.get(contract.HOST)),
        )
        while not tracking.ended_or_reaped(client, rival.info.run_id, timeout_s):
            time.sleep(WAIT_POLL_S)


def _seed_task(task: list[str], seed: int) -> list[str]:
    """A packed seed's overrides, as a lone run of it would have them: `pack.*` out, `seed=` in."""
    return [*(o for o in task if not o.lstrip("+~").startswith(("pack.", "pack=", "seed="))), f"seed={seed}"]


def _train_pack(cfg, client, seats: list[Seat], parent: str | None, lines: Lines, entries: dict[int, dict]) -> None:
    """The pack's seeds in `pack.workers` processes side by side (`ablation.workers`), or, with one worker, in turn in
    this process. A seed whose worker went away before ending its run is ended here: KILLED after an interrupt, else
    FAILED with the worker's exit code. Ctrl-C ends the sweep's parent run KILLED, as a lone job's does."""
    from ablation import workers

    count, threads = workers.plan(cfg.pack.workers, len(seats))
    shares = [seats[i::count] for i in range(count)]
    log.info("%d seeds in %d worker(s) side by side, %d thread(s) each", len(seats), count, threads)
    interrupt, codes = None, [None] * count
    try:
        if count == 1:
            train_seats(cfg, seats, lines, entries)
        else:
            plain = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
            work = [(plain, share, lines, entries) for share in shares]
            codes = workers.side_by_side(
                train_seats, work, threads, str(cfg.trainer.backend), cfg.trainer.deterministic
            )
    except (KeyboardInterrupt, SystemExit) as error:
        interrupts.take()  # handled here: the store calls that end the seeds must not raise it again
        interrupt = error
    monitor = str(cfg.trainer.monitor)
    for share, code in zip(shares, codes, strict=True):
        for seat in share:
            entry = entries[seat.seed]
            if ended_unsent(cfg.paths.runs, seat.run_id):  # its worker ended it, but the store could not take it yet
                continue
            run = client.get_run(seat.run_id)
            if run.info.status != "RUNNING":  # ended by its worker, which wrote its line: this process learns how
                fields = {
                    "test_auc": run.data.metrics.get("test_auc"),
                    f"kept_{monitor}": run.data.metrics.get(f"kept_{monitor}"),
                }
                entry.update(status=run.info.status, **{k: v for k, v in fields.items() if v is not None})
            elif interrupt is not None:
                why = _killed_message(interrupt)[:-1] + ", before this seed ended)"
                tracking.end_run(client, seat.run_id, "KILLED", why)
                lines.write(entry, "KILLED", why)
            else:
                why = f"its worker process ended (exit code {code}) before this seed did"
                tracking.end_run(client, seat.run_id, "FAILED", why)
                lines.write(entry, "FAILED", why)
    if interrupt is not None:
        if parent and isinstance(interrupt, KeyboardInterrupt):
            tracking.end_run(client, parent, "KILLED", _killed_message(interrupt))
        raise interrupt


def objective(entry: dict, cfg: DictConfig) -> float:
    """The kept epoch's validation metric (`trainer.monitor`) for an optimising sweeper; NaN if it did not train."""
    value = entry.get(f"kept_{cfg.trainer.monitor}")
    return math.nan if value is None else float(value)
