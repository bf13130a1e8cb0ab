"""What differs between Keras' backends, in one place: TensorFlow (the default and the CI path) and JAX.

Everything else is written against Keras (layers, `keras.ops`, `keras.random`, callbacks) and runs on either.
Here: the framework's own set-up for a run (device memory, determinism, seeds), the gradient Grad-CAM takes, the
packages a saved model needs, and the error a determinism-less GPU op raises. The input feed of either backend is
`ablation.pipeline`'s. TensorFlow is
imported only under the TensorFlow backend; the backend itself is chosen before Keras starts
(`ablation.devices.select_backend`, from `trainer.backend`).
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from collections.abc import Callable

import keras
import numpy as np

NAME = keras.backend.backend()
TENSORFLOW = NAME == "tensorflow"


class NonDeterministicOpError(RuntimeError):
    """An op with no deterministic kernel on this device ran under `trainer.deterministic=true`."""


def set_up(seed_value: int, precision: str = "float32", deterministic: bool = True) -> None:
    """A clean, seeded framework state for one run: a sweep may run several jobs in one process."""
    if TENSORFLOW:
        import tensorflow as tf
        from tensorflow.python.framework import config as tf_config  # disable_op_determinism has no public alias

        for gpu in tf.config.list_physical_devices("GPU"):  # let jobs share a GPU: memory as needed
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:  # already initialised by an earlier job in this process
                pass
        # Deterministic ops also turn XLA off (Keras refuses jit_compile under op determinism).
        if deterministic:
            tf.config.experimental.enable_op_determinism()
        else:
            tf_config.disable_op_determinism()
    # Under JAX, memory and determinism are XLA flags read when JAX starts: ablation.devices.select_backend.
    keras.backend.clear_session()
    seed(seed_value)
    keras.mixed_precision.set_global_policy(precision)


def seed(value: int) -> None:
    """`keras.utils.set_random_seed`, which under another backend would import TensorFlow (to seed tf.data) only
    because it is installed: there it is hidden for the call (a module set to None is one Python cannot import)."""
    if TENSORFLOW or "tensorflow" in sys.modules:
        keras.utils.set_random_seed(value)
        return
    sys.modules["tensorflow"] = None
    try:
        keras.utils.set_random_seed(value)
    finally:
        del sys.modules["tensorflow"]


def gradient(function: Callable, x) -> np.ndarray:
    """d function(x) / dx, for a scalar `function` of a tensor (Grad-CAM's score of a feature map)."""
    if TENSORFLOW:
        import tensorflow as tf

        x = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = function(x)
        return keras.ops.convert_to_numpy(tape.gradient(value, x))
    if NAME == "jax":
        import jax

        return np.asarray(jax.grad(function)(keras.ops.convert_to_tensor(x)))
    raise NotImplementedError(f"Grad-CAM has no gradient for the {NAME} backend (tensorflow and jax have)")


def requirements() -> list[str]:
    """The packages a saved model's MLflow environment pins: Keras and this backend's framework."""
    framework = {"tensorflow": ["tensorflow"], "jax": ["jax", "jaxlib"]}.get(NAME, [NAME])
    return [f"{name}=={importlib.metadata.version(name)}" for name in ["keras", *framework]]


def clearer_error(error: Exception) -> Exception | None:
    """A clearer error for a known framework failure, or None. TensorFlow's op determinism raises
    `UnimplementedError` for an op with no deterministic GPU kernel (segment reductions behind an AUC metric on
    some platforms, depthwise convolutions with old cuDNN); the run can only go on without determinism."""
    if TENSORFLOW:
        import tensorflow as tf

        text = str(error)
        if isinstance(error, tf.errors.UnimplementedError) and "eterministic" in text:
            reason = next(line.strip() for line in text.splitlines() if "eterministic" in line)
            op = re.search(r"\{\{node ([^}]+)\}\}|\[Op:(\w+)\]", text)
            where = f" (op {op.group(1) or op.group(2)})" if op else ""
            return NonDeterministicOpError(
                f"{reason}{where}: this device has no deterministic kernel for an op the run needs; train with "
                "trainer.deterministic=false (the same seed may then give slightly different metrics)"
            )
    return None
