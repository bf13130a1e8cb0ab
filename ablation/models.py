"""The networks a run can train: `python -m ablation model=cnn|resnet18|resnet50`.

Every builder takes float32 images in [0, 255] of shape (H, W, C), C = 1 or 3, and returns a model
whose output is one float32 logit per image, shape (batch, 1); the loss applies the sigmoid
(`from_logits=True`). The last convolutional feature map comes out of a layer named `features`, which
Grad-CAM finds with `model.get_layer("features")`.

The two ablation switches act on every network alike: `batchnorm=False` removes every
BatchNormalization layer, and `dropout=0` removes every Dropout layer (any other value is the rate of
each of them). Where dropout sits:

- `cnn`: after the 128- and 256-filter convolution blocks, as in the reference notebook, and at the end
  of each dense block, Dense(relu) -> BN -> Dropout. With the notebook's Dropout -> BN, the BN's moving
  variance is learnt on dropped-out activations and is wrong at inference, when dropout is off: the
  "variance shift" of Li et al. 2019 (arXiv:1801.05134). Dropout after the BN keeps each block's own
  BN clean. The next block's BN still sees that dropout through a Dense layer, a smaller shift that
  only removing the inner dropouts would avoid; we keep them to stay close to the notebook.
- `resnet18`, `resnet50`: only between global average pooling and the final Dense, after every BN.
  Inside a residual branch dropout would precede the next BN and cause the same shift; He et al. 2016
  use no dropout at all and rely on BN's regularisation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
from keras import layers

from ablation import geometry
from ablation.config import ModelName, Stem

# Keras' ResNets use this epsilon; matching it keeps our ResNet-50 numerically comparable to theirs.
BN_EPSILON = 1.001e-5
# Keras' default moving-average momentum (0.99) needs thousands of steps before the inference
# statistics settle; a quick CPU run has a few hundred, and its validation predictions collapse to one
# class. 0.9 (PyTorch's default) settles in tens of steps.
BN_MOMENTUM = 0.9


def _batchnorm(x, name: str, epsilon: float = 1e-3):
    return layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=epsilon, name=name)(x)


def build_model(
    name: str,
    input_shape: tuple[int, int, int],
    dropout: float,
    batchnorm: bool,
    stem: str = Stem.imagenet,
    input_norm: str = "fixed",
    width: float = 1.0,
    crop: Sequence[float] = (),
) -> keras.Model:
    """The network `name` for images of `input_shape`; refuses unknown names and too-small images."""
    geometry.check(name, input_shape, stem, width, crop)
    if name == ModelName.cnn:
        return build_cnn(input_shape, dropout, batchnorm, input_norm, crop)
    return MODELS[ModelName(name)](
        input_shape, dropout, batchnorm, stem=stem, input_norm=input_norm, width=width, crop=crop
    )


PROBABILITY = "pneumonia_probability"  # the layer a probability model (`with_probability`) ends in


def with_probability(network: keras.Model) -> keras.Model:
    """`network` (raw pixels in, the pneumonia logit out) with a sigmoid after it: what a run's MLflow model
    and predict give. Safe mode loads it: an Activation by name, no code."""
    inputs = keras.Input(shape=network.input_shape[1:], name="image")
    probability = layers.Activation("sigmoid", dtype="float32", name=PROBABILITY)(network(inputs))
    return keras.Model(inputs, probability, name=f"{network.name}_probability")


TTA_AVERAGE = "tta_average"  # the layer a test-time-stretch model (`with_tta`) ends in


def _stretched(inputs, factor: float, name: str):
    """`inputs` with their content `factor` times as wide about the centre, same size: cropped at the sides when
    wider, black at the sides when narrower (as the aspect probe, `ablation.stretch.stretch_width`, does)."""
    height, width = inputs.shape[1:3]
    stretched_width = max(1, round(width * factor))
    x = layers.Resizing(height, stretched_width, interpolation="bilinear", name=f"{name}_resize")(inputs)
    excess = stretched_width - width
    sides = ((0, 0), (abs(excess) // 2, abs(excess) - abs(excess) // 2))
    if excess > 0:
        return layers.Cropping2D(sides, name=f"{name}_crop")(x)
    return layers.ZeroPadding2D(sides, name=f"{name}_pad")(x) if excess < 0 else x


def with_tta(network: keras.Model, widths: Sequence[float]) -> keras.Model:
    """`network` with test-time stretches (`trainer.tta_widths`): its logit averaged over the image stretched to
    each width factor. The training's aspect stretch makes the model read the chest's content at any apparent width;
    averaging over widths takes what is left of the squash cue (docs/results.md) out of a single prediction.
    Built from Keras' own layers only, so safe mode loads the saved model."""
    if len(widths) < 2:
        raise ValueError(f"test-time stretches need at least two width factors, got {list(widths)}")
    inputs = keras.Input(shape=network.input_shape[1:], name="image")
    logits = [
        network(inputs if factor == 1 else _stretched(inputs, factor, f"width_{i}")) for i, factor in enumerate(widths)
    ]
    average = layers.Average(dtype="float32", name=TTA_AVERAGE)(logits)
    return keras.Model(inputs, average, name=f"{network.name}_tta")


