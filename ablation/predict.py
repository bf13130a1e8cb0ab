"""Predict pneumonia on new chest X-rays with a logged run's model: `python -m ablation.predict`.

    ablation-predict --run-id ID [--tracking-uri URI] [--out predictions.csv] [--explain DIR] PATH ...
    ablation-predict --experiment NAME [--best kept_val_auc] ... PATH ...
    ablation-predict --model models:/NAME@champion ... PATH ...     (a registered version: its run's model)

PATHs are image files or folders, searched recursively for .jpeg/.jpg/.png (any case). Every image is
preprocessed exactly as the run's training data was, from the run's logged `config.yaml`
(`data.image_size`, through `ablation.data.decode_image`): any size, grayscale, RGB or PNG goes. The CSV
has `file,probability,label`: the probability of pneumonia and the label at the run's logged `threshold`
metric (0.5 if the run has none). `--explain DIR` also writes a Grad-CAM overlay PNG per image.

The CSV's `file` is the image's path relative to the folder the PATHs share: a folder PATH itself, a file
PATH's folder, or, for several PATHs, the deepest folder holding them all (`common_folder`; named on stderr).
So `ablation-predict ~/xrays` writes `NORMAL/a.jpeg`, and `... ~/xrays/a.png` writes `a.png`: no one reading
the CSV on a shared server sees the user's home layout, and two files never get the same name.

An unreadable file is named on stderr with the reason and the others are still predicted; so is an image under
32 px a side (`ablation.data.MIN_SIDE`), and a `.jpeg`/`.jpg`/`.png` link that cannot be followed (its target
missing, or a loop of links). The exit status is then 1. It is 2 when the run, its model or its
config cannot be found, 0 otherwise.
"""

from __future__ import annotations

import argparse
import csv
import errno
import math
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ablation import console  # noqa: E402

console.quiet()  # before TensorFlow and MLflow load: no start-up chatter, no download bars

import numpy as np  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Run  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from PIL import Image  # noqa: E402

from ablation.config import lower_is_better  # noqa: E402
from ablation.contract import (  # noqa: E402
    CLASSES,
    DEFAULT_THRESHOLD,
    JOB,
    MODEL_ARTIFACT,
    ROLE,
    default_tracking_uri,
    redact,
)
from ablation.data import decode_image, decode_threads, escaped, not_utf8  # noqa: E402
from ablation.metrics import sigmoid  # noqa: E402

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
KERAS_FILE = f"{MODEL_ARTIFACT}/data/model.keras"  # the Keras file of the run's MLflow model (probabilities)
LEGACY_KERAS_FILE = f"{MODEL_ARTIFACT}/model.keras"  # runs logged before the MLflow model: the bare network (logits)
DEFAULT_BEST = "kept_val_auc"  # the kept epoch's validation ROC AUC: "the best" is chosen on validation
NOT_UTF8 = "its name is not valid UTF-8, which the CSV cannot hold: rename it (e.g. convmv -f latin1 -t utf8)"
CONFIG_ARTIFACT = "config.yaml"
CHUNK = 256  # images decoded and predicted at a time: memory stays flat on big folders
EXPLAIN_SIZE = 256  # minimum side of a --explain overlay, so a 32 px model's map is still visible


class PredictError(RuntimeError):
    """The run, its model or its config cannot be used; nothing was predicted."""


def check_store(uri: str) -> None:
    """PredictError, naming what is wrong, when the store at `uri` cannot be read (`ablation.store.check`)."""
    from ablation.store import StoreError, check

    try:
        check(uri)
    except StoreError as error:
        raise PredictError(str(error)) from error


