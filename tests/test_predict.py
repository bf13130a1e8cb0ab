"""`python -m ablation.predict` on X-rays as users have them, with the model of a real logged run.

One tiny run is trained through the CLI for the whole module; the images are real test X-rays turned
back into what the original Kaggle download holds: grayscale JPEGs of any size, a PNG, an RGB file,
and one truncated file.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import DATA_ROOT, PROJECT, copy_images
from mlflow.entities import RunStatus
from PIL import Image
from processes import run_ablation, run_module

from ablation import predict
from ablation.data import decode_image

SIZES = [(517, 389), (1024, 768), (389, 517), (640, 480)]


@dataclass
class Trained:
    runs: Path
    uri: str
    run_id: str
    threshold: float


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir) -> Trained:
    runs = tmp_path_factory.mktemp("predict") / "runs"
    done = run_ablation(
        "model=cnn",
        "data.image_size=32",
        "data.max_train_per_class=32",
        "epochs=1",
        # Both live in the saved model: predict must reproduce the logged probabilities, and Grad-CAM find the network.
        "trainer.tta_widths=[0.9,1,1.1]",
        "model.input_norm=per_image",
        "tracking.experiment=predict",
        "trainer.verbose=0",
        f"data.cache_dir={cache_dir}",
        runs=runs,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    uri = f"sqlite:///{runs}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("predict")
    [run] = client.search_runs([experiment.experiment_id], "tags.`ablation.role` = 'job'")
    assert run.info.status == "FINISHED"
    return Trained(runs, uri, run.info.run_id, run.data.metrics["threshold"])


@dataclass
class ValFolder:
    root: Path
    images: list[Path]  # the 16 readable ones
    corrupt: Path


@pytest.fixture(scope="module")
def val_folder(tmp_path_factory) -> ValFolder:
    """val/{NORMAL,PNEUMONIA}: 8 + 8 real X-rays in the original download's form, and one truncated JPEG."""
    root = tmp_path_factory.mktemp("download") / "val"
    images = []
    for name in ("NORMAL", "PNEUMONIA"):
        (root / name).mkdir(parents=True)
        for i, src in enumerate(sorted((DATA_ROOT / "test" / name).iterdir())[:8]):
            with Image.open(src) as image:
                gray = image.convert("L").resize(SIZES[i % len(SIZES)], Image.Resampling.BICUBIC)
            if i == 0:
                dst = root / name / f"{src.stem}.png"
                gray.save(dst)
            elif i == 1:
                dst = root / name / src.name
                gray.convert("RGB").save(dst, quality=90)
            elif i == 2:
                dst = root / name / f"{src.stem}.JPEG"  # suffixes match in any case
                gray.save(dst, format="JPEG", quality=90)
            else:
                dst = root / name / src.name
                gray.save(dst, quality=90)
            images.append(dst)
    whole = images[3].read_bytes()
    corrupt = root / "NORMAL" / "IM-9999-0001.jpeg"
    corrupt.write_bytes(whole[: len(whole) // 3])  # a download cut short
    (root / "NORMAL" / "notes.txt").write_text("not an image: left out of a folder")
    (root / ".thumbs").mkdir()
    (root / ".thumbs" / "x.jpeg").write_bytes(b"hidden: left out")
    return ValFolder(root, images, corrupt)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}


def _predict_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_module("ablation.predict", *args, cwd=cwd, env={**_env(), "PYTHONPATH": str(PROJECT)})


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["file", "probability", "label"]
        return list(reader)


@pytest.mark.slow  # the module's run is trained through the CLI
def test_folder_of_original_xrays_with_a_corrupt_file(trained, val_folder, tmp_path):
    out, explain = tmp_path / "predictions.csv", tmp_path / "gradcam"
    done = _predict_cli(
        "--run-id",
        trained.run_id,
        "--tracking-uri",
        trained.uri,
        "--out",
        str(out),
        "--explain",
        str(explain),
        str(val_folder.root),
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stderr[-3000:]

    rows = _read_csv(out)
    assert len(rows) == 16
    # Named relative to the folder given, not by the user's absolute home layout (issue 33).
    assert {row["file"] for row in rows} == {p.relative_to(val_folder.root).as_posix() for p in val_folder.images}
    assert f"named relative to {val_folder.root};" in done.stderr
    for row in rows:
        p = float(row["probability"])
        assert 0 <= p <= 1
        assert row["label"] == ("PNEUMONIA" if p >= trained.threshold else "NORMAL")

    failed = [line for line in done.stderr.splitlines() if line.startswith("failed:")]
    assert len(failed) == 1, done.stderr[-3000:]
    assert str(val_folder.corrupt) in failed[0] and "truncated" in failed[0], failed[0]
    assert "notes.txt" not in done.stderr and ".thumbs" not in done.stderr
    assert f"run {trained.run_id}: cnn at 32 px" in done.stderr

    pngs = sorted(explain.rglob("*.png"))
    expected = sorted(explain / p.relative_to(val_folder.root).with_suffix(".png") for p in val_folder.images)
    assert pngs == expected
    for png in pngs:
        with Image.open(png) as image:
            assert image.format == "PNG" and image.mode == "RGB" and image.size == (256, 256)


@pytest.mark.slow  # the module's run is trained through the CLI
def test_preprocessing_follows_the_logged_config_and_best_run_is_selected(
    trained, val_folder, tmp_path, monkeypatch, capsys
):
    """The model sees exactly `decode_image(file, 32)` (the run's data.image_size, not the 224 default),
    and the run's own test X-rays get the probabilities the run logged for them."""
    seen = []
    real = predict.probabilities

    def spy(model, images, batch_size=32):
        seen.append(images.copy())
        return real(model, images, batch_size)

    monkeypatch.setattr(predict, "probabilities", spy)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(trained.runs.parent)  # the default store: ./runs/mlflow.db
    logged = pd.read_csv(
        mlflow.MlflowClient(trained.uri).download_artifacts(trained.run_id, "test_predictions.csv", str(tmp_path))
    )
    names = list(logged.file.iloc[[0, 1, -2, -1]])  # two NORMAL, two PNEUMONIA
    originals = [DATA_ROOT / name for name in names]  # logged under data.root (an absolute path stays as it is)
    files = [val_folder.images[1], val_folder.images[8], *originals]  # 1024x768 RGB, 517x389 PNG, 224 px JPEGs
    out = tmp_path / "best.csv"

    code = predict.main(["--experiment", "predict", "--best", "test_auc", "--out", str(out), *map(str, files)])
    assert code == 0
    err = capsys.readouterr().err
    assert f"best run of 'predict' by test_auc: {trained.run_id}" in err
    assert "warning: --best test_auc chooses the model on the test set" in err  # allowed when named, with a warning

    [inputs] = seen
    assert inputs.shape == (len(files), 32, 32, 1) and inputs.dtype == np.float32
    np.testing.assert_array_equal(inputs[..., 0], np.stack([decode_image(f, 32) for f in files]))
    rows = _read_csv(out)
    shared = Path(os.path.commonpath([f.parent for f in files]))  # the folder the arguments share
    assert [row["file"] for row in rows] == [f.relative_to(shared).as_posix() for f in files]
    expected = logged.set_index("file").probability.loc[names].to_numpy()
    np.testing.assert_allclose([float(r["probability"]) for r in rows[2:]], expected, atol=1e-5)


@pytest.mark.slow  # the module's run is trained through the CLI
def test_what_cannot_be_used_is_refused_with_exit_status_2(trained, tmp_path, capsys):
    image = str(sorted((DATA_ROOT / "test" / "NORMAL").iterdir())[0])
    out = str(tmp_path / "p.csv")
    assert predict.main(["--run-id", "0" * 32, "--tracking-uri", trained.uri, "--out", out, image]) == 2
    assert f"no run {'0' * 32}" in capsys.readouterr().err
    missing = f"sqlite:///{tmp_path}/nowhere/mlflow.db"
    assert predict.main(["--run-id", trained.run_id, "--tracking-uri", missing, "--out", out, image]) == 2
    assert "no MLflow store" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()
    assert predict.main(["--experiment", "nope", "--tracking-uri", trained.uri, "--out", out, image]) == 2
    assert "no experiment named 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        predict.main(["--run-id", trained.run_id, "--best", "test_auc", image])
    assert exit_info.value.code == 2


def test_the_best_run_is_chosen_on_validation_unless_a_metric_is_named():
    assert predict.parse_args(["--experiment", "study", "x.jpeg"]).best == "kept_val_auc"
    assert predict.parse_args(["--experiment", "study", "--best", "test_auc", "x.jpeg"]).best == "test_auc"


def test_best_run_is_the_finished_job_with_the_best_metric(tmp_path):
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.create_experiment("study", artifact_location=(tmp_path / "artifacts").as_uri())

    def run(role: str, status: RunStatus, **metrics: float) -> str:
        run_id = client.create_run(experiment, tags={predict.ROLE: role}).info.run_id
        for key, value in metrics.items():
            client.log_metric(run_id, key, value)
        client.set_terminated(run_id, RunStatus.to_string(status))
        return run_id

    good = run("job", RunStatus.FINISHED, test_auc=0.9, val_loss=0.4)
    low_loss = run("job", RunStatus.FINISHED, test_auc=0.7, val_loss=0.2)
    run("job", RunStatus.FAILED, test_auc=0.99, val_loss=0.1)
    run("sweep", RunStatus.FINISHED, test_auc=1.0, val_loss=0.0)
    run("job", RunStatus.FINISHED)  # no metrics at all

    assert predict.best_run(client, "study", "test_auc").info.run_id == good
    assert predict.best_run(client, "study", "val_loss").info.run_id == low_loss
    with pytest.raises(predict.PredictError, match="has the metric 'f1'"):
        predict.best_run(client, "study", "f1")


def test_find_images_searches_folders_recursively_in_any_case(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    for name in ("a/x.JPG", "a/deep/y.jpeg", "a/deep/z.Png", "a/readme.md", "a/.hidden.jpeg", "b.bmp"):
        (tmp_path / name).write_bytes(b"")
    found, problems = predict.find_images([tmp_path / "a", tmp_path / "b.bmp", tmp_path / "gone", tmp_path / "a/deep"])
    assert [str(rel) for _, rel in found] == ["deep/y.jpeg", "deep/z.Png", "x.JPG", "b.bmp", "y.jpeg", "z.Png"]
    assert problems == {str(tmp_path / "gone"): "no such file or folder"}
    (tmp_path / "empty").mkdir()
    assert "no .jpeg/.jpg/.png files" in predict.find_images([tmp_path / "empty"])[1][str(tmp_path / "empty")]


def _unfollowable_links(folder: Path, outside: Path) -> dict[str, str]:
    """A dangling link, two links that lead to each other and one to itself, all named like X-rays; each with
    the reason predict must give."""
    (folder / "gone.jpeg").symlink_to(outside / "deleted.jpeg")
    (folder / "loop-a.jpeg").symlink_to(folder / "loop-b.jpeg")
    (folder / "loop-b.jpeg").symlink_to(folder / "loop-a.jpeg")
    (folder / "self.png").symlink_to("self.png")
    loop = "a link that cannot be followed: the links loop back on themselves"
    gone = f"a link that cannot be followed: its target {outside / 'deleted.jpeg'} does not exist"
    return {
        str(folder / "gone.jpeg"): gone,
        str(folder / "loop-a.jpeg"): loop,
        str(folder / "loop-b.jpeg"): loop,
        str(folder / "self.png"): loop,
    }


def test_find_images_names_the_links_it_cannot_follow(tmp_path):
    folder = tmp_path / "xrays"
    [good] = copy_images(DATA_ROOT / "test" / "NORMAL", folder, 1)
    broken = _unfollowable_links(folder, tmp_path)
    (tmp_path / "arg.jpeg").symlink_to(tmp_path / "missing.jpeg")  # a dangling link given as an argument
    found, problems = predict.find_images([folder, tmp_path / "arg.jpeg"])
    assert found == [(good, Path(good.name))]
    missing = f"a link that cannot be followed: its target {tmp_path / 'missing.jpeg'} does not exist"
    assert problems == {**broken, str(tmp_path / "arg.jpeg"): missing}


def test_csv_names_are_relative_to_the_folder_the_arguments_share(tmp_path, monkeypatch):
    ward, clinic = tmp_path / "xrays" / "ward", tmp_path / "xrays" / "clinic"
    (ward / "NORMAL").mkdir(parents=True)
    clinic.mkdir()
    for image in (ward / "NORMAL" / "a.jpeg", clinic / "b.png"):
        image.write_bytes(b"")
    assert predict.common_folder([ward]) == ward  # one folder: names inside it
    assert predict.common_folder([clinic / "b.png"]) == clinic  # one file: its name
    base = predict.common_folder([ward, clinic / "b.png", tmp_path / "gone"])  # several: the folder they share
    assert base == tmp_path / "xrays"
    assert predict.csv_name(ward / "NORMAL" / "a.jpeg", base) == "ward/NORMAL/a.jpeg"
    monkeypatch.chdir(ward)
    assert predict.common_folder(["NORMAL"]) == ward / "NORMAL"  # relative arguments, from where they were given
    assert predict.csv_name(Path("NORMAL/a.jpeg"), ward / "NORMAL") == "a.jpeg"


@pytest.mark.slow  # the module's run is trained through the CLI
def test_a_tiny_image_and_unfollowable_links_are_named_and_rows_hold_no_absolute_folder(trained, tmp_path):
    """Issue 33: a 1 x 1 image, a dangling link and looping links are each named on stderr with the reason, the
    X-rays are predicted, and the CSV names them relative to the folder the arguments share."""
    xrays = tmp_path / "home" / "someone" / "xrays"
    ward = xrays / "ward"
    normal = copy_images(DATA_ROOT / "test" / "NORMAL", ward / "NORMAL", 1)
    pneumonia = copy_images(DATA_ROOT / "test" / "PNEUMONIA", ward / "PNEUMONIA", 1)
    [clinic] = copy_images(DATA_ROOT / "test" / "NORMAL", xrays / "clinic", 1)
    Image.new("L", (1, 1), 200).save(ward / "tiny.png")
    broken = _unfollowable_links(ward, tmp_path)
    out = tmp_path / "p.csv"
    args = ["--run-id", trained.run_id, "--tracking-uri", trained.uri, "--out", str(out), str(ward), str(clinic)]
    done = _predict_cli(*args, cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]  # some failed; the CSV holds the others

    files = [row["file"] for row in _read_csv(out)]
    assert files == [f"ward/{p.relative_to(ward).as_posix()}" for p in normal + pneumonia] + [f"clinic/{clinic.name}"]
    assert not any(name.startswith("/") or "someone" in name for name in files)
    assert f"predicted 3 image(s) into {out}, named relative to {xrays}; 5 failed" in done.stderr
    failed = {line for line in done.stderr.splitlines() if line.startswith("failed: ")}
    expected = {f"failed: {path}: {why}" for path, why in broken.items()}
    expected.add(
        f"failed: {ward / 'tiny.png'}: ValueError: 1 x 1 pixels, a side under the minimum of 32 px "
        "(ablation.data.MIN_SIDE): too small to be a chest X-ray"
    )
    assert failed == expected, done.stderr[-3000:]


def test_stretch_width_widens_and_narrows_about_the_centre():
    from ablation.stretch import stretch_width

    bar = np.zeros((40, 40), np.uint8)
    bar[:, 10:30] = 255  # a centred 20 px wide bar
    np.testing.assert_array_equal(stretch_width(bar, 1.0), bar)
    for factor, width in ((1.5, 30), (0.5, 10)):
        out = stretch_width(bar, factor)
        columns = np.flatnonzero(out[20] > 127)
        assert out.shape == bar.shape and abs(len(columns) - width) <= 1
        assert abs(columns.mean() - 19.5) <= 1  # still centred


@pytest.mark.slow  # the module's run is trained through the CLI
def test_stretch_probe_scores_the_runs_own_splits(trained, tmp_path, capsys):
    from ablation.stretch import main

    out = tmp_path / "stretch.csv"
    assert (
        main(
            [
                "--run-id",
                trained.run_id,
                "--tracking-uri",
                trained.uri,
                "--factors",
                "0.8,1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "| test | 1.0 |" in capsys.readouterr().out
    table = pd.read_csv(out)
    assert list(zip(table.split, table.width_factor, strict=True)) == [
        ("val", 0.8),
        ("val", 1.0),
        ("test", 0.8),
        ("test", 1.0),
    ]
    # Unstretched, the probe sees exactly what the run was scored on.
    logged = mlflow.MlflowClient(trained.uri).get_run(trained.run_id).data.metrics
    unstretched = table.set_index(["split", "width_factor"]).loc[("test", 1.0)]
    assert unstretched.auc == pytest.approx(logged["test_auc"], abs=1e-6)
    assert unstretched.accuracy == pytest.approx(logged["test_accuracy"], abs=1e-6)
    assert main(["--run-id", trained.run_id, "--tracking-uri", trained.uri, "--factors", "0,1"]) == 2
    assert "--factors '0,1'" in capsys.readouterr().err


@pytest.mark.slow  # the module's run is trained through the CLI
def test_stretch_cli_names_a_missing_run_or_store(trained, tmp_path, capsys):
    from ablation.stretch import main

    assert main(["--run-id", "0" * 32, "--tracking-uri", trained.uri]) == 2
    assert capsys.readouterr().err.startswith(f"ablation.stretch: error: no run {'0' * 32}")
    missing = tmp_path / "nowhere.db"
    assert main(["--run-id", trained.run_id, "--tracking-uri", f"sqlite:///{missing}"]) == 2
    assert f"no MLflow store at {missing}" in capsys.readouterr().err
    assert not missing.exists()


def test_a_model_safe_mode_refuses_or_a_truncated_one_exits_2_naming_the_reason(trained, tmp_path, capsys):
    """No traceback and no misleading "file not found": the run, the file and why it cannot be loaded."""
    import keras
    import mlflow.keras
    import mlflow.pyfunc

    client = mlflow.MlflowClient(trained.uri)
    config = client.download_artifacts(trained.run_id, predict.CONFIG_ARTIFACT, str(tmp_path))
    saved = Path(client.download_artifacts(trained.run_id, predict.KERAS_FILE, str(tmp_path / "saved")))
    inputs = keras.Input((32, 32, 1))
    with_code = tmp_path / "lambda" / "model.keras"  # a Lambda layer: Python code that safe mode will not run
    with_code.parent.mkdir()
    lambda_model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2.0)(inputs))
    lambda_model.save(with_code)
    mlflow.keras.save_model(lambda_model, str(tmp_path / "lambda-mlflow"), pip_requirements=["keras"])
    with pytest.raises(ValueError, match="Lambda"):  # MLflow's own loader keeps Keras' safe mode too
        mlflow.pyfunc.load_model(str(tmp_path / "lambda-mlflow"))
    truncated = tmp_path / "truncated" / "model.keras"
    truncated.parent.mkdir()
    truncated.write_bytes(saved.read_bytes()[:4000])
    experiment = client.create_experiment("broken-models", artifact_location=(tmp_path / "artifacts").as_uri())
    image = str(sorted((DATA_ROOT / "test" / "NORMAL").iterdir())[0])
    for model_file, why in ((with_code, "Lambda"), (truncated, "")):
        run_id = client.create_run(experiment, run_name=model_file.parent.name).info.run_id
        client.log_artifact(run_id, config)
        client.log_artifact(run_id, str(model_file), "model/data")
        client.set_terminated(run_id)
        out = str(tmp_path / "p.csv")
        assert predict.main(["--run-id", run_id, "--tracking-uri", trained.uri, "--out", out, image]) == 2
        err = capsys.readouterr().err
        assert f"run {run_id}: its model/data/model.keras cannot be loaded in Keras' safe mode" in err, err
        assert why in err and "Traceback" not in err


def test_an_image_whose_name_is_not_utf8_is_named_and_the_others_predicted(trained, tmp_path, capsys):
    folder = tmp_path / "images"
    [good] = copy_images(DATA_ROOT / "test" / "NORMAL", folder, 1)
    shutil.copy(good, os.fsencode(folder) + b"/caf\xe9.jpeg")  # Latin-1 bytes: not valid UTF-8
    out = tmp_path / "p.csv"
    args = ["--run-id", trained.run_id, "--tracking-uri", trained.uri, "--out", str(out), str(folder)]
    assert predict.main(args) == 1  # some failed; the CSV holds the others
    err = capsys.readouterr().err
    assert "failed: " in err and "caf\\xe9.jpeg" in err and "not valid UTF-8" in err
    assert [Path(row["file"]).name for row in _read_csv(out)] == [good.name]
