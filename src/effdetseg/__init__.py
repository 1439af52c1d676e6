"""effdetseg: semantic segmentation with EfficientDet (EfficientNet + BiFPN over P2–P7)."""
from ._version import __version__
from .inference.predictor import Predictor
from .inference.prepare import prepare_for_inference
from .io.build import load_model
from .io.model_files import read_record, save_model
from .io.record import ModelRecord
from .models import create_model, list_models
from .sharing.hub import from_pretrained, save_pretrained

__all__ = [
    "create_model",
    "list_models",
    "load_model",
    "save_model",
    "save_pretrained",
    "from_pretrained",
    "read_record",
    "ModelRecord",
    "Predictor",
    "prepare_for_inference",
    "__version__",
]
