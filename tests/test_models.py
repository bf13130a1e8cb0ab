"""The networks of `ablation.models`: shapes, switches, parameter counts, refusals, training, saving.

About two minutes on 2 CPU cores, most of it tracing the training graphs. Only the ResNets' training
tests come near or over 20 s (ResNet-18 15-25 s, ResNet-50 35-40 s) and are marked slow.
"""

from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import ROUND_OFF, backbone
from keras import layers

from ablation.data import load_data
from ablation.geometry import cropped_shape, min_image_size
from ablation.models import (
    MODELS,
    bare_network,
    build_model,
    network_of,
    with_probability,
    with_tta,
)
from ablation.stretch import stretch_width

DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared/data/chest_xray"
SHAPE = (64, 64, 1)


def of_kind(model: keras.Model, kind: type) -> list:
    return [layer for layer in model.layers if isinstance(layer, kind)]


def count(model: keras.Model, kind: type) -> int:
    return len(of_kind(model, kind))


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> tuple[np.ndarray, np.ndarray]:
    """32 real training images (16 per class) at 64 px, as float32 pixels in [0, 255] and (n, 1) labels."""
    data = load_data(
        DATA_ROOT,
        image_size=64,
        val_fraction=0.1,
        seed=0,
        cache_dir=tmp_path_factory.mktemp("cache"),
        max_train_per_class=16,
    )
    return data.train.images.astype("float32"), data.train.labels.reshape(-1, 1).astype("float32")


@pytest.mark.parametrize("batchnorm", [True, False])
@pytest.mark.parametrize("dropout", [0.0, 0.5])
@pytest.mark.parametrize("name", list(MODELS))
def test_one_float32_logit_per_image(name, dropout, batchnorm):
    model = build_model(name, SHAPE, dropout, batchnorm)
    images = np.random.default_rng(0).uniform(0, 255, (2, *SHAPE)).astype("float32")
    for training in (False, True):
        logits = model(images, training=training)
        assert tuple(logits.shape) == (2, 1)
        assert logits.dtype == "float32"
        assert np.all(np.isfinite(keras.ops.convert_to_numpy(logits)))
    assert isinstance(model.layers[1], layers.Rescaling)
    assert model.get_layer("features").output.ndim == 4


@pytest.mark.parametrize("name", list(MODELS))
def test_switches_remove_or_set_every_layer(name):
    full = build_model(name, SHAPE, dropout=0.3, batchnorm=True)
    assert count(full, layers.BatchNormalization) > 0
    assert count(full, layers.Dropout) > 0
    assert {layer.rate for layer in of_kind(full, layers.Dropout)} == {0.3}
    bare = build_model(name, SHAPE, dropout=0.0, batchnorm=False)
    assert count(bare, layers.BatchNormalization) == 0
    assert count(bare, layers.Dropout) == 0


def test_resnet_dropout_only_before_the_logit():
    for name in ("resnet18", "resnet50"):
        model = build_model(name, SHAPE, dropout=0.5, batchnorm=True)
        assert [layer.name for layer in of_kind(model, layers.Dropout)] == ["head_dropout"]


def test_convs_drop_the_bias_only_before_batchnorm():
    for name in ("resnet18", "resnet50"):
        for batchnorm in (True, False):
            convs = of_kind(build_model(name, SHAPE, 0.0, batchnorm), layers.Conv2D)
            assert {conv.use_bias for conv in convs} == {not batchnorm}


@pytest.mark.parametrize(("name", "adds"), [("cnn", 0), ("resnet18", 8), ("resnet50", 16)])
def test_residual_additions(name, adds):
    assert count(build_model(name, SHAPE, 0.0, True), layers.Add) == adds


def test_resnet18_parameter_count():
    # torchvision's ResNet-18 without its 1000-way fc has 11,176,512 trainable parameters; Keras also
    # counts BN's moving mean and variance (2 x 4,800 BN channels), and our head is Dense(1): 513.
    model = build_model("resnet18", (224, 224, 3), dropout=0.5, batchnorm=True)
    assert model.count_params() == 11_176_512 + 9_600 + 513 == 11_186_625
    assert abs(model.count_params() - 11.2e6) / 11.2e6 < 0.02


