"""A configuration's identity (`ablation.resume`): what resume matches a FINISHED run on. Runs already logged keep
their identity through every change of the schema, or resume would train them again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import compose_config
from omegaconf import OmegaConf

from ablation.config import Config, flatten
from ablation.contract import is_configuration_key
from ablation.resume import ADDED_KEYS, FIRST_KEYS, MERGED_KEYS, config_hash, identity_of

IDENTITIES = json.loads((Path(__file__).parent / "data" / "identities.json").read_text())["identities"]


@pytest.mark.parametrize("case", IDENTITIES, ids=lambda case: " ".join(case["overrides"]) or "defaults")
def test_runs_logged_before_keep_their_identity(case):
    """The hashes the code gave before `trainer.threshold` took over `tune_threshold` and `threshold_rule` and
    `augment_on` took `auto` (recorded at d6d73ac, the recipe's as logged on its runs): today's overrides for the same
    training hash the same, so resume finds those runs."""
    assert config_hash(compose_config(*case["overrides"])) == case["config_hash"], case["logged_with"]


def test_every_schema_key_is_in_the_first_identity_or_listed_as_added():
    """A key added to the schema must say, in `ADDED_KEYS`, the value that does what runs before it did; a key in
    neither list would silently enter every identity and make resume re-run every earlier run."""
    schema = {key for key in flatten(OmegaConf.structured(Config)) if is_configuration_key(key)}
    assert schema - set(FIRST_KEYS) - set(ADDED_KEYS) == set()
    assert set(FIRST_KEYS) - schema == set(MERGED_KEYS)  # the merged keys are mapped back, not dropped
    assert set(ADDED_KEYS) <= schema


def test_an_added_key_enters_the_identity_only_away_from_its_old_behaviour():
    plain = compose_config()
    assert "trainer.tta_widths" not in identity_of(plain)
    assert config_hash(compose_config("trainer.tta_widths=[0.9,1,1.1]")) != config_hash(plain)


def test_the_threshold_is_matched_as_the_keys_it_replaced():
    midpoint = identity_of(compose_config("trainer.threshold=midpoint"))
    assert midpoint["trainer.tune_threshold"] == "True" and midpoint["trainer.threshold_rule"] == "midpoint"
    fixed = identity_of(compose_config("trainer.threshold=0.3"))
    assert fixed["trainer.threshold"] == "0.3" and fixed["trainer.tune_threshold"] == "False"
    assert len({config_hash(compose_config(f"trainer.threshold={t}")) for t in ("0.5", "0.3", "youden", "prior")}) == 4


def test_what_locates_a_run_is_not_part_of_its_configuration():
    base = compose_config()
    moved = compose_config(
        "paths.runs=/elsewhere", "data.cache_dir=/tmp/c", "trainer.verbose=0", "tracking.experiment=x"
    )
    assert config_hash(base) == config_hash(moved)
    assert config_hash(base) != config_hash(compose_config("trainer.label_smoothing=0.1"))
    assert not is_configuration_key("tracking.uri") and not is_configuration_key("data.cache_dir")
    assert is_configuration_key("data.image_size") and is_configuration_key("trackingx")


def test_string_choices_reach_params_and_the_hash_as_plain_text():
    cfg = compose_config("trainer.precision=mixed_bfloat16", "optimizer.schedule=cosine", "class_weighting=none")
    flat = flatten(cfg)
    assert flat["trainer.precision"] == "mixed_bfloat16" and flat["class_weighting.name"] == "none"
    assert config_hash(cfg) != config_hash(compose_config("optimizer.schedule=cosine", "class_weighting=none"))
