"""The model zoo. Importing this package registers every variant."""
from . import efficientdet_seg, unet, classifier  # noqa: F401,I001  (registration order = listing order)
from .efficientdet_seg import EfficientDetSeg, EfficientDetSegConfig, scaled_config
from .registry import create_model, is_model, list_models, model_family
from .unet import UNet

__all__ = [
    "create_model",
    "list_models",
    "is_model",
    "model_family",
    "EfficientDetSeg",
    "EfficientDetSegConfig",
    "scaled_config",
    "UNet",
]
