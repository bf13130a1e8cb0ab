"""`python -m ablation [KEY=VALUE ...]` trains one run; `python -m ablation -m ...` runs a sweep."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter hides the progress lines
# paths.root: known before Hydra composes, so hydra.run.dir and hydra.sweep.dir can live under runs/.
os.environ.setdefault("ABLATION_ROOT", os.getcwd())

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from ablation.config import register  # noqa: E402

register()


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> dict:
    from ablation.job import run_job

    return run_job(cfg)


if __name__ == "__main__":
    main()
