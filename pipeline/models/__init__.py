"""PyTorch model layer: build, train or re-estimate, checkpoint. Imports torch lazily."""
from .zoo import build_torch_model, load_checkpoint, prepare_checkpoint

__all__ = ["build_torch_model", "load_checkpoint", "prepare_checkpoint"]
