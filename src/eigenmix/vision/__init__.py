"""Vision: an offline ImageNet backbone (EfficientNet-Lite0) whose convolutions PEFT's LoRA can
wrap (``backbone.py``), image tasks (``tasks.py``), conv LoRA concept modules trained on it
(``train.py``) and heads on its features (``heads.py``); the image data readers are in
``eigenmix.data.images``."""

from eigenmix.vision.backbone import (
    FEATURE_DIM,
    IMAGE_SIZE,
    cache_dir,
    features,
    imagenet_logits,
    inputs,
    lite0_weights,
    load_efficientnet_lite0,
    plain_conv,
    plain_convs,
    preprocess,
)
from eigenmix.vision.heads import evaluate_image_adapter, fit_linear_head, image_features, load_image_adapter
from eigenmix.vision.tasks import ImageTask, class_subset, grouped, image_task, one_vs_rest, relabel
from eigenmix.vision.train import LITE0_CONVS, ImageLoraRecipe, lora_targets, train_image_adapter, train_image_module

__all__ = [
    "FEATURE_DIM",
    "IMAGE_SIZE",
    "LITE0_CONVS",
    "ImageLoraRecipe",
    "ImageTask",
    "cache_dir",
    "class_subset",
    "evaluate_image_adapter",
    "features",
    "fit_linear_head",
    "grouped",
    "image_features",
    "image_task",
    "imagenet_logits",
    "inputs",
    "lite0_weights",
    "load_efficientnet_lite0",
    "load_image_adapter",
    "lora_targets",
    "one_vs_rest",
    "plain_conv",
    "plain_convs",
    "preprocess",
    "relabel",
    "train_image_adapter",
    "train_image_module",
]
