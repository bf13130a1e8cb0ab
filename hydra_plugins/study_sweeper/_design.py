"""Study designs: which configurations a sweep runs, and when seeds run until each answer is precise enough.

A design turns the sweep's overrides into cells (one configuration each, without its seed), and each cell into
jobs, one per seed. The study sweeper (`study_sweeper.py` beside it) launches them; this module knows nothing
of Hydra's launchers, so that its rules are tested directly. The sweeper imports it only once a sweep starts.

- `grid`: the cross product of every swept key, as Hydra's basic sweeper does.
- `loco` (leave one component out): the baseline, then one cell per named component with that component's
  removal overrides on top of the baseline.
- `one_at_a_time`: the baseline, then each swept key's other levels, one key at a time.

`seed` is never a factor: it is the replicate axis of every design, from `seeds` or from a `seed=` override.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from ablation.contract import same_level

SEED = "seed"
BASELINE = "baseline"


class Design(StrEnum):
    grid = "grid"
    loco = "loco"
    one_at_a_time = "one_at_a_time"


class DesignError(ValueError):
    """A study's design settings that cannot make a sweep; the message names the setting."""


def override_key(override: str) -> str:
    """`+a.b=1` -> `a.b`; `augmentation=flip` -> `augmentation`."""
    match = re.match(r"^[~+]*([^=]+)", override.strip())
    if not match or "=" not in override:
        raise DesignError(f"{override!r} is not an override KEY=VALUE")
    return match.group(1).strip()


def merge(*override_lists: Iterable[str]) -> list[str]:
    """The overrides in order, a later one replacing an earlier one of the same key in its place."""
    merged: dict[str, str] = {}
    for overrides in override_lists:
        for override in overrides:
            merged[override_key(override)] = override
    return list(merged.values())


@dataclass
class Cell:
    """One configuration of a study, without its seed."""

    label: str
    overrides: list[str]
    reference: str | None = None  # the label of the cell it is compared with (loco, one_at_a_time)


@dataclass
class Sweep:
    """A sweep's overrides (the study's `params` and the command line), split by what a design does with them.

    `keys` holds every key in its first position, each with its values as `key=value` strings: one value for a
    fixed override, several for a swept one.
    """

    keys: dict[str, list[str]] = field(default_factory=dict)

    def add(self, key: str, values: Sequence[str]) -> None:
        self.keys[key] = list(values)  # a later setting of a key (the command line) replaces the study's

    @property
    def seeds(self) -> list[str] | None:
        return self.keys.get(SEED)

    @property
    def fixed(self) -> list[str]:
        return [values[0] for key, values in self.keys.items() if key != SEED and len(values) == 1]

    @property
    def swept(self) -> dict[str, list[str]]:
        return {key: values for key, values in self.keys.items() if key != SEED and len(values) > 1}


def parse(lines: Sequence[str], parser) -> Sweep:
    """The overrides (the study's `params`, then the command line) parsed by Hydra's `OverridesParser`."""
    parsed = Sweep()
    for override in parser.parse_overrides(list(lines)):
        key = override.get_key_element()
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                raise DesignError(f"{override.input_line}: the study sweeper takes lists (a,b) and range()")
            values = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            values = [f"{key}={override.get_value_element_as_str()}"]
        parsed.add(override.key_or_group, values)
    return parsed


def _crossed(swept: dict[str, list[str]]) -> list[list[str]]:
    return [list(choice) for choice in itertools.product(*swept.values())]


def grid(sweep: Sweep) -> list[Cell]:
    """Every combination of the swept keys, in the order Hydra's basic sweeper runs them."""
    cells = []
    for choice in _crossed(sweep.swept):
        picked = dict(zip(sweep.swept, choice, strict=True))
        overrides = [picked.get(key, values[0]) for key, values in sweep.keys.items() if key != SEED]
        cells.append(Cell(" ".join(choice) or BASELINE, overrides))
    return cells


