"""Reference inpainting models and the registry (``list_models``, ``create_model``).

Every model follows one calling convention: ``model(image, hole, sketch=None) -> image`` with
``image`` ``[B, 3, H, W]`` in [0, 1] and ``hole`` ``[B, 1, H, W]`` (1 = hole). ``model.accepts_sketch``
says whether a sketch may be given.
"""
from . import gated, pconv  # noqa: F401  (registers the variants)
from .registry import create_model, list_models, model_config, model_spec, register_model

__all__ = ["create_model", "list_models", "model_config", "model_spec", "register_model"]
