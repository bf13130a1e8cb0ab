"""Test-time views probe for docs/results.md: do augmented views of the test images rank them better?

    python docs/probes/views.py RUN_ID [RUN_ID ...]

Scores each logged run's model on the test split with its logit averaged over the plain image and 3 or 8 views drawn
from the recipe's training augmentation (`experiment=best`), at full and at half its ranges, at the run's threshold.
**It reads test figures**: a probe for the write-up, never a way to choose a model.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT))  # benchmarks.compose: the config as `python -m ablation` composes it
os.environ.setdefault("ABLATION_ROOT", str(PROJECT))
RANGES = ("rotation_deg", "shift", "zoom", "brightness", "contrast", "aspect")  # what "half the ranges" halves


def main(run_ids: list[str]) -> None:
    import numpy as np
    from mlflow import MlflowClient
    from sklearn.metrics import roc_auc_score

    from ablation.contract import default_tracking_uri
    from ablation.data import load_data
    from ablation.models import network_of
    from ablation.pipeline import Augmentation
    from ablation.predict import load_run
    from benchmarks import compose

    recipe = compose("experiment=best")
    client = MlflowClient(default_tracking_uri())
    for run_id in run_ids:
        with load_run(client, run_id) as run:
            test = load_data(recipe.data.root, run.image_size, 0.1, 0, recipe.data.cache_dir).test
            images, labels = test.images.astype("float32"), test.labels
            network = network_of(run.model)
            cut = np.log(run.threshold / (1 - run.threshold))  # the run's threshold as a logit
            plain = network.predict(images, batch_size=64, verbose=0).ravel()
            scores = [f"plain {((plain >= cut) == labels).mean():.3f} / {roc_auc_score(labels, plain):.4f}"]
            for scale in (1.0, 0.5):
                ranges = recipe.augmentation.copy()
                for key in RANGES:
                    ranges[key] *= scale
                augment = Augmentation(ranges)
                views = [plain] + [
                    network.predict(np.asarray(augment(images, 100 + i)), batch_size=64, verbose=0).ravel()
                    for i in range(8)
                ]
                for n in (4, 9):
                    logit = np.mean(views[:n], axis=0)
                    scores.append(
                        f"{n - 1} views at {scale:g} x the ranges "
                        f"{((logit >= cut) == labels).mean():.3f} / {roc_auc_score(labels, logit):.4f}"
                    )
            print(f"{run_id[:8]}: " + "; ".join(scores), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
