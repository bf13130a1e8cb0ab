"""Resume: what one configuration is, and the FINISHED run a job is skipped for.

A configuration's identity is every configuration key of the resolved config (`ablation.contract.
is_configuration_key`), hashed. The identity must not change under runs already logged, or resume would train
them again, so two rules keep old runs' hashes:
- a key added after runs were logged stays out of the identity at the value that does what runs before it did
  (`ADDED_KEYS`);
- a key whose values were renamed or merged is mapped back onto what the runs before it logged (`_as_logged`).
A test holds every schema leaf to these rules (tests/test_resume.py) and checks the hashes the code gave before.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

from omegaconf import DictConfig

from ablation import contract, tracking
from ablation.config import AugmentOn, ThresholdRule, flatten

log = logging.getLogger(__name__)

# The identity's keys when the first runs were logged, before `ADDED_KEYS`.
FIRST_KEYS = (
    *("model.name", "model.stem"),
    *("augmentation.name", "augmentation.flip", "augmentation.rotation_deg", "augmentation.shift"),
    *("augmentation.zoom", "augmentation.brightness", "augmentation.contrast", "augmentation.aspect"),
    "class_weighting.name",
    *("optimizer.name", "optimizer.lr", "optimizer.schedule", "optimizer.weight_decay", "optimizer.ema"),
    *("trainer.monitor", "trainer.patience", "trainer.threshold", "trainer.tune_threshold", "trainer.threshold_rule"),
    *("trainer.label_smoothing", "trainer.precision", "trainer.augment_on", "trainer.jit_compile"),
    *("trainer.steps_per_execution", "trainer.deterministic", "trainer.backend"),
    *("data.image_size", "data.val_fraction", "data.max_train_per_class"),
    *("dropout", "batchnorm", "epochs", "seed", "batch_size"),
)
# Keys added after runs were logged, each with the value that does what runs before it did: at that value a key stays
# out of a configuration's identity, so resume still finds the older runs.
ADDED_KEYS = {
    "trainer.tta_widths": "[]",
    "model.input_norm": "fixed",
    "model.width": "1.0",
    "model.crop": "[]",
    "optimizer.momentum": "None",
    "augmentation.mixup": "0.0",
    "augmentation.erasing": "0.0",
}
MERGED_KEYS = contract.MERGED_KEYS  # `trainer.threshold` took over `tune_threshold` and `threshold_rule`


def _as_logged(identity: dict[str, str]) -> dict[str, str]:
    """The identity in the keys and values runs were logged with before `trainer.threshold` took a rule's name and
    `trainer.augment_on` took `auto`."""
    threshold = identity["trainer.threshold"]
    if threshold in tuple(ThresholdRule):  # a rule: once tune_threshold=true with threshold_rule=RULE
        identity |= {"trainer.threshold": str(contract.DEFAULT_THRESHOLD), "trainer.tune_threshold": "True"}
        identity["trainer.threshold_rule"] = threshold
    else:
        identity |= {"trainer.threshold": str(float(threshold)), "trainer.tune_threshold": "False"}
        identity["trainer.threshold_rule"] = ThresholdRule.youden.value
    if identity["trainer.augment_on"] == AugmentOn.auto:  # what `data` did before: data, or model under JAX
        identity["trainer.augment_on"] = AugmentOn.data.value
    return identity


def identity_of(cfg: DictConfig) -> dict[str, str]:
    """The keys and values that define `cfg`'s configuration, as runs have always been matched on."""
    identity = {key: value for key, value in flatten(cfg).items() if contract.is_configuration_key(key)}
    return {key: value for key, value in _as_logged(identity).items() if ADDED_KEYS.get(key) != value}


def config_hash(cfg: DictConfig) -> str:
    """Identity of a training configuration: what resume matches a FINISHED run on."""
    return hashlib.sha256(json.dumps(identity_of(cfg), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Identity:
    """What resume matches a FINISHED run on: the training configuration and the images it reads."""

    config: str  # `config_hash`
    data: str | None  # `data.data_digest`; None when the folder cannot be read (the run then fails, saying why)

    @classmethod
    def of(cls, cfg: DictConfig) -> Identity:
        from ablation.data import DataError, data_digest

        try:
            data = data_digest(cfg.data.root)
        except (DataError, OSError):
            data = None
        return cls(config_hash(cfg), data)

    @property
    def tags(self) -> dict[str, str]:
        return {contract.CONFIG_HASH: self.config, **({contract.DATA_DIGEST: self.data} if self.data else {})}


def already_finished(client, experiment_id: str, cfg: DictConfig, identity: Identity, commit: str):
    """The FINISHED run resume skips this job for, or None. A run trained at another git commit is skipped with a
    warning, or re-run with `tracking.resume_across_commits=false`."""
    if not cfg.tracking.skip_finished or identity.data is None:
        return None
    done = tracking.finished_run(client, experiment_id, identity.config, identity.data)
    if done is None:
        return None
    then = done.data.tags.get(contract.GIT_COMMIT, "unknown")
    if then != commit:
        if not cfg.tracking.resume_across_commits:
            log.info(
                "re-running: run %s is FINISHED but was trained at commit %s, not %s", done.info.run_id, then, commit
            )
            return None
        log.warning(
            "run %s, FINISHED for this configuration and data, was trained at commit %s; the code is now at %s. "
            "Skipped all the same; tracking.resume_across_commits=false re-runs such jobs",
            done.info.run_id,
            then,
            commit,
        )
    return done
