"""Aspect-ratio probe: does a run's model read the class from how wide the chest looks?

Every X-ray reaches the network squashed to a square from whatever width/height ratio it had, so the
chest's apparent width can carry a cue that holds on one split and not on another (docs/results.md). This
scores a logged run's model on its own validation and test images (the files its `val_predictions.csv` and
`test_predictions.csv` list), each stretched to `factor` times its width about the centre (cropped when
wider, black at the sides when narrower). A model that reads the class from the chest's shape, not its
content, swings with the factor.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from PIL import Image

from ablation.metrics import binary_metrics
from ablation.predict import decode_many, load_run, probabilities, to_model_input
from analysis.runs import AnalysisError

SPLITS = ("val", "test")


def stretch_width(image: np.ndarray, factor: float) -> np.ndarray:
    """A square uint8 image with its content `factor` times as wide, same size, centred."""
    size = image.shape[1]
    width = max(1, round(size * factor))
    stretched = np.asarray(Image.fromarray(image).resize((width, size), Image.Resampling.BILINEAR))
    out = np.zeros_like(image)
    if width >= size:
        left = (width - size) // 2
        out[:] = stretched[:, left : left + size]
    else:
        left = (size - width) // 2
        out[:, left : left + width] = stretched
    return out


def probe(client: MlflowClient, run_id: str, factors: Sequence[float]) -> pd.DataFrame:
    """One row per split and width factor: the run's metrics at its threshold and each class's median p."""
    rows = []
    with load_run(client, run_id) as loaded:
        channels = int(loaded.model.input_shape[-1])
        for split in SPLITS:
            try:
                listed = pd.read_csv(client.download_artifacts(run_id, f"{split}_predictions.csv"))
            except (MlflowException, OSError) as error:
                raise AnalysisError(f"run {run_id} has no {split}_predictions.csv ({type(error).__name__})") from error
            labels = listed["label"].to_numpy()
            images = decode_many([Path(f) for f in listed["file"]], loaded.image_size)
            unreadable = [(f, d) for f, d in zip(listed["file"], images, strict=True) if isinstance(d, str)]
            if unreadable:  # the data moved or changed since the run: name the file
                file, reason = unreadable[0]
                raise AnalysisError(f"run {run_id}: cannot read {file}, listed in its {split} split ({reason})")
            for factor in factors:
                inputs = to_model_input([stretch_width(image, factor) for image in images], channels)
                p = probabilities(loaded.model, inputs)
                scored = binary_metrics(labels, p, loaded.threshold)
                rows.append(
                    {
                        "split": split,
                        "width_factor": factor,
                        "auc": scored["auc"],
                        "accuracy": scored["accuracy"],
                        "sensitivity": scored["recall"],
                        "specificity": scored["specificity"],
                        "normal_median_p": float(np.median(p[labels == 0])),
                        "pneumonia_median_p": float(np.median(p[labels == 1])),
                    }
                )
    return pd.DataFrame(rows)
