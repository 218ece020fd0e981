"""Reference inpainting models and the registry (``list_models``, ``create_model``).

Every model follows one calling convention: ``model(image, hole, sketch=None) -> image`` with
``image`` ``[B, 3, H, W]`` in [0, 1] and ``hole`` ``[B, 1, H, W]`` (1 = hole). ``model.accepts_sketch``
says whether a sketch may be given.

Public architectures loaded from their published checkpoints live beside the reference models
but outside the registry (they have no ``width``/``image_size`` config and no observable layers
of our own): :mod:`.deepfillv2` (nipponjo/deepfillv2-pytorch, ``--model deepfillv2:PATH``) and
:mod:`.pconv_unet` (naoto0804/pytorch-inpainting-with-partial-conv, ``--model pconv-unet:PATH``).
"""
from . import gated, pconv  # noqa: F401  (registers the variants)
from . import deepfillv2, pconv_unet  # noqa: F401  (public architectures: registers their layer adapters)
from .registry import create_model, list_models, model_config, model_spec, register_model

__all__ = ["create_model", "list_models", "model_config", "model_spec", "register_model"]
