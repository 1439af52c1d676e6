"""effdetseg: semantic segmentation with EfficientDet (EfficientNet + BiFPN over P2–P7)."""
from .io.record import load_model, save_model
from .models import create_model, list_models
from .deploy.predictor import Predictor

__version__ = "0.1.0"

__all__ = ["create_model", "list_models", "load_model", "save_model", "Predictor", "__version__"]