def best_run(client: MlflowClient, experiment: str, metric: str) -> Run:
    """The FINISHED job run of `experiment` with the best `metric` (highest, lowest for a `...loss`)."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise PredictError(f"no experiment named {experiment!r}")
    runs, token = [], None
    while True:
        page = client.search_runs(
            [exp.experiment_id],
            f"tags.`{ROLE}` = '{JOB}' and attributes.status = 'FINISHED'",
            max_results=1000,
            page_token=token,
        )
        runs += [r for r in page if metric in r.data.metrics and math.isfinite(r.data.metrics[metric])]
        token = page.token
        if not token:
            break
    if not runs:
        raise PredictError(f"no FINISHED job run of experiment {experiment!r} has the metric {metric!r}")
    sign = 1 if lower_is_better(metric) else -1
    return min(runs, key=lambda r: sign * r.data.metrics[metric])  # ties: the newest run (search order)


@dataclass
class LoadedRun:
    run_id: str
    model: object  # keras.Model: the MLflow model's probability model, or a bare network logged before it
    image_size: int
    threshold: float
    model_name: str


def _download(client: MlflowClient, run_id: str, artifacts: Sequence[str], into: str) -> tuple[str, Path]:
    """The first of `artifacts` the run has, and where it was downloaded in `into`."""
    for artifact in artifacts:
        try:
            return artifact, Path(client.download_artifacts(run_id, artifact, into))
        except (MlflowException, OSError) as error:
            missing = error
    raise PredictError(
        f"run {run_id} has no artifact {artifacts[0]} ({type(missing).__name__}); "
        "only a FINISHED job run of `python -m ablation` logs a model"
    ) from missing


def registered_run(client: MlflowClient, uri: str) -> str:
    """The run behind a registered model version, `models:/NAME@ALIAS` or `models:/NAME/VERSION`."""
    match = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/(\d+))", uri)
    if match is None:
        raise PredictError(f"--model {uri!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    name, alias, version = match.groups()
    try:
        found = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as error:
        raise PredictError(f"--model {uri}: {error.message}") from error
    if not found.run_id:
        raise PredictError(f"--model {uri}: version {found.version} has no run; register a run of `ablation`")
    return found.run_id


@contextmanager
def load_run(client: MlflowClient, run_id: str) -> Iterator[LoadedRun]:
    """The run's model, image size (from its logged config) and threshold; artifacts in a temp dir."""
    try:
        run = client.get_run(run_id)
    except MlflowException as error:
        raise PredictError(f"no run {run_id}: {error.message}") from error
    with tempfile.TemporaryDirectory(prefix="ablation-predict-") as tmp:
        _, config = _download(client, run_id, [CONFIG_ARTIFACT], tmp)
        artifact, model_file = _download(client, run_id, [KERAS_FILE, LEGACY_KERAS_FILE], tmp)
        cfg = OmegaConf.load(config)
        size = OmegaConf.select(cfg, "data.image_size")
        if not isinstance(size, int) or size <= 0:
            raise PredictError(f"run {run_id}: its {CONFIG_ARTIFACT} has no valid data.image_size ({size!r})")

        import keras  # TensorFlow loads only once the run is known to be usable

        try:
            model = keras.models.load_model(model_file, safe_mode=True, compile=False)
        except Exception as error:  # safe mode's refusal, a truncated archive (BadZipFile), a missing layer class
            reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
            raise PredictError(
                f"run {run_id}: its {artifact} cannot be loaded in Keras' safe mode "
                f"({type(error).__name__}: {reason}); a model of `python -m ablation` holds no code and loads"
            ) from error
        expected = tuple(model.input_shape[1:3])
        if expected != (size, size):
            raise PredictError(f"run {run_id}: the model takes {expected} images but its config says {size} px")
        threshold = run.data.metrics.get("threshold", DEFAULT_THRESHOLD)
        name = OmegaConf.select(cfg, "model.name", default=model.name)
        yield LoadedRun(run_id, model, size, float(threshold), str(name))


def broken_link(path: Path) -> str | None:
    """Why `path`, a link, cannot be followed (its target is missing, or the links loop); None if it can."""
    try:
        os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "a link that cannot be followed: the links loop back on themselves"
        if error.errno in (errno.ENOENT, errno.ENOTDIR):
            return f"a link that cannot be followed: its target {escaped(os.readlink(path))} does not exist"
        return f"a link that cannot be followed: {error.strerror}"
    return None


