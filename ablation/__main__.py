"""`python -m ablation [KEY=VALUE ...]` trains one run; `python -m ablation -m ...` runs a sweep."""

import os
from pathlib import Path

from ablation import console

console.quiet()  # before any framework starts: its chatter would hide the progress lines
# paths.root: known before Hydra composes, so hydra.run.dir and hydra.sweep.dir can live under runs/.
os.environ.setdefault("ABLATION_ROOT", os.getcwd())

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from ablation.config import register  # noqa: E402

register()
# An absolute path: from an installed command (`ablation`), Hydra would resolve a relative one as a Python package.
CONF = str(Path(__file__).resolve().parent.parent / "conf")


@hydra.main(version_base="1.3", config_path=CONF, config_name="train")
def main(cfg: DictConfig) -> float:
    """One job; returns the kept epoch's validation metric (`trainer.monitor`, never a test metric), so that an
    optimising sweeper (Optuna) can drive a sweep. Imports no framework: the job pins its GPU first."""
    from ablation.job import objective, run_job

    return objective(run_job(cfg), cfg)


if __name__ == "__main__":
    main()
