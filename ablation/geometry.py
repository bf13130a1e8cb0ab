"""What a network's shape allows, without Keras: the smallest image each network takes and what `model.crop`
leaves of an image. `ablation.validate` refuses a configuration with it before anything trains, and
`ablation.models` builds with it, so the two never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence

from ablation.config import ModelName, Stem

# Stride-2 steps (pooling or strided conv) of each network. A step needs at least 2 pixels to
# downsample: the cnn's unpadded max-pools fail on fewer, and the ResNets' padded layers would turn a
# 1-pixel map into a 1-pixel map, downsampling nothing. Hence the minimum side is 2**steps.
DOWNSAMPLING_STEPS = {ModelName.cnn: 5, ModelName.resnet18: 5, ModelName.resnet50: 5}
# The ResNets' stems (`model.stem`): ImageNet's 7x7 stride-2 convolution and 3x3 stride-2 max-pool, or the small-input
# stem of the CIFAR and MedMNIST ResNets, one 3x3 stride-1 convolution and no pool: it saves the first two steps.
SMALL_STEM_SAVES = 2


class GeometryError(ValueError):
    """A network that cannot be built as asked; the message names the config key."""


def model_name(name: str, stem: str = Stem.imagenet) -> ModelName:
    """`name` as a network, refusing an unknown one and a stem the network does not have."""
    try:
        model = ModelName(name)
    except ValueError:
        raise GeometryError(f"model={name!r} is not allowed: one of {', '.join(ModelName)}") from None
    if stem not in tuple(Stem) or (stem != Stem.imagenet and model == ModelName.cnn):
        allowed = "imagenet for the cnn (it has no stem to change)" if model == ModelName.cnn else " or ".join(Stem)
        raise GeometryError(f"model.stem={stem!r} is not allowed: {allowed}")
    return model


def min_image_size(name: str, stem: str = Stem.imagenet) -> int:
    """Smallest image side the network's downsampling accepts (its total stride)."""
    model = model_name(name, stem)
    return 2 ** (DOWNSAMPLING_STEPS[model] - (SMALL_STEM_SAVES if stem == Stem.small else 0))


def crop_pixels(input_shape: Sequence[int], crop: Sequence[float]) -> tuple[tuple[int, int], tuple[int, int]]:
    """`model.crop`'s fractions [top, bottom, left, right] as pixels of an image of `input_shape`, as Cropping2D
    takes them: ((top, bottom), (left, right))."""
    top, bottom, left, right = crop if crop else (0, 0, 0, 0)
    height, width = input_shape[:2]
    return (round(height * top), round(height * bottom)), (round(width * left), round(width * right))


def cropped_shape(input_shape: Sequence[int], crop: Sequence[float]) -> tuple[int, ...]:
    """The shape the network itself sees after `model.crop`."""
    (top, bottom), (left, right) = crop_pixels(input_shape, crop)
    return (input_shape[0] - top - bottom, input_shape[1] - left - right, *input_shape[2:])


def check(name: str, input_shape: Sequence[int], stem: str = Stem.imagenet, width: float = 1.0, crop=()) -> None:
    """Refuse a network its input is too small for (after the crop), or a width the cnn does not have."""
    side, minimum = min(cropped_shape(input_shape, crop)[:2]), min_image_size(name, stem)
    if side < minimum:
        cut = f", after model.crop={list(crop)} (it leaves {side} px)" if crop else ""
        raise GeometryError(
            f"data.image_size={input_shape[0]} is not allowed: an int >= {minimum} for {name} with model.stem={stem} "
            f"(its downsampling){cut}"
        )
    if name == ModelName.cnn and width != 1:
        raise GeometryError(f"model.width={width} is not allowed: 1 for the cnn (the reference notebook's widths)")
