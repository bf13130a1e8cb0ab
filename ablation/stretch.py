"""Aspect-ratio probe: does a run's model read the class from how wide the chest looks?

    python -m ablation.stretch --run-id ID [--factors 0.85,1,1.15] [--out stretch.csv] [--tracking-uri URI]
        [--data-root DIR]

Every X-ray reaches the network squashed to
a square from whatever width/height ratio it had, so the chest's apparent width can carry a cue that
holds on one split and not on another (docs/results.md). This scores a logged run's model on its own
validation and test images (the files its `val_predictions.csv` and `test_predictions.csv` list), each
stretched to `factor` times its width about the centre (cropped when wider, black at the sides when
narrower). A model that reads the class from the chest's shape, not its content, swings with the factor.

Prints a Markdown table (one row per split and factor); exit status 2 when the run, its model, its
prediction files or one of their images cannot be used, 0 otherwise.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from PIL import Image

from ablation.contract import default_data_root, default_tracking_uri, redact
from ablation.metrics import binary_metrics
from ablation.predict import PredictError, check_store, decode_many, load_run, probabilities, to_model_input

SPLITS = ("val", "test")
PROG = "python -m ablation.stretch"


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


def _split_images(
    client: MlflowClient, run_id: str, split: str, size: int, data_root: Path
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The labels and decoded images of the files the run's `<split>_predictions.csv` lists (under `data_root`)."""
    try:
        listed = pd.read_csv(client.download_artifacts(run_id, f"{split}_predictions.csv"))
    except (MlflowException, OSError) as error:
        raise PredictError(f"run {run_id} has no {split}_predictions.csv ({type(error).__name__})") from error
    images = decode_many([Path(data_root) / f for f in listed["file"]], size)  # an older run's absolute paths too
    unreadable = [(f, d) for f, d in zip(listed["file"], images, strict=True) if isinstance(d, str)]
    if unreadable:  # the data moved or changed since the run: name the file
        file, reason = unreadable[0]
        raise PredictError(f"run {run_id}: cannot read {file}, listed in its {split} split ({reason})")
    return listed["label"].to_numpy(), images


def probe(client: MlflowClient, run_id: str, factors: Sequence[float], data_root: Path) -> pd.DataFrame:
    """One row per split and width factor: the run's metrics at its threshold and each class's median p."""
    rows = []
    with load_run(client, run_id) as loaded:
        channels = int(loaded.model.input_shape[-1])
        for split in SPLITS:
            labels, images = _split_images(client, run_id, split, loaded.image_size, data_root)
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


def markdown(table: pd.DataFrame) -> str:
    """The table as Markdown, missing values as '—' (as `python -m analysis report` writes its tables)."""

    def cell(v) -> str:
        return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "|".join("---" for _ in table.columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None, prog: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog, description="A run's validation and test metrics with every image stretched in width."
    )
    parser.add_argument("--run-id", required=True, help="a finished job run of `python -m ablation`")
    parser.add_argument("--factors", default="0.85,1,1.15", help="width factors, comma-separated (default 0.85,1,1.15)")
    parser.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/runs/mlflow.db)",
    )
    parser.add_argument("--out", type=Path, help="also write the table as CSV here")
    parser.add_argument(
        "--data-root",
        type=Path,
        help="the folder the run's images are under (default: $CHEST_XRAY_ROOT, else ../shared/data/chest_xray)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    args = parse_args(argv, prog)
    name = prog.removeprefix("python -m ")  # the prefix of an error line: "ablation.stretch: error: ..."
    try:
        factors = [float(f) for f in args.factors.split(",")]
    except ValueError:
        factors = []
    if not factors or min(factors) <= 0:
        print(
            f"{name}: error: --factors {args.factors!r}: expected positive numbers, e.g. 0.85,1,1.15",
            file=sys.stderr,
        )
        return 2
    uri = args.tracking_uri or default_tracking_uri()
    try:
        check_store(uri)
        table = probe(MlflowClient(uri), args.run_id, factors, args.data_root or default_data_root())
    except PredictError as error:
        print(f"{name}: error: {redact(str(error))}", file=sys.stderr)
        return 2
    print(markdown(table.round(3)))
    if args.out:
        table.to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
