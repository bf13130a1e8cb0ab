"""The study sweeper: turns a study's design into jobs and hands them to whichever launcher the sweep uses
(basic, joblib, Ray, SLURM), in one batch, or in rounds when seeds run until the answer is clear.

Jobs keep everything they do today (resume, failure isolation, the parent run, the jobs file); the sweeper
adds the design record (`design.json` in the sweep folder and on the parent run), which the report reads.

Hydra imports every installed plugin whenever any Hydra app starts (every run, every tab completion), so this
module imports only Hydra and OmegaConf at its top; the designs (`_design`), pandas, MLflow and the project load
once a sweep is set up.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

if TYPE_CHECKING:
    from hydra_plugins.study_sweeper._design import Cell, Sweep


class StudySweeper(Sweeper):
    def __init__(
        self,
        design: str = "grid",
        params: dict[str, str] | None = None,
        baseline: list[str] | None = None,
        components: dict[str, Any] | None = None,
        seeds: Any = None,
        min_seeds: int = 2,
        max_seeds: int = 5,
        metric: str = "test_auc",
        dry_run: bool = False,
        max_batch_size: int | None = None,
        pack_seeds: int | None = None,
    ) -> None:
        from hydra_plugins.study_sweeper._design import AutoSeeds, Design, DesignError

        try:
            self.design = Design(design)
        except ValueError:
            raise DesignError(
                f"hydra.sweeper.design={design!r}: allowed are {', '.join(d.value for d in Design)}"
            ) from None
        self.params = dict(params or {})
        self.baseline = [str(o) for o in _plain(baseline or [])]
        self.components = {name: _plain(removal) for name, removal in (components or {}).items()}
        self.seeds = _plain(seeds)
        self.auto = self.seeds == "auto"
        self.auto_seeds = AutoSeeds(min_seeds, max_seeds, metric) if self.auto else None
        self.dry_run = dry_run
        self.max_batch_size = max_batch_size
        if pack_seeds is not None and (
            isinstance(pack_seeds, bool) or not isinstance(pack_seeds, int) or pack_seeds < 1
        ):
            raise DesignError(
                f"hydra.sweeper.pack_seeds={pack_seeds!r}: allowed are null (a job per seed) or an int >= 1"
            )
        self.pack_seeds = pack_seeds or 1
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher: Launcher | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    # ------------------------------------------------------------------ planning

    def _compose(self, overrides: list[str]) -> DictConfig:
        return self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))

    def _baseline_level(self, base: list[str]):
        cfg = self._compose(base)
        choices = cfg.hydra.runtime.choices
        return lambda key: choices[key] if key in choices else OmegaConf.select(cfg, key)

    def cells(self, parsed: Sweep) -> list[Cell]:
        from hydra_plugins.study_sweeper import _design as design
        from hydra_plugins.study_sweeper._design import Design

        if self.design is Design.grid:
            return design.grid(parsed)
        if self.design is Design.loco:
            return design.loco(parsed, self.baseline, self.components)
        level = self._baseline_level(design.merge(self.baseline, parsed.fixed))
        return design.one_at_a_time(parsed, self.baseline, level)

    @staticmethod
    def job_overrides(cell: Cell, seeds: list[int | None]) -> list[str]:
        """A job's overrides: the cell's, its seed's, and with several seeds, the pack of them (`pack.seeds`)."""
        from hydra_plugins.study_sweeper import _design as design

        if seeds == [None]:
            return cell.overrides
        pack = [f"pack.seeds=[{','.join(map(str, seeds))}]"] if len(seeds) > 1 else []
        return design.merge(cell.overrides, [f"{design.SEED}={seeds[0]}", *pack])

    def jobs(self, planned: list[tuple[Cell, int | None]]) -> list[tuple[Cell, list[int | None]]]:
        """The planned (cell, seed) pairs as jobs: one per seed, or with `pack_seeds`, each cell's seeds in packs of
        up to that many, trained together in one job (`ablation.job`)."""
        jobs: list[tuple[Cell, list[int | None]]] = []
        for cell, seed in planned:
            last = jobs[-1] if jobs else None
            if last and last[0] is cell and seed is not None and len(last[1]) < self.pack_seeds:
                last[1].append(seed)
            else:
                jobs.append((cell, [seed]))
        return jobs

    # ------------------------------------------------------------------ sweeping

    def sweep(self, arguments: list[str]) -> Any:
        from hydra_plugins.study_sweeper import _design as design
        from hydra_plugins.study_sweeper._design import DesignError

        lines = [f"{k}={v}" for k, v in self.params.items()] + list(arguments)
        parsed = design.parse(lines, OverridesParser.create(config_loader=self.hydra_context.config_loader))
        cells = self.cells(parsed)
        if self.auto:
            if parsed.seeds is not None:
                raise DesignError("seeds are given twice: hydra.sweeper.seeds=auto and a seed= override; keep one")
            first_seeds: list[int | None] = list(range(self.auto_seeds.min_seeds))
        else:
            first_seeds = design.seed_list(self.seeds, parsed.seeds) or [None]
        planned = [(cell, seed) for cell in cells for seed in first_seeds]
        if self.dry_run:
            self._print_dry_run(planned)
            return []

        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        record = {
            "design": self.design.value,
            "seeds": self.seeds,
            "metric": self.auto_seeds.metric if self.auto else None,
            "alpha": self.auto_seeds.alpha if self.auto else None,  # each look's level: the report judges at it
            "cells": [
                {"label": c.label, "reference": c.reference, "overrides": c.overrides, "jobs": []} for c in cells
            ],
            "rounds": [],
            "started": time.time(),  # for the jobs' estimate of the time left (`ablation.sweep.progress`)
        }
        returns = [self._launch(planned, cells, record, sweep_dir)]
        while self.auto:
            again = self._decide_round(cells, record, sweep_dir)
            if not again:
                break
            returns.append(self._launch(again, cells, record, sweep_dir))
        return returns

    def _launch(self, planned: list[tuple[Cell, int | None]], cells: list[Cell], record: dict, sweep_dir: Path):
        from ablation import sweep

        first = 1 + max((j["job"] for c in record["cells"] for j in c["jobs"]), default=-1)
        jobs = self.jobs(planned)
        for offset, (cell, seeds) in enumerate(jobs):
            record["cells"][cells.index(cell)]["jobs"].extend({"job": first + offset, "seed": seed} for seed in seeds)
        batch = [self.job_overrides(cell, seeds) for cell, seeds in jobs]
        sweep.record_design(sweep_dir, record)  # the jobs read how many are planned from it: "[k/N]"
        results: list[JobReturn] = []
        size = self.max_batch_size or len(batch)
        for start in range(0, len(batch), size):
            chunk = batch[start : start + size]
            self.validate_batch_is_legal(chunk)
            launched = self.launcher.launch(chunk, initial_job_idx=first + start)
            for result in launched:
                _ = result.return_value  # re-raises what a job could not handle itself (Ctrl-C)
            results.extend(launched)
        self._record(record, sweep_dir)
        return results

    def _record(self, record: dict, sweep_dir: Path) -> None:
        """Join each planned job with its line in the jobs file (run id, status); write and log the record."""
        from ablation import sweep

        rows = [row for _, row in sweep.read_jobs(sweep_dir).iterrows()]
        by_seed = {(int(row["job"]), _seed(row)): row for row in rows}  # a pack's job has a line per seed
        by_num = {int(row["job"]): row for row in rows}  # a lone job's line, whatever seed it names
        planned = Counter(job["job"] for cell in record["cells"] for job in cell["jobs"])
        for cell in record["cells"]:
            for job in cell["jobs"]:
                line = by_seed.get((job["job"], job["seed"]))
                if line is None and planned[job["job"]] == 1:
                    line = by_num.get(job["job"])
                if line is not None:
                    job["status"] = line["status"]
                    job["run_id"] = line["run_id"] if isinstance(line.get("run_id"), str) else None
        sweep.record_design(sweep_dir, record)

    def _decide_round(self, cells: list[Cell], record: dict, sweep_dir: Path) -> list[tuple[Cell, int]]:
        """The verdict on every comparison so far, at the rule's level for one look (`AutoSeeds.alpha`); one more
        seed for every cell that has a finished run, until all are decided or at max_seeds. Printed and logged."""
        import pandas as pd

        from ablation import sweep
        from analysis.report import decisions
        from analysis.runs import AnalysisError, load_study

        rule = self.auto_seeds
        seeds = max(len(entry["jobs"]) for entry in record["cells"])
        done = ("FINISHED", "SKIPPED")
        trained = [
            c for c, e in zip(cells, record["cells"], strict=True) if any(j.get("status") in done for j in e["jobs"])
        ]
        parent = sweep.parent_of(sweep_dir)  # none until a job trains
        judged = pd.DataFrame(columns=["comparison", "verdict"])
        if parent and trained:
            try:
                judged = decisions(load_study(parent["tracking_uri"], sweep=parent["run_id"]), rule.alpha, rule.metric)
            except AnalysisError:  # e.g. the finished runs were skipped to and none of this sweep finished
                pass
        decision = rule.decide(list(judged["verdict"]), seeds, len(trained))
        lines = judged.to_dict("records")
        record["rounds"].append({"seeds": seeds, "decision": decision, "comparisons": lines})
        sweep.record_design(sweep_dir, record)
        heading = f"Seeds, round {len(record['rounds'])} ({seeds} per cell): the {rule.metric} verdicts"
        limits = f"each look at alpha {rule.alpha:.4g} = {rule.alpha_total} / {rule.looks} looks"
        limits += f"; at most {rule.max_seeds} seeds"
        table = pd.DataFrame(lines).to_string(index=False, float_format="{:.4f}".format) if lines else "(none yet)"
        print(f"\n{heading} ({limits})\n{table}\n{decision}", flush=True)
        return [(cell, seeds) for cell in trained] if decision == "another seed" else []

    def _print_dry_run(self, planned: list[tuple[Cell, int | None]]) -> None:
        import pandas as pd

        rows = []
        for num, (cell, seeds) in enumerate(self.jobs(planned)):
            overrides = self.job_overrides(cell, seeds)
            rows.append(
                {"job": num, "cell": cell.label, "status": self._would_be(overrides), "overrides": " ".join(overrides)}
            )
        more = f"; seeds=auto: later rounds add seeds up to {self.auto_seeds.max_seeds} per cell" if self.auto else ""
        print(f"Dry run ({self.design.value}): {len(rows)} jobs planned{more}; nothing is run or written.")
        print(pd.DataFrame(rows).to_string(index=False))

    def _would_be(self, overrides: list[str]) -> str:
        """FINISHED if resume would skip the job, REFUSED (why) if validation would, else 'to run'."""
        from ablation.validate import ConfigError, validate

        cfg = self._compose(overrides)
        with open_dict(cfg):
            del cfg["hydra"]
        try:
            validate(cfg)
        except ConfigError as error:
            return f"REFUSED: {error}"
        seeds = list(cfg.pack.seeds)
        if not seeds:
            done = _finished_in_store(cfg)
            return f"FINISHED ({done})" if done else "to run"
        from ablation.job import seed_config

        done = {seed: run for seed in seeds if (run := _finished_in_store(seed_config(cfg, seed)))}
        if len(done) == len(seeds):
            return f"FINISHED ({', '.join(done.values())})"
        return f"seeds {', '.join(map(str, done))} FINISHED, the others to run" if done else "to run"


def _finished_in_store(cfg: DictConfig) -> str | None:
    """The run resume would skip a job for (`ablation.job.already_finished`), looked up without creating a store,
    an experiment or a run."""
    from ablation import tracking
    from ablation.contract import missing_sqlite_store
    from ablation.resume import Identity, already_finished

    if missing_sqlite_store(cfg.tracking.uri) is not None:
        return None
    client = tracking.client(cfg.tracking.uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    if experiment is None:
        return None
    commit = tracking.git_commit(cfg.paths.root)
    done = already_finished(client, experiment.experiment_id, cfg, Identity.of(cfg), commit)
    return done.info.run_id if done else None


def _seed(line) -> int | None:
    """A jobs-file line's seed (None on lines written before lines had one)."""
    seed = line.get("seed")
    return None if seed is None or seed != seed else int(seed)


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