def _nested(model: keras.Model) -> keras.Model:
    return next(layer for layer in model.layers if isinstance(layer, keras.Model))


def network_of(model: keras.Model) -> keras.Model:
    """The logit model inside a probability model (`with_probability`), test-time stretches included; any other
    model as it is."""
    return _nested(model) if model.layers[-1].name == PROBABILITY else model


def bare_network(model: keras.Model) -> keras.Model:
    """The trained network itself, without a probability or test-time-stretch wrapper: what Grad-CAM looks into."""
    model = network_of(model)
    return _nested(model) if model.layers[-1].name == TTA_AVERAGE else model


CROP = "crop"  # the layer that cuts a network's input to the lung field (`model.crop`)


def _inputs(
    input_shape: tuple[int, int, int], input_norm: str = "fixed", crop: Sequence[float] = ()
) -> tuple[keras.KerasTensor, ...]:
    """The input, cut to the lung field (`model.crop`), and its normalised pixels (`model.input_norm`): divided by
    255, or, `per_image`, each image to mean 0 and variance 1, so that exposure and contrast, which differ between
    machines and splits, carry no signal."""
    inputs = keras.Input(shape=input_shape, name="image")
    # Cropping and normalising inside the model, so that a saved model takes the same raw pixels the data module
    # yields, and the augmentation, which runs before the model, works on the whole image.
    x = layers.Cropping2D(geometry.crop_pixels(input_shape, crop), name=CROP)(inputs) if crop else inputs
    x = layers.Rescaling(1 / 255, name="rescale")(x)
    if input_norm == "per_image":
        x = layers.LayerNormalization(axis=(1, 2, 3), center=False, scale=False, epsilon=1e-6, name="per_image")(x)
    return inputs, x


def _dropout(x, rate: float, name: str):
    return layers.Dropout(rate, name=name)(x) if rate > 0 else x


def _logit(x):
    # float32 even under a mixed-precision policy: the loss and the sigmoid need the full range.
    return layers.Dense(1, dtype="float32", name="logit")(x)


def build_cnn(
    input_shape: tuple[int, int, int],
    dropout: float,
    batchnorm: bool,
    input_norm: str = "fixed",
    crop: Sequence[float] = (),
) -> keras.Model:
    """The reference Kaggle notebook's network, with dropout after BN in the dense blocks.

    BN follows a ReLU here, so unlike in the ResNets the preceding layer's bias is not redundant and
    every layer keeps it, with or without BN.
    """
    inputs, x = _inputs(input_shape, input_norm, crop)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="stem_conv1")(x)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="stem_conv2")(x)
    x = layers.MaxPooling2D(name="stem_pool")(x)
    for i, filters in enumerate((32, 64, 128, 256), start=1):
        name = f"conv{i}"
        x = layers.SeparableConv2D(filters, 3, padding="same", activation="relu", name=f"{name}_sep1")(x)
        x = layers.SeparableConv2D(filters, 3, padding="same", activation="relu", name=f"{name}_sep2")(x)
        if batchnorm:
            x = _batchnorm(x, f"{name}_bn")
        if filters == 256:
            # Before the pooling, like VGG's conv5_3 in the Grad-CAM paper: twice the resolution.
            x = layers.Identity(name="features")(x)
        x = layers.MaxPooling2D(name=f"{name}_pool")(x)
        if filters >= 128:
            x = _dropout(x, dropout, f"{name}_dropout")
    x = layers.Flatten(name="flatten")(x)
    for units in (512, 128, 64):
        name = f"dense{units}"
        x = layers.Dense(units, activation="relu", name=name)(x)
        if batchnorm:
            x = _batchnorm(x, f"{name}_bn")
        x = _dropout(x, dropout, f"{name}_dropout")
    return keras.Model(inputs, _logit(x), name="cnn")


def _conv_bn(x, filters: int, kernel: int, strides: int, batchnorm: bool, name: str, bn_name: str):
    # A bias before BN is cancelled by BN's mean subtraction; without BN it is the layer's only offset.
    padding = "same" if kernel > 1 else "valid"
    x = layers.Conv2D(filters, kernel, strides=strides, padding=padding, use_bias=not batchnorm, name=name)(x)
    if batchnorm:
        x = _batchnorm(x, bn_name, BN_EPSILON)
    return x


def _shortcut(x, filters: int, strides: int, batchnorm: bool, name: str):
    if strides == 1 and x.shape[-1] == filters:
        return x
    return _conv_bn(x, filters, 1, strides, batchnorm, f"{name}_proj_conv", f"{name}_proj_bn")