def find_images(paths: Sequence[str | Path]) -> tuple[list[tuple[Path, Path]], dict[str, str]]:
    """(file, name relative to the argument) of every image the arguments name, and the bad arguments and
    files with the reason.

    A file argument is taken whatever its suffix; a folder contributes its .jpeg/.jpg/.png files at
    any depth (hidden files and folders left out), sorted. A link among them that cannot be followed
    (dangling, or a loop) is named with the reason, not dropped.
    """
    found: list[tuple[Path, Path]] = []
    problems: dict[str, str] = {}
    for arg in map(Path, paths):
        if escaped(str(arg)) != str(arg):
            problems[escaped(str(arg))] = NOT_UTF8
            continue
        if arg.is_file():
            found.append((arg, Path(arg.name)))
        elif arg.is_dir():
            candidates = [
                p
                for p in arg.rglob("*")
                if p.suffix.lower() in IMAGE_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(arg).parts)
            ]
            for p in candidates:
                if p.is_symlink() and (why := broken_link(p)) is not None:
                    problems[escaped(str(p))] = why
            files = sorted(p for p in candidates if p.is_file())
            bad = not_utf8(str(p) for p in files)
            problems |= dict.fromkeys(bad, NOT_UTF8)
            files = [p for p in files if escaped(str(p)) == str(p)] if bad else files
            if not files:
                problems[str(arg)] = f"no {'/'.join(IMAGE_SUFFIXES)} files in this folder"
            found += [(p, p.relative_to(arg)) for p in files]
        else:
            problems[str(arg)] = (arg.is_symlink() and broken_link(arg)) or "no such file or folder"
    return found, problems


def common_folder(paths: Sequence[str | Path]) -> Path:
    """The folder the CSV's names are relative to: the deepest one holding every argument that exists (a
    folder argument itself, a file argument's folder), absolute but with links as given; the current folder
    when none exists."""
    folders = []
    for arg in map(Path, paths):
        if arg.is_dir():
            folders.append(os.path.abspath(arg))
        elif arg.exists():
            folders.append(os.path.dirname(os.path.abspath(arg)))
    return Path(os.path.commonpath(folders)) if folders else Path.cwd()


def csv_name(path: Path, base: Path) -> str:
    """The CSV's `file`: `path` relative to `base` (`common_folder`), in POSIX form."""
    return Path(os.path.relpath(os.path.abspath(path), base)).as_posix()


def _decode(path: Path, size: int) -> np.ndarray | str:
    try:
        return decode_image(path, size)
    except Exception as error:  # noqa: BLE001 - whatever a decoder raises, it is this file's failure only
        return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def decode_many(paths: Sequence[Path], size: int) -> list[np.ndarray | str]:
    """Each file as `decode_image` gives it, or the reason it cannot be read."""
    # Pillow decodes without the GIL; at most data.DECODE_THREADS at a time, each within data.DECODE_BUDGET_BYTES
    with ThreadPoolExecutor(max_workers=decode_threads()) as pool:
        return list(pool.map(lambda p: _decode(p, size), paths))


def to_model_input(pixels: Sequence[np.ndarray], channels: int) -> np.ndarray:
    """(n, size, size, channels) float32 in [0, 255], as the training pipeline feeds the model."""
    batch = np.stack(pixels).astype(np.float32)[..., None]
    return np.repeat(batch, channels, axis=-1) if channels != 1 else batch


