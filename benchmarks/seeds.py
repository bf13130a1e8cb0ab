"""Seeds per hour of one configuration, trained as lone jobs and packed (`python -m benchmarks.bench --only seeds`).

Each mechanism is a real sweep, run as a user types it (`python -m ablation -m ... hydra.sweeper.seeds=N`), into
its own experiment of one store, one after the other on the same warm image cache:
- `lone`: a job per seed, in one process (Hydra's basic launcher), today's default;
- `packed`: `hydra.sweeper.pack_seeds=N`, the seeds in worker processes side by side, one a core (`pack.workers=auto`);
- `packed_in_turn`: the same with `pack.workers=1`, the seeds in turn in one process, one compiled model for all,
  the same ops as lone runs (so the same metrics).
The sweeps' end-of-sweep report is off (it costs the same whatever trained the runs). Seeds per hour count the
FINISHED runs over the sweep command's wall time, process start included.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import PROJECT, compose, log

PRESETS = {  # the quickstart study's configuration (conf/study/quickstart.yaml, 3 epochs) and the recipe's
    "quick": ["experiment=quick", "model=resnet18", "dropout=0", "epochs=3"],
    "best": ["experiment=best"],
}
MECHANISMS = {
    "lone": [],
    "packed": ["hydra.sweeper.pack_seeds={seeds}"],
    "packed_in_turn": ["hydra.sweeper.pack_seeds={seeds}", "pack.workers=1"],
}


def sweep_command(preset: str, mechanism: str, seeds: int, runs_dir: Path, root: str, cache_dir: Path) -> list[str]:
    extra = [option.format(seeds=seeds) for option in MECHANISMS[mechanism]]
    return [
        sys.executable,
        *("-m", "ablation", "-m"),
        *PRESETS[preset],
        f"hydra.sweeper.seeds={seeds}",
        *extra,
        f"paths.runs={runs_dir}",
        f"tracking.experiment=seeds-{preset}-{mechanism}",
        "tracking.report=false",
        f"data.root={root}",
        f"data.cache_dir={cache_dir}",
        "trainer.verbose=0",
    ]


def measure_seeds(
    root: str, cache_dir: Path, runs_dir: Path, preset: str = "quick", seeds: int = 4, mechanisms=tuple(MECHANISMS)
) -> dict:
    """Seeds per hour of each mechanism, each one's ratio to lone jobs, and the mean test ROC AUC of its runs."""
    from mlflow import MlflowClient

    from ablation.contract import JOB, PACK, ROLE
    from ablation.data import load_data

    image_size = compose(*PRESETS[preset]).data.image_size
    load_data(root, image_size, 0.1, 0, cache_dir)  # the decoded images, once, before any sweep is timed
    env = {**os.environ, "ABLATION_ROOT": str(PROJECT)}
    figures: dict = {f"seeds_{preset}_seeds": seeds}
    metrics: dict[str, dict[int, dict]] = {}
    for mechanism in mechanisms:
        log(f"seeds: {seeds} seeds of the {preset} configuration, {mechanism}")
        command = sweep_command(preset, mechanism, seeds, runs_dir, root, cache_dir)
        start = time.perf_counter()
        done = subprocess.run(command, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=7200)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"the {mechanism} sweep failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        client = MlflowClient(f"sqlite:///{runs_dir}/mlflow.db")
        experiment = client.get_experiment_by_name(f"seeds-{preset}-{mechanism}")
        runs = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get(ROLE) == JOB]
        finished = [r for r in runs if r.info.status == "FINISHED"]
        if len(finished) != seeds or any((PACK in r.data.tags) != (mechanism != "lone") for r in finished):
            raise RuntimeError(f"the {mechanism} sweep left {len(finished)} of {seeds} runs FINISHED, or mislabelled")
        key = f"seeds_{preset}_{mechanism}"
        figures[f"{key}_wall_s"] = round(wall, 1)
        figures[f"{key}_per_hour"] = round(len(finished) / wall * 3600, 1)
        figures[f"{key}_test_auc"] = round(sum(r.data.metrics["test_auc"] for r in finished) / len(finished), 4)
        log(f"seeds: {mechanism}: {wall:.0f} s, {figures[f'{key}_per_hour']} seeds per hour")
        metrics[mechanism] = {int(r.data.params["seed"]): r.data.metrics for r in finished}
    lone = figures.get(f"seeds_{preset}_lone_per_hour")
    for mechanism in mechanisms:
        if mechanism != "lone" and lone:
            rate = figures[f"seeds_{preset}_{mechanism}_per_hour"]
            figures[f"seeds_{preset}_{mechanism}_over_lone"] = round(rate / lone, 3)
            figures |= same_results(metrics["lone"], metrics[mechanism], f"seeds_{preset}_{mechanism}_vs_lone")
    return figures


def same_results(lone: dict[int, dict], packed: dict[int, dict], key: str) -> dict:
    """Packed against lone runs of the same seeds: the largest difference of any test metric (0 where the mechanism
    is exact), and the report's verdict on each test metric's paired difference (`analysis.compare`): an A/A check,
    where "equivalent" or "undecided" is right and "better" or "worse" would be a false claim."""
    import pandas as pd

    from ablation.contract import MARGINS, TEST_METRICS
    from analysis.compare import decide, judge

    seeds = sorted(set(lone) & set(packed))
    rows = []
    for metric in TEST_METRICS:
        diffs = [packed[seed][metric] - lone[seed][metric] for seed in seeds]
        rows.append({"metric": metric, **judge(diffs, margin=MARGINS[metric])})
    table = decide(pd.DataFrame(rows))
    return {
        f"{key}_max_abs_diff": float(table["diff"].abs().max()) if seeds else None,
        f"{key}_verdicts": dict(zip(table["metric"], table["verdict"], strict=True)),
    }
