"""The study designs' rules (hydra_plugins/study_sweeper/_design.py), checked directly and against Hydra's own
basic sweeper."""

from __future__ import annotations

import pytest
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from ablation.contract import same_level
from hydra_plugins.study_sweeper import _design as design
from hydra_plugins.study_sweeper._design import AutoSeeds, DesignError

PARSER = OverridesParser.create()


def _parse(*lines: str) -> design.Sweep:
    return design.parse(lines, PARSER)


def test_grid_runs_what_hydras_basic_sweeper_runs():
    lines = ["model=cnn,resnet18", "dropout=0,0.5", "experiment=tiny", "augmentation=none,flip"]
    basic = BasicSweeper.split_arguments(PARSER.parse_overrides(lines), None)[0]
    assert [cell.overrides for cell in design.grid(_parse(*lines))] == basic


def test_grid_without_a_swept_key_is_one_cell():
    assert [c.overrides for c in design.grid(_parse("experiment=tiny", "seed=0,1"))] == [["experiment=tiny"]]


def test_loco_is_the_baseline_then_one_removal_each_with_the_command_line_on_the_baseline():
    cells = design.loco(
        _parse("dropout=0.3", "experiment=tiny"),
        baseline=["model=resnet18", "dropout=0.5"],
        components={"dropout": ["dropout=0"], "flip": ["augmentation=none"]},
    )
    assert [(c.label, c.reference) for c in cells] == [
        ("baseline", None),
        ("-dropout", "baseline"),
        ("-flip", "baseline"),
    ]
    assert cells[0].overrides == ["model=resnet18", "dropout=0.3", "experiment=tiny"]  # the command line wins
    assert cells[1].overrides == ["model=resnet18", "dropout=0", "experiment=tiny"]  # the removal wins
    assert cells[2].overrides == ["model=resnet18", "dropout=0.3", "experiment=tiny", "augmentation=none"]


def test_loco_crosses_a_swept_key_with_every_cell():
    cells = design.loco(_parse("model=cnn,resnet18"), [], {"dropout": ["dropout=0"]})
    assert [(c.label, c.reference) for c in cells] == [
        ("baseline [model=cnn]", None),
        ("-dropout [model=cnn]", "baseline [model=cnn]"),
        ("baseline [model=resnet18]", None),
        ("-dropout [model=resnet18]", "baseline [model=resnet18]"),
    ]


@pytest.mark.parametrize("components", [{}, {"dropout": "dropout=0"}, {"dropout": []}])
def test_loco_refuses_components_that_remove_nothing(components):
    with pytest.raises(DesignError, match="component"):
        design.loco(_parse("experiment=tiny"), [], components)


def test_one_at_a_time_varies_each_key_from_the_baseline_skipping_the_baselines_own_level():
    at_baseline = {"dropout": 0.5, "augmentation": "none"}
    cells = design.one_at_a_time(
        _parse("dropout=0,0.50", "augmentation=none,flip,xray", "experiment=tiny"),
        baseline=["model=cnn"],
        baseline_level=at_baseline.__getitem__,
    )
    assert [c.label for c in cells] == ["baseline", "dropout=0", "augmentation=flip", "augmentation=xray"]
    assert cells[0].overrides == ["model=cnn", "experiment=tiny"]
    assert cells[2].overrides == ["model=cnn", "experiment=tiny", "augmentation=flip"]
    assert all(c.reference == "baseline" for c in cells[1:])


def test_one_at_a_time_needs_a_swept_key():
    with pytest.raises(DesignError, match="one_at_a_time"):
        design.one_at_a_time(_parse("experiment=tiny"), [], lambda key: None)


@pytest.mark.parametrize(("a", "b", "same"), [("0", 0.0, True), ("true", True, True), ("0.5", "0.25", False)])
def test_same_level(a, b, same):
    assert same_level(a, b) is same


def test_seed_lists():
    assert design.seed_list(None, None) is None
    assert design.seed_list(3, None) == [0, 1, 2]
    assert design.seed_list([4, 7], None) == [4, 7]
    assert design.seed_list(None, ["seed=1", "seed=5"]) == [1, 5]
    with pytest.raises(DesignError, match="twice"):
        design.seed_list(2, ["seed=0"])
    for bad in (0, "three", [0.5], True):
        with pytest.raises(DesignError, match="hydra.sweeper.seeds"):
            design.seed_list(bad, None)


def test_auto_seeds_stop_once_every_verdict_is_decided_each_look_at_its_share_of_alpha():
    rule = AutoSeeds(min_seeds=2, max_seeds=5, metric="test_auc")
    assert rule.looks == 4 and rule.alpha == pytest.approx(0.0125)  # Bonferroni over the looks at 2, 3, 4, 5 seeds
    assert rule.decide(["better", "undecided"], seeds=2, cells_with_runs=3) == "another seed"
    assert (
        rule.decide(["better", "equivalent", "worse"], seeds=3, cells_with_runs=3) == "stop: every comparison decided"
    )
    assert rule.decide(["undecided"], seeds=5, cells_with_runs=3) == "stop: at max_seeds"
    assert rule.decide([], seeds=2, cells_with_runs=0) == "stop: no job finished"
    assert rule.decide([], seeds=2, cells_with_runs=1) == "another seed"  # nothing to judge yet


def test_auto_seeds_refuse_settings_that_cannot_stop():
    with pytest.raises(DesignError, match="min_seeds"):
        AutoSeeds(min_seeds=1, max_seeds=3, metric="test_auc")
    with pytest.raises(DesignError, match="min_seeds"):
        AutoSeeds(min_seeds=4, max_seeds=3, metric="test_auc")


def test_the_sweeper_names_an_unknown_design():
    from hydra_plugins.study_sweeper.study_sweeper import StudySweeper

    with pytest.raises(DesignError, match="design='factorial'.*grid, loco, one_at_a_time"):
        StudySweeper(design="factorial")


def test_a_report_that_fails_is_printed_and_never_fails_the_sweep(tmp_path, capsys):
    import json

    from omegaconf import OmegaConf

    from ablation.contract import PARENT_FILE
    from analysis.callback import SweepReport

    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    parent = {"run_id": "0123abcd", "tracking_uri": f"sqlite:///{tmp_path}/missing/mlflow.db"}
    (sweep_dir / PARENT_FILE).write_text(json.dumps(parent))
    config = OmegaConf.create(
        {"paths": {"runs": str(tmp_path)}, "tracking": {"report": True}, "hydra": {"sweep": {"dir": str(sweep_dir)}}}
    )
    SweepReport().on_multirun_end(config)  # no store there: the report cannot be built
    printed = capsys.readouterr().out
    assert "Report not built (AnalysisError: no MLflow store at" in printed
    assert "python -m analysis report --sweep 0123abcd" in printed