@pytest.mark.parametrize("channels", [1, 3])
def test_resnet50_backbone_is_keras_minus_the_conv_biases_bn_cancels(channels):
    shape = (64, 64, channels)
    reference = keras.applications.ResNet50(include_top=False, weights=None, input_shape=shape)
    ours = backbone(build_model("resnet50", shape, dropout=0.5, batchnorm=True))
    # Every Conv2D in Keras' ResNet-50 is followed by a BatchNormalization and keeps a bias; we drop it.
    convs = of_kind(reference, layers.Conv2D)
    assert all(conv.use_bias for conv in convs)
    biases = sum(conv.filters for conv in convs)
    assert biases == 26_560
    assert ours.count_params() == reference.count_params() - biases
    assert ours.output.shape == reference.output.shape
    expected = {3: 23_561_152, 1: 23_554_880}[channels]  # Keras: 23,587,712 and 23,581,440
    assert ours.count_params() == expected


@pytest.mark.parametrize("name", list(MODELS))
def test_refuses_an_image_smaller_than_the_downsampling(name):
    minimum = min_image_size(name)
    assert minimum == 32
    build_model(name, (minimum, minimum, 1), 0.0, True)
    small = minimum // 2
    message = rf"data\.image_size={small} is not allowed: an int >= {minimum} for {name} with model.stem=imagenet"
    with pytest.raises(ValueError, match=message):
        build_model(name, (small, small, 1), 0.0, True)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_the_small_input_stem_keeps_the_resolution_for_the_stages(name):
    """`model.stem=small`: one 3x3 stride-1 convolution and no pool, so at 64 px the last stage's map is 8x8, not
    2x2; the stages themselves are unchanged, and the network then takes images down to 8 px."""
    imagenet, small = (backbone(build_model(name, SHAPE, 0.0, True, stem)) for stem in ("imagenet", "small"))
    assert imagenet.output_shape[1:3] == (2, 2) and small.output_shape[1:3] == (8, 8)
    assert small.output_shape[-1] == imagenet.output_shape[-1]
    stem_conv = small.get_layer("stem_conv")
    assert stem_conv.kernel_size == (3, 3) and stem_conv.strides == (1, 1)
    assert not [layer for layer in small.layers if layer.name.startswith("stem_pool")]
    assert min_image_size(name, "small") == 8
    build_model(name, (8, 8, 1), 0.0, True, "small")


def test_the_cnn_has_no_stem_to_change():
    with pytest.raises(ValueError, match=r"model\.stem='small' is not allowed: imagenet for the cnn"):
        build_model("cnn", SHAPE, 0.0, True, "small")


def test_refuses_an_unknown_model():
    with pytest.raises(ValueError, match=r"model='vgg16' is not allowed: one of cnn, resnet18, resnet50"):
        build_model("vgg16", SHAPE, 0.0, True)
    with pytest.raises(ValueError, match="model='vgg16' is not allowed"):
        min_image_size("vgg16")


# ResNet-50 is left out (a minute on 2 cores): its blocks are checked against Keras' own ResNet50 above.
@pytest.mark.parametrize("name", ["cnn", pytest.param("resnet18", marks=pytest.mark.slow)])
def test_training_steps_on_real_images_lower_the_loss(name, batch):
    images, labels = batch
    keras.utils.set_random_seed(0)
    # No dropout: the test is about the gradient reaching every weight, not about the noise.
    model = build_model(name, SHAPE, dropout=0.0, batchnorm=True)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.BinaryCrossentropy(from_logits=True))
    # Each call returns the loss of the weights it starts from, so the first and the last loss compare
    # the untrained model with the one five updates later, on the same batch in training mode.
    losses = [float(model.train_on_batch(images, labels)) for _ in range(6)]
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("name", ["cnn", "resnet18", pytest.param("resnet50", marks=pytest.mark.slow)])
def test_saved_model_loads_safely_and_predicts_the_same(name, batch, tmp_path):
    images, _ = batch
    model = build_model(name, SHAPE, dropout=0.5, batchnorm=True)
    model(images, training=True)  # moves the BN statistics off their initial values, so they must be saved
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_allclose(
        loaded.predict(images[:8], verbose=0), model.predict(images[:8], verbose=0), rtol=ROUND_OFF, atol=ROUND_OFF
    )


