"""Checkpoint probe for docs/results.md: does averaging a run's epochs rank the test split better than its kept one?

    python docs/probes/epochs.py OUT.npz experiment=best seed=1 [more overrides]   # train once, keep every epoch
    python docs/probes/epochs.py --summary OUT.npz [...]                          # score the epoch averages

Trains one configuration as `python -m ablation` does (no MLflow run), keeping every epoch's validation and test
logits. The summary scores, on the test split, the logit average of the k best epochs on validation ROC AUC and of
the last k. **It reads test figures of every epoch**: a probe for the write-up, never a way to choose a model.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT))  # benchmarks.compose: the config as `python -m ablation` composes it
os.environ.setdefault("ABLATION_ROOT", str(PROJECT))


def record(out: str, overrides: list[str]) -> None:
    import keras
    import numpy as np

    from ablation import pipeline
    from ablation.data import load_data
    from ablation.train import Recipe, train
    from benchmarks import compose

    cfg = compose(*overrides)
    data = load_data(seed=cfg.seed, **Recipe.of(cfg).data)
    splits = {
        name: pipeline.eval_batches(split.images, split.labels, cfg.batch_size)
        for name, split in (("val", data.val), ("test", data.test))
    }
    logits: dict[str, list] = {"val": [], "test": []}

    class EveryEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            for name, batches in splits.items():
                logits[name].append(self.model.predict(batches, verbose=0).ravel())

    result = train(cfg, callbacks=[EveryEpoch()], data=data)
    np.savez(
        out,
        val=np.array(logits["val"]),
        test=np.array(logits["test"]),
        test_labels=data.test.labels,
        val_auc=np.array(result.history["val_auc"]),
        kept_epoch=result.best_epoch,
    )
    print(f"{out}: kept epoch {result.best_epoch}, test {result.test_metrics}")


def summary(files: list[str]) -> None:
    import numpy as np
    from sklearn.metrics import roc_auc_score

    for file in files:
        run = np.load(file)
        test, labels, val_auc = run["test"], run["test_labels"], run["val_auc"]
        kept = int(run["kept_epoch"])
        print(f"{file}: kept epoch {kept}")
        best_first = np.argsort(-val_auc, kind="stable")
        groups = [("kept", [kept - 1])]
        for k in range(2, 6):
            groups += [(f"best {k}", best_first[:k]), (f"last {k}", np.arange(len(test))[-k:])]
        for name, epochs in groups:
            logit = test[list(epochs)].mean(axis=0)
            accuracy = ((logit >= 0) == labels).mean()  # logit 0 is probability 0.5
            print(
                f"  {name:7} epochs {sorted(int(e) + 1 for e in epochs)}: accuracy {accuracy:.3f}, "
                f"ROC AUC {roc_auc_score(labels, logit):.4f}"
            )


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--summary"]:
        summary(args[1:])
    else:
        record(args[0], args[1:])
