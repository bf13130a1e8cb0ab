"""Training speed of our ResNet-50 against keras.applications.ResNet50 with the same head.

    python -m ablation.bench_models --image-size 64 --batch-size 32 --steps 10 --rounds 3

Both models train in one process on the same data, batch, optimizer and loss; their timed rounds
alternate (A B A B ...) so that a slowdown of a shared machine hits both alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import keras
import numpy as np
from keras import layers

from ablation.models import build_resnet50

DROPOUT = 0.5


def _keras_resnet50(input_shape: tuple[int, int, int]) -> keras.Model:
    base = keras.applications.ResNet50(include_top=False, weights=None, input_shape=input_shape, pooling="avg")
    x = layers.Dropout(DROPOUT, name="head_dropout")(base.output)
    outputs = layers.Dense(1, dtype="float32", name="logit")(x)
    return keras.Model(base.input, outputs, name="resnet50_keras")


def _images_per_second(model: keras.Model, x, y, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)  # returns numpy losses, so each step has finished when it returns
    return steps * x.shape[0] / (time.perf_counter() - start)


def resnet50_vs_keras(
    image_size: int = 64, batch_size: int = 32, steps: int = 10, rounds: int = 3, channels: int = 1
) -> dict:
    """Training images per second of both ResNet-50s (median over rounds) and ours / Keras'."""
    keras.utils.set_random_seed(0)
    shape = (image_size, image_size, channels)
    rng = np.random.default_rng(0)
    x = keras.ops.convert_to_tensor(rng.integers(0, 256, (batch_size, *shape)).astype("float32"))
    y = keras.ops.convert_to_tensor(rng.integers(0, 2, (batch_size, 1)).astype("float32"))
    models = {
        "ours": build_resnet50(shape, DROPOUT, batchnorm=True),
        # Keras' ResNet50 takes no rescaling of its own; ours does it in-graph, a negligible cost.
        "keras": _keras_resnet50(shape),
    }
    for model in models.values():
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=keras.losses.BinaryCrossentropy(from_logits=True),
            jit_compile=False,
        )
        _images_per_second(model, x, y, 3)  # tracing and the first, slower steps
    rates: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            rates[name].append(_images_per_second(model, x, y, steps))
    ours, theirs = statistics.median(rates["ours"]), statistics.median(rates["keras"])
    return {
        "resnet50_ours_img_s": round(ours, 2),
        "resnet50_keras_img_s": round(theirs, 2),
        "resnet50_ours_over_keras": round(ours / theirs, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="training steps per timed round")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per model, interleaved")
    parser.add_argument("--channels", type=int, default=1, choices=(1, 3))
    args = parser.parse_args()
    result = resnet50_vs_keras(args.image_size, args.batch_size, args.steps, args.rounds, args.channels)
    print(f"{'model':<16}{'images/s':>10}")
    print(f"{'resnet50 ours':<16}{result['resnet50_ours_img_s']:>10.1f}")
    print(f"{'resnet50 keras':<16}{result['resnet50_keras_img_s']:>10.1f}")
    print(f"{'ours / keras':<16}{result['resnet50_ours_over_keras']:>10.3f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