def test_test_time_stretches_average_the_logits_of_the_stretched_images_and_save_safely(batch, tmp_path):
    images, _ = batch
    model = build_model("resnet18", SHAPE, dropout=0.0, batchnorm=True)
    model(images, training=True)
    widths = [0.85, 1.0, 1.15]
    tta = with_tta(model, widths)
    # An independent computation: each image stretched by the aspect probe's Pillow resampling, then averaged.
    pixels = images[..., 0].astype(np.uint8)
    stretched = [np.stack([stretch_width(image, w) for image in pixels])[..., None].astype(np.float32) for w in widths]
    expected = np.mean([model.predict(batch, verbose=0) for batch in stretched], axis=0)
    got = tta.predict(images, verbose=0)
    plain = model.predict(images, verbose=0)
    # Keras' bilinear resize and Pillow's differ by a fraction of a grey level; the stretches move the logits far more
    assert np.abs(got - expected).max() < 0.1 * np.abs(got - plain).max()

    path = tmp_path / "tta.keras"
    with_probability(tta).save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_allclose(
        network_of(loaded).predict(images[:8], verbose=0), got[:8], rtol=ROUND_OFF, atol=ROUND_OFF
    )
    assert bare_network(loaded).get_layer("features") is not None  # Grad-CAM finds the network inside
    with pytest.raises(ValueError, match="at least two width factors"):
        with_tta(model, [1.1])


def test_per_image_input_norm_takes_exposure_and_contrast_out_of_the_prediction(batch):
    images, _ = batch
    exposed = images * 0.7 + 40  # a dimmer, flatter exposure of the same X-rays, still in [0, 255]
    for input_norm, invariant in (("fixed", False), ("per_image", True)):
        model = build_model("resnet18", SHAPE, dropout=0.0, batchnorm=True, input_norm=input_norm)
        model(images, training=True)
        plain, changed = model.predict(images, verbose=0), model.predict(exposed, verbose=0)
        assert np.allclose(plain, changed, atol=1e-4) == invariant, input_norm


def test_width_scales_every_resnet_layer_and_the_cnn_refuses_it():
    full = build_model("resnet18", SHAPE, dropout=0.0, batchnorm=True)
    half = build_model("resnet18", SHAPE, dropout=0.0, batchnorm=True, width=0.5)
    assert [c.filters // 2 for c in of_kind(full, layers.Conv2D)] == [c.filters for c in of_kind(half, layers.Conv2D)]
    assert half.get_layer("features").output.shape[-1] == 256
    with pytest.raises(ValueError, match="model.width=0.5 is not allowed: 1 for the cnn"):
        build_model("cnn", SHAPE, dropout=0.0, batchnorm=True, width=0.5)


def test_the_lung_crop_feeds_the_network_the_cut_image_and_saves_safely(batch, tmp_path):
    images, _ = batch
    crop = [0.125, 0.25, 0.0625, 0.0625]  # 8, 16, 4 and 4 of 64 px
    cropping = build_model("resnet18", SHAPE, dropout=0.0, batchnorm=True, crop=crop)
    assert cropped_shape(SHAPE, crop) == (40, 56, 1)
    # An independent computation: the same weights in a network without the crop, fed the cut images.
    plain = build_model("resnet18", (40, 56, 1), dropout=0.0, batchnorm=True)
    plain.set_weights(cropping.get_weights())
    expected = plain.predict(images[:, 8:-16, 4:-4], verbose=0)
    np.testing.assert_allclose(cropping.predict(images, verbose=0), expected, rtol=ROUND_OFF, atol=ROUND_OFF)

    path = tmp_path / "cropped.keras"
    with_probability(cropping).save(path)
    loaded = network_of(keras.models.load_model(path, safe_mode=True))
    np.testing.assert_allclose(loaded.predict(images[:8], verbose=0), expected[:8], rtol=ROUND_OFF, atol=ROUND_OFF)
    with pytest.raises(ValueError, match=r"image_size=48 is not allowed: .* \(it leaves 24 px\)"):
        build_model("resnet50", (48, 48, 1), dropout=0.0, batchnorm=True, crop=[0.25, 0.25, 0, 0])
