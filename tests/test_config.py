"""Every config file composes; wrong types and out-of-range values are refused by key."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import DATA_ROOT, PROJECT, compose_config
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from omegaconf import OmegaConf
from processes import run_command

from ablation.validate import ConfigError, validate
from hydra_plugins.study_sweeper._design import Design

GROUPS = ["model", "augmentation", "class_weighting", "optimizer", "trainer", "data", "tracking", "paths"]
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((PROJECT / "conf" / g).glob("*.yaml"))]


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_validates(group, option, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    cfg = compose_config(f"{group}={option}", f"data.root={DATA_ROOT}")
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    validate(cfg)


@pytest.mark.parametrize("name", sorted(p.stem for p in (PROJECT / "conf" / "experiment").glob("*.yaml")))
def test_experiments_compose_and_validate(name):
    validate(compose_config(f"experiment={name}", f"data.root={DATA_ROOT}"))


DESIGNS = {d.value for d in Design}


@pytest.mark.parametrize("name", sorted(p.stem for p in (PROJECT / "conf" / "study").glob("*.yaml")))
def test_studies_are_seeded_sweeps_of_the_study_sweeper_into_their_own_experiment(name):
    cfg = compose_config(f"study={name}", f"data.root={DATA_ROOT}", return_hydra_config=True)
    assert cfg.hydra.mode == RunMode.MULTIRUN
    assert cfg.hydra.sweeper._target_.endswith("StudySweeper") and cfg.hydra.sweeper.design in DESIGNS
    # replicates (or, in a factorial, the seed the cells share)
    assert "seed" in (cfg.hydra.sweeper.params or {}) or cfg.hydra.sweeper.seeds is not None
    assert cfg.tracking.experiment in (name, "best")  # `recipe` and `recipe_loco` join the best recipe's own runs
    command = (PROJECT / "conf" / "study" / f"{name}.yaml").read_text().splitlines()[1]
    assert command == f"# python -m ablation -m study={name}", "the command that runs it comes first"


def test_defaults_follow_the_reference_study():
    cfg = compose_config()
    assert (cfg.data.image_size, cfg.batch_size, cfg.epochs) == (224, 32, 20)
    assert cfg.tracking.uri.startswith("sqlite:///") and cfg.tracking.uri.endswith("runs/mlflow.db")


def test_wrong_type_fails_at_composition():
    with pytest.raises(ConfigCompositionException, match="dropout"):
        compose_config("dropout=abc")
    with pytest.raises(ConfigCompositionException, match="epochs"):
        compose_config("epochs=2.5")


def test_unknown_model_lists_the_options():
    with pytest.raises(ConfigCompositionException, match="model/vgg") as error:
        compose_config("model=vgg")
    assert "resnet18" in str(error.value.__cause__ or error.value)


@pytest.mark.parametrize(
    ("override", "key", "allowed"),
    [
        ("dropout=1.5", "dropout", "[0, 1)"),
        ("dropout=-0.1", "dropout", "[0, 1)"),
        ("epochs=0", "epochs", ">= 1"),
        ("batch_size=0", "batch_size", ">= 1"),
        ("optimizer.lr=0", "optimizer.lr", "> 0"),
        ("data.image_size=0", "data.image_size", ">= 32"),
        ("data.val_fraction=1.0", "data.val_fraction", "(0, 1)"),
        ("data.max_train_per_class=0", "data.max_train_per_class", ">= 1"),
        ("optimizer.weight_decay=-0.1", "optimizer.weight_decay", ">= 0"),
        ("augmentation.rotation_deg=400", "augmentation.rotation_deg", "[0, 180]"),
        ("augmentation.aspect=1.5", "augmentation.aspect", "[0, 1)"),
        ("augmentation.mixup=-0.2", "augmentation.mixup", "alpha in [0, 10.0]"),
        ("augmentation.erasing=1.5", "augmentation.erasing", "a probability in [0, 1]"),
        ("optimizer.ema=1", "optimizer.ema", "[0, 1)"),
        ("optimizer.momentum=0.9", "optimizer.momentum", "null for adam"),
        ("data.root=/nonexistent/chest_xray", "data.root", "train/ and test/"),
    ],
)
def test_out_of_range_values_are_refused_by_key(override, key, allowed):
    overrides = [f"data.root={DATA_ROOT}", override] if not override.startswith("data.root") else [override]
    with pytest.raises(ConfigError) as error:
        validate(compose_config(*overrides))
    message = str(error.value)
    assert message.startswith(f"{key}=") and allowed in message


@pytest.mark.parametrize(
    ("override", "allowed"),
    [
        ("trainer.monitor=val_f1", "[val_auc, val_loss]"),
        ("trainer.precision=float16", "[float32, mixed_float16, mixed_bfloat16]"),
        ("optimizer.schedule=step", "[constant, cosine]"),
        ("optimizer.name=rmsprop", "[adam, sgd]"),
        ("trainer.augment_on=gpu", "[auto, data, model]"),
    ],
)
def test_string_choices_are_refused_at_composition_naming_key_value_and_choices(override, allowed):
    key, value = override.split("=")
    with pytest.raises(ConfigCompositionException) as error:
        compose_config(override)
    message = str(error.value.__cause__)
    assert f"Invalid value '{value}', expected one of {allowed}" in message and f"full_key: {key}" in message


def test_image_size_minimum_depends_on_the_network():
    validate(compose_config("model=resnet18", "data.image_size=32", f"data.root={DATA_ROOT}"))
    with pytest.raises(ConfigError, match="data.image_size=16 .* resnet50"):
        validate(compose_config("model=resnet50", "data.image_size=16", f"data.root={DATA_ROOT}"))
    with pytest.raises(ConfigError, match=r"data.image_size=40 .* after model.crop=\[.*\] \(it leaves 26 px\)"):
        validate(compose_config("data.image_size=40", "model.crop=[0.25,0.1,0,0]", f"data.root={DATA_ROOT}"))


@pytest.mark.parametrize("momentum", ["null", "1", "-0.5"])
def test_sgd_needs_a_momentum_in_the_unit_interval(momentum):
    validate(compose_config("optimizer=sgd", f"data.root={DATA_ROOT}"))
    with pytest.raises(ConfigError, match=r"^optimizer.momentum=.* a float in \[0, 1\) for sgd"):
        validate(compose_config("optimizer=sgd", f"optimizer.momentum={momentum}", f"data.root={DATA_ROOT}"))


@pytest.mark.parametrize("crop", ["[0.1,0.1,0.1]", "[0.3,0,0,0]", "[-0.1,0,0,0]"])
def test_the_lung_crop_takes_four_fractions_up_to_a_quarter(crop):
    with pytest.raises(ConfigError, match=r"model.crop=.* four fractions \[top, bottom, left, right\]"):
        validate(compose_config(f"model.crop={crop}", f"data.root={DATA_ROOT}"))


def test_relative_paths_resolve_under_the_project():
    cfg = compose_config()
    assert Path(cfg.paths.runs) == PROJECT / "runs"
    assert Path(cfg.data.cache_dir) == PROJECT / "runs" / "cache"


def test_the_installed_commands_run_from_anywhere_and_ablation_completes_with_hydra(tmp_path):
    """`ablation`, `ablation-report`, `ablation-predict`: the [project.scripts] of the environment the README's
    install made, run outside the repository."""
    bin_dir = Path(sys.executable).parent
    script = run_command([bin_dir / "ablation", "--shell-completion", "install=bash"], 120, cwd=tmp_path)
    assert script.returncode == 0
    assert "complete -o nospace -o default -F hydra_bash_completion ablation" in script.stdout
    env = {"COMP_LINE": "ablation model="}  # what bash hands the completion function
    offered = run_command([bin_dir / "ablation", "--shell-completion", "query=bash"], 120, cwd=tmp_path, env=env)
    assert offered.stdout.split() == ["model=cnn", "model=resnet18", "model=resnet50"], offered.stderr
    config = run_command([bin_dir / "ablation", "--cfg", "job", "model=resnet18"], 120, cwd=tmp_path)
    assert config.returncode == 0 and "name: resnet18" in config.stdout, config.stderr
    for command in ("ablation-report", "ablation-predict"):
        usage = run_command([bin_dir / command, "--help"], 120, cwd=tmp_path)
        assert usage.returncode == 0 and usage.stdout.startswith(f"usage: {command} "), usage.stderr


def test_the_prior_threshold_rule_needs_a_class_balanced_model():
    rule = ["trainer.threshold=prior", f"data.root={DATA_ROOT}"]
    validate(compose_config(*rule, "class_weighting=oversample"))
    validate(compose_config(*rule, "class_weighting=balanced"))
    with pytest.raises(ConfigError, match="trainer.threshold='prior' is not allowed: .* class_weighting=none"):
        validate(compose_config(*rule, "class_weighting=none"))


@pytest.mark.parametrize("threshold", ["0.3", "youden", "midpoint"])
def test_the_threshold_is_one_key_a_probability_or_a_rule(threshold):
    validate(compose_config(f"trainer.threshold={threshold}", f"data.root={DATA_ROOT}"))


@pytest.mark.parametrize("threshold", ["0", "1.5", "median", "true"])
def test_a_threshold_neither_a_probability_nor_a_rule_is_refused_naming_both(threshold):
    with pytest.raises(ConfigError) as error:
        validate(compose_config(f"trainer.threshold={threshold}", f"data.root={DATA_ROOT}"))
    assert str(error.value).startswith("trainer.threshold=")
    assert "a probability in (0, 1), or a rule that picks it on validation: youden, midpoint, prior" in str(error.value)


def test_augmenting_in_the_data_feed_is_refused_where_there_is_none():
    """Under JAX there is no tf.data feed to augment in: `augment_on=data` is refused, not ignored; `auto` (the
    default) augments where the backend can."""
    jax = ["trainer.backend=jax", f"data.root={DATA_ROOT}"]
    validate(compose_config(*jax))
    validate(compose_config(*jax, "trainer.augment_on=model"))
    with pytest.raises(ConfigError, match=r"^trainer.augment_on='data' is not allowed: model or auto under the jax"):
        validate(compose_config(*jax, "trainer.augment_on=data"))
    validate(compose_config("trainer.augment_on=data", f"data.root={DATA_ROOT}"))
