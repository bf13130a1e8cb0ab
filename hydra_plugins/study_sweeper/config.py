"""`hydra.sweeper.*` of a study: the settings a study file (conf/study/) or the command line gives."""

# No `from __future__ import annotations`: Hydra executes plugin modules outside sys.modules, where a
# dataclass cannot resolve string annotations.
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class StudySweeperConf:
    _target_: str = "hydra_plugins.study_sweeper.study_sweeper.StudySweeper"
    design: str = "grid"  # grid | loco | one_at_a_time
    params: dict[str, str] | None = None  # KEY: comma-separated levels, as Hydra's basic sweeper takes them
    baseline: list[str] = field(default_factory=list)  # loco, one_at_a_time: overrides of the reference cell
    components: dict[str, Any] = field(default_factory=dict)  # loco: NAME: [overrides that remove it]
    seeds: Any = None  # null: the seed= override, if any | N: 0..N-1 | [s, ...] | auto (until every verdict is decided)
    min_seeds: int = 2  # seeds=auto: the first round's seeds per cell
    max_seeds: int = 5  # seeds=auto: never more per cell
    metric: str = "test_auc"  # seeds=auto: the metric whose verdicts decide when to stop
    dry_run: bool = False  # print the planned jobs (FINISHED: resume would skip it) and run nothing
    max_batch_size: int | None = None  # jobs handed to the launcher at once (null: all of a round)
    pack_seeds: int | None = None  # seeds of a configuration trained together in one job (null: a job per seed)


ConfigStore.instance().store(group="hydra/sweeper", name="study", node=StudySweeperConf, provider="pneumonia-ablation")