def loco(sweep: Sweep, baseline: Sequence[str], components: dict[str, Sequence[str]]) -> list[Cell]:
    """The baseline and one cell per removed component; any swept key is crossed with all of them.

    The command line's fixed overrides change the baseline; a component's overrides win over both.
    """
    if not components:
        raise DesignError("hydra.sweeper.components is empty: design=loco needs NAME: [OVERRIDE, ...] per component")
    cells = []
    for choice in _crossed(sweep.swept):
        suffix = f" [{' '.join(choice)}]" if choice else ""
        base = merge(baseline, sweep.fixed, choice)
        cells.append(Cell(BASELINE + suffix, base))
        for name, removal in components.items():
            if isinstance(removal, str) or not removal:
                raise DesignError(
                    f"hydra.sweeper.components.{name}={removal!r}: a component needs a list of overrides that "
                    "remove it, e.g. [dropout=0]"
                )
            cells.append(Cell(f"-{name}{suffix}", merge(base, removal), BASELINE + suffix))
    return cells


def one_at_a_time(sweep: Sweep, baseline: Sequence[str], baseline_level: Callable[[str], object]) -> list[Cell]:
    """The baseline, then for each swept key each level other than the baseline's, the other keys at baseline.

    `baseline_level(key)` is the baseline's value of a key (its override, else the composed default).
    """
    if not sweep.swept:
        raise DesignError(
            "design=one_at_a_time needs at least one swept key (e.g. dropout=0,0.5 or hydra.sweeper.params)"
        )
    base = merge(baseline, sweep.fixed)
    cells = [Cell(BASELINE, base)]
    for key, values in sweep.swept.items():
        at_baseline = baseline_level(key)
        for value in values:
            level = value.split("=", 1)[1]
            if not same_level(level, at_baseline):
                cells.append(Cell(value, merge(base, [value]), BASELINE))
    return cells


def seed_list(setting: object, from_overrides: list[str] | None) -> list[int] | None:
    """The seeds of a fixed-seed study: `seeds: N` (0..N-1), `seeds: [..]`, or a `seed=` override; None: no seed
    override (each job keeps the config's seed)."""
    if setting is None:
        return None if from_overrides is None else [int(v.split("=", 1)[1]) for v in from_overrides]
    if from_overrides is not None:
        raise DesignError("seeds are given twice: hydra.sweeper.seeds and a seed= override; keep one")
    if isinstance(setting, int) and not isinstance(setting, bool) and setting >= 1:
        return list(range(setting))
    if isinstance(setting, list | tuple) and setting and all(isinstance(s, int) for s in setting):
        return [int(s) for s in setting]
    raise DesignError(f"hydra.sweeper.seeds={setting!r}: allowed are auto, a count N >= 1 or a list of ints")


@dataclass
class AutoSeeds:
    """Seeds in rounds until every comparison of the study is decided (better, worse or equivalent), or at
    `max_seeds`. The verdict rule looks after every round, so each look tests at `alpha` / the planned looks
    (Bonferroni over the looks, a valid group-sequential bound): the chance of any false claim over all the looks
    stays at most `alpha` (tests/test_compare.py simulates it)."""

    min_seeds: int
    max_seeds: int
    metric: str
    alpha_total: float = 0.05

    def __post_init__(self) -> None:
        if not 2 <= self.min_seeds <= self.max_seeds:
            raise DesignError(
                f"hydra.sweeper.min_seeds={self.min_seeds}, max_seeds={self.max_seeds}: need 2 <= min_seeds <= "
                "max_seeds (a comparison needs two paired seeds)"
            )

    @property
    def looks(self) -> int:
        from analysis.compare import looks  # scipy and statsmodels: only once a sweep plans its rounds

        return looks(self.min_seeds, self.max_seeds)

    @property
    def alpha(self) -> float:
        """The level of each look."""
        from analysis.compare import sequential_alpha

        return sequential_alpha(self.alpha_total, self.looks)

    def decide(self, verdicts: Sequence[str], seeds: int, cells_with_runs: int) -> str:
        """The round's decision from the verdicts of every comparison so far (`analysis.compare.VERDICTS`)."""
        if not cells_with_runs:
            return "stop: no job finished"
        if verdicts and all(word != "undecided" for word in verdicts):
            return "stop: every comparison decided"
        if seeds >= self.max_seeds:
            return "stop: at max_seeds"
        return "another seed"
