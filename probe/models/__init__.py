"""Reference inpainting models, the registry (``list_models``, ``create_model``), checkpoints
(``load_model``, ``save_checkpoint``, model cards) and model sources (``resolve_model``).

Every model follows one calling convention: ``model(image, hole, sketch=None) -> image`` with
``image`` ``[B, 3, H, W]`` in [0, 1] and ``hole`` ``[B, 1, H, W]`` (1 = hole). ``model.accepts_sketch``
says whether a sketch may be given.

Public architectures loaded from their published checkpoints live beside the reference models
but outside the registry (they have no ``width``/``image_size`` config and no observable layers
of our own): :mod:`.ported.deepfillv2` (nipponjo/deepfillv2-pytorch, ``--model deepfillv2:PATH``) and
:mod:`.ported.pconv_unet` (naoto0804/pytorch-inpainting-with-partial-conv, ``--model pconv-unet:PATH``).
"""
from . import gated, pconv  # noqa: F401  (registers the variants)
from .checkpoints import load_model, read_card, save_checkpoint
from .ported import deepfillv2, pconv_unet  # noqa: F401  (public architectures: registers their layer adapters)
from .registry import create_model, list_models, model_config, model_spec, register_model
from .sources import resolve_model

__all__ = ["create_model", "list_models", "load_model", "model_config", "model_spec", "read_card", "register_model",
           "resolve_model", "save_checkpoint"]