def probabilities(model, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """The pneumonia probability per image, float64 from the network's logit as in training: the float32 sigmoid
    of the MLflow model rounds confident ones to exactly 1 and so loses their order."""
    from ablation.models import network_of

    return sigmoid(network_of(model).predict(images, batch_size=batch_size, verbose=0).ravel())


def _unique(path: Path, used: set[Path]) -> Path:
    candidate, n = path, 1
    while candidate in used:
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    used.add(candidate)
    return candidate


def write_explanations(
    loaded: LoadedRun, files: Sequence[tuple[Path, Path]], inputs: np.ndarray, out_dir: Path, used: set[Path]
) -> None:
    """A Grad-CAM overlay PNG per image, under `out_dir` at the image's path relative to its argument."""
    from ablation.explain import gradcam, overlay
    from ablation.models import bare_network

    maps = gradcam(bare_network(loaded.model), inputs)
    display = max(loaded.image_size, EXPLAIN_SIZE)
    for (path, rel), heatmap in zip(files, maps, strict=True):
        target = _unique(out_dir / rel.with_suffix(".png"), used)
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(overlay(decode_image(path, display), heatmap)).save(target)


def predict(
    loaded: LoadedRun,
    files: Sequence[tuple[Path, Path]],
    writer: csv.writer,
    explain: Path | None = None,
    relative_to: Path | None = None,
) -> dict[str, str]:
    """Write a CSV row per readable file, in order, named relative to `relative_to` (`csv_name`; the path as
    given without it); returns the unreadable ones with their reasons."""
    failures: dict[str, str] = {}
    channels = int(loaded.model.input_shape[-1])
    used: set[Path] = set()
    for start in range(0, len(files), CHUNK):
        chunk = files[start : start + CHUNK]
        decoded = decode_many([path for path, _ in chunk], loaded.image_size)
        readable = [(item, d) for item, d in zip(chunk, decoded, strict=True) if not isinstance(d, str)]
        failures.update({str(path): d for (path, _), d in zip(chunk, decoded, strict=True) if isinstance(d, str)})
        if not readable:
            continue
        inputs = to_model_input([d for _, d in readable], channels)
        for ((path, _), _), p in zip(readable, probabilities(loaded.model, inputs), strict=True):
            name = str(path) if relative_to is None else csv_name(path, relative_to)
            writer.writerow([name, f"{p:.6f}", CLASSES[int(p >= loaded.threshold)]])
        if explain is not None:
            write_explanations(loaded, [item for item, _ in readable], inputs, explain, used)
    return failures


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ablation-predict",
        description="Predict pneumonia on chest X-ray files or folders with a logged run's model.",
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--run-id", help="the MLflow run whose model predicts")
    which.add_argument("--experiment", help="take the best FINISHED job run of this MLflow experiment")
    which.add_argument("--model", metavar="URI", help="a registered version: models:/NAME@ALIAS or models:/NAME/N")
    parser.add_argument(
        "--best",
        metavar="METRIC",
        help=f"with --experiment: the run metric to select on (default {DEFAULT_BEST}, the kept epoch's validation "
        "ROC AUC); higher is better, lower for a name ending in 'loss'. A test metric chooses on the test set: "
        "allowed when named, with a warning",
    )
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///runs/mlflow.db)",
    )
    parser.add_argument("--out", default="predictions.csv", help="CSV to write ('-': stdout; default predictions.csv)")
    parser.add_argument("--explain", metavar="DIR", type=Path, help="also write a Grad-CAM overlay PNG per image here")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (searched recursively)")
    args = parser.parse_args(argv)
    if args.best is not None and args.experiment is None:
        parser.error("--best selects a run of an --experiment; it does not go with --run-id")
    args.best = args.best or DEFAULT_BEST
    args.tracking_uri = args.tracking_uri or default_tracking_uri()
    return args


@contextmanager
def _open_out(out: str) -> Iterator:
    if out == "-":
        yield sys.stdout
    else:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", newline="") as f:
            yield f


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    files, problems = find_images(args.paths)
    base = common_folder(args.paths)
    try:
        check_store(args.tracking_uri)
        client = MlflowClient(tracking_uri=args.tracking_uri)
        if args.experiment is not None:
            if args.best.startswith("test_"):
                print(
                    f"warning: --best {args.best} chooses the model on the test set, so its test figures are no "
                    f"longer an unbiased estimate; the default, {DEFAULT_BEST}, chooses on validation",
                    file=sys.stderr,
                )
            run = best_run(client, args.experiment, args.best)
            run_id = run.info.run_id
            value = run.data.metrics[args.best]
            print(
                f"best run of {args.experiment!r} by {args.best}: {run_id} ({args.best} = {value:.4f})", file=sys.stderr
            )
        elif args.model is not None:
            run_id = registered_run(client, args.model)
            print(f"{args.model}: run {run_id}", file=sys.stderr)
        else:
            run_id = args.run_id
        with load_run(client, run_id) as loaded:
            print(
                f"run {run_id}: {loaded.model_name} at {loaded.image_size} px, threshold {loaded.threshold:.4f}",
                file=sys.stderr,
            )
            with _open_out(args.out) as f:
                writer = csv.writer(f)
                writer.writerow(["file", "probability", "label"])
                failures = predict(loaded, files, writer, args.explain, base)
    except PredictError as error:
        print(f"error: {redact(str(error))}", file=sys.stderr)
        return 2
    done = len(files) - len(failures)
    failures = {**problems, **failures}
    for path, reason in failures.items():
        print(f"failed: {path}: {reason}", file=sys.stderr)
    where = "stdout" if args.out == "-" else args.out
    print(f"predicted {done} image(s) into {where}, named relative to {base}; {len(failures)} failed", file=sys.stderr)
    if args.explain is not None:
        print(f"Grad-CAM overlays in {args.explain}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