def basic_block(x, filters: int, strides: int, batchnorm: bool, name: str):
    """ResNet-18/34 block: 3x3 conv, BN, ReLU, 3x3 conv, BN, add the shortcut, ReLU."""
    shortcut = _shortcut(x, filters, strides, batchnorm, name)
    x = _conv_bn(x, filters, 3, strides, batchnorm, f"{name}_conv1", f"{name}_bn1")
    x = layers.ReLU(name=f"{name}_relu1")(x)
    x = _conv_bn(x, filters, 3, 1, batchnorm, f"{name}_conv2", f"{name}_bn2")
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.ReLU(name=f"{name}_out")(x)


def bottleneck_block(x, filters: int, strides: int, batchnorm: bool, name: str):
    """ResNet-50 block: 1x1 reduce, 3x3, 1x1 expand to 4 * `filters`, add the shortcut, ReLU.

    The stride sits on the first 1x1 conv, as in keras.applications.ResNet50 (the original v1 paper);
    torchvision's "v1.5" strides the 3x3 instead, which costs more compute and gains some accuracy.
    """
    shortcut = _shortcut(x, 4 * filters, strides, batchnorm, name)
    x = _conv_bn(x, filters, 1, strides, batchnorm, f"{name}_conv1", f"{name}_bn1")
    x = layers.ReLU(name=f"{name}_relu1")(x)
    x = _conv_bn(x, filters, 3, 1, batchnorm, f"{name}_conv2", f"{name}_bn2")
    x = layers.ReLU(name=f"{name}_relu2")(x)
    x = _conv_bn(x, 4 * filters, 1, 1, batchnorm, f"{name}_conv3", f"{name}_bn3")
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.ReLU(name=f"{name}_out")(x)


def stage(x, block: Callable, filters: int, blocks: int, strides: int, batchnorm: bool, name: str):
    """`blocks` residual blocks; only the first one downsamples (by `strides`) and widens."""
    for i in range(1, blocks + 1):
        x = block(x, filters, strides if i == 1 else 1, batchnorm, f"{name}_block{i}")
    return x


def _resnet_stem(x, batchnorm: bool, stem: str = Stem.imagenet, filters: int = 64):
    if stem == "small":
        x = layers.Conv2D(filters, 3, padding="same", use_bias=not batchnorm, name="stem_conv")(x)
        if batchnorm:
            x = _batchnorm(x, "stem_bn", BN_EPSILON)
        return layers.ReLU(name="stem_relu")(x)
    # Explicit zero padding and unpadded layers, exactly as keras.applications.ResNet50.
    x = layers.ZeroPadding2D(3, name="stem_pad")(x)
    x = layers.Conv2D(filters, 7, strides=2, use_bias=not batchnorm, name="stem_conv")(x)
    if batchnorm:
        x = _batchnorm(x, "stem_bn", BN_EPSILON)
    x = layers.ReLU(name="stem_relu")(x)
    x = layers.ZeroPadding2D(1, name="stem_pool_pad")(x)
    return layers.MaxPooling2D(3, strides=2, name="stem_pool")(x)


def _resnet(
    name: str,
    block: Callable,
    stage_blocks: tuple[int, ...],
    input_shape: tuple[int, int, int],
    dropout: float,
    batchnorm: bool,
    stem: str = Stem.imagenet,
    input_norm: str = "fixed",
    width: float = 1.0,
    crop: Sequence[float] = (),
) -> keras.Model:
    # `width` scales every layer's filters (`model.width`): a convolution's cost goes with its square.
    widths = [max(1, round(filters * width)) for filters in (64, 64, 128, 256, 512)]
    inputs, x = _inputs(input_shape, input_norm, crop)
    x = _resnet_stem(x, batchnorm, stem, widths[0])
    for i, (filters, blocks) in enumerate(zip(widths[1:], stage_blocks, strict=True)):
        # Stages are numbered from 2 (the stem is stage 1), as in the paper and in Keras' layer names.
        x = stage(x, block, filters, blocks, 1 if i == 0 else 2, batchnorm, f"stage{i + 2}")
    x = layers.Identity(name="features")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = _dropout(x, dropout, "head_dropout")
    return keras.Model(inputs, _logit(x), name=name)


def build_resnet18(input_shape: tuple[int, int, int], dropout: float, batchnorm: bool, **options) -> keras.Model:
    """ResNet-18 (He et al. 2016): basic blocks in stages of [2, 2, 2, 2]. `options`: stem, input_norm, width, crop."""
    return _resnet("resnet18", basic_block, (2, 2, 2, 2), input_shape, dropout, batchnorm, **options)


def build_resnet50(input_shape: tuple[int, int, int], dropout: float, batchnorm: bool, **options) -> keras.Model:
    """ResNet-50 v1: bottleneck blocks in stages of [3, 4, 6, 3].

    With the ImageNet stem the backbone is keras.applications.ResNet50's, less the bias of every conv (BN cancels them).
    """
    return _resnet("resnet50", bottleneck_block, (3, 4, 6, 3), input_shape, dropout, batchnorm, **options)


MODELS: dict[ModelName, Callable[..., keras.Model]] = {
    ModelName.cnn: build_cnn,
    ModelName.resnet18: build_resnet18,
    ModelName.resnet50: build_resnet50,
}
