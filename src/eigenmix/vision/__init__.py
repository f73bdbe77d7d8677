"""Vision: an offline ImageNet backbone (EfficientNet-Lite0) whose convolutions PEFT's LoRA can
wrap; the image data readers are in ``eigenmix.data.images``."""

from eigenmix.vision.backbone import (
    FEATURE_DIM,
    IMAGE_SIZE,
    cache_dir,
    features,
    imagenet_logits,
    lite0_weights,
    load_efficientnet_lite0,
    plain_conv,
    plain_convs,
    preprocess,
)

__all__ = [
    "FEATURE_DIM",
    "IMAGE_SIZE",
    "cache_dir",
    "features",
    "imagenet_logits",
    "lite0_weights",
    "load_efficientnet_lite0",
    "plain_conv",
    "plain_convs",
    "preprocess",
]
