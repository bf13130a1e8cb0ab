"""Run by tests/test_backends.py in a fresh interpreter under another Keras backend (KERAS_BACKEND=jax):
python tests/backend_probe.py MODEL_FILE IMAGES.npy PARAMETERS.npz AUGMENTATION.json OUT_DIR

Writes into OUT_DIR: logits.npy (the saved model's logits for the images, loaded in safe mode), augmented.npy
(the augmentation config applied to the images with the given per-image parameters) and probe.json (the backend,
and whether TensorFlow was ever imported).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import keras
import numpy as np
from omegaconf import OmegaConf

from ablation.models import network_of
from ablation.pipeline import Augmentation

model_file, images_file, parameters_file, augmentation_file, out = sys.argv[1:]
out = Path(out)
images = np.load(images_file)
network = network_of(keras.models.load_model(model_file, safe_mode=True, compile=False))
np.save(out / "logits.npy", keras.ops.convert_to_numpy(network(images, training=False)))
with np.load(parameters_file) as stored:
    parameters = {key: keras.ops.convert_to_tensor(stored[key]) for key in stored.files}
augmentation = Augmentation(OmegaConf.create(json.loads(Path(augmentation_file).read_text())))
np.save(out / "augmented.npy", keras.ops.convert_to_numpy(augmentation.apply(images, parameters)))
(out / "probe.json").write_text(
    json.dumps({"backend": keras.backend.backend(), "tensorflow_imported": "tensorflow" in sys.modules})
)
