"""Where a model comes from: a checkpoint folder, a registry name, or ``package.module:function``.

``resolve_model(spec)`` returns an ``nn.Module`` following the calling convention
``model(image, hole, sketch=None)``, with ``model.source_info`` describing it for the manifest.
Import paths are resolved with importlib and getattr only: no string is ever evaluated.

``random_init`` (``--random-init``) draws new weights with ``init_seed`` for a registry name, or
for the architecture and config that a checkpoint folder's card names (its trained weights are not
read); any other source has no architecture to draw from and is refused. The manifest then records
the registry name, config and seed, so ``analyze`` draws the same weights again.
"""
from __future__ import annotations

import importlib
import re
from pathlib import Path

from torch import nn

from ..errors import GateprobeError, ModelError, SettingsError, UserModelError
from ..rundir.files import sha256_file
from .checkpoints import card_architecture, load_model
from .registry import list_models, model_config, random_twin

IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
LOADERS: dict[str, callable] = {}  # prefix -> loader(path, **options), e.g. third-party architectures
PICKLE_LOADERS: set[str] = set()  # prefixes whose loader reads pickle-based files (torch.load)


def register_loader(prefix: str, loader, pickle: bool = True) -> None:
    """Make ``--model PREFIX:PATH`` load weights with ``loader(PATH, **options) -> nn.Module``.
    ``pickle``: the loader reads a pickle-based file (``torch.load``, even with ``weights_only=True``),
    which :func:`resolve_model` refuses unless ``trust_pickle``."""
    LOADERS[prefix] = loader
    if pickle:
        PICKLE_LOADERS.add(prefix)
    else:
        PICKLE_LOADERS.discard(prefix)


def resolve_model(spec: str, random_init: bool = False, trust_pickle: bool = False, init_seed: int = 0,
                  **options) -> nn.Module:
    """Build the model named by ``spec`` (see module docstring) in eval mode. Pickle-based weight
    files (``deepfillv2:PATH.pth``...) are read only with ``trust_pickle`` (``--trust-pickle``), and
    then only with ``torch.load(weights_only=True)``."""
    prefix, _, rest = spec.partition(":")
    path = Path(spec)
    if random_init:
        if path.is_dir():
            return _random_init(*card_architecture(path), init_seed, architecture_from=str(path))
        if spec in list_models():
            return _random_init(spec, model_config(spec), init_seed)
        raise ModelError(f"--random-init draws new weights for a registry name ({', '.join(list_models())}) or for "
                         f"the architecture of a checkpoint folder's card; --model {spec!r} is neither, so its "
                         "weights cannot be randomised: drop --random-init, or give a registry name or checkpoint")
    if prefix in LOADERS and rest:
        if not Path(rest).is_file():
            raise FileNotFoundError(f"--model {spec!r}: no such file {rest!r}")
        if prefix in PICKLE_LOADERS and not trust_pickle:
            raise ModelError(f"--model {spec!r}: {Path(rest).name} is a pickle-based PyTorch file (.pth/.pt/.ckpt), "
                             "refused unless you pass --trust-pickle (only for files from a source you trust; "
                             "it is then read with torch.load(weights_only=True))")
        model = LOADERS[prefix](rest, **options)
        model.source_info = {"name": prefix, "source": spec, "sha256": sha256_file(rest),
                             "trust_pickle": prefix in PICKLE_LOADERS}
        return model.eval()
    if path.is_dir():
        model = load_model(path)
        model.source_info = {"name": model.card["model"], "source": str(path), "sha256": model.card["sha256"],
                             "config": model.card["config"], "checkpoint": path.name,
                             "metrics": model.card.get("metrics")}
        return model
    if spec in list_models():
        raise ModelError(f"{spec!r} is a registry name, which has no trained weights; pass --random-init "
                         "to probe a randomly initialised model, or give a checkpoint folder")
    if IMPORT_PATH.match(spec):
        return _from_import_path(spec).eval()
    raise ModelError(f"--model {spec!r}: not a checkpoint folder, a registry name ({', '.join(list_models())}), "
                     f"a loader prefix ({', '.join(sorted(LOADERS)) or 'none'}) or package.module:function")


def _random_init(name: str, config: dict, seed, **provenance) -> nn.Module:
    """Registry model ``name`` with ``config`` and weights drawn with ``seed``: the random-init twin
    that ``record --with-baseline`` draws, so ``analyze`` rebuilds both the same way."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 32:
        raise SettingsError(f"--init-seed must be an integer from 0 to {2 ** 32 - 1}, not {seed!r}")
    model = random_twin(name, config, seed)
    model.source_info.update(provenance)
    return model


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _user_code(spec: str, what: str, call):
    """``call()``, running the user's code named by ``spec``: what it raises (or a ``sys.exit``)
    becomes a :class:`UserModelError` naming it, gateprobe's own errors pass through."""
    try:
        return call()
    except (GateprobeError, UserModelError):
        raise
    except SystemExit as err:
        raise UserModelError(f"--model {spec!r}: {what} called sys.exit({err.code!r}); a model module must define "
                             "its factory without exiting", spec, err) from err
    except Exception as err:  # noqa: BLE001 - the user's code: reported as theirs, traceback behind --debug
        raise UserModelError(f"--model {spec!r}: your code raised {type(err).__name__} {what}: {_first_line(err)}",
                             spec, err) from err


def _from_import_path(spec: str) -> nn.Module:
    module_name, function_name = spec.split(":")

    def load():
        try:
            return importlib.import_module(module_name)
        except ImportError as err:
            raise ModelError(f"--model {spec!r}: cannot import {module_name!r} ({_first_line(err)}); check the module "
                             "is on PYTHONPATH and its dependencies are installed") from None

    module = _user_code(spec, f"while importing {module_name!r}", load)
    factory = getattr(module, function_name, None)
    if not callable(factory):
        raise ModelError(f"--model {spec!r}: {module_name} has no callable {function_name!r}")
    model = _user_code(spec, f"in {function_name}()", factory)
    if not isinstance(model, nn.Module):
        raise ModelError(f"--model {spec!r}: {function_name}() returned {type(model).__name__}, not an nn.Module")
    model.source_info = {"name": spec, "source": spec, "sha256": None}
    return model


def _register_public_loaders() -> None:
    """``--model deepfillv2:PATH.pth`` (nipponjo/deepfillv2-pytorch, both key layouts) and
    ``--model pconv-unet:PATH.pth`` (naoto0804/pytorch-inpainting-with-partial-conv); both read
    pickle-based files, so they need ``--trust-pickle``."""
    from .ported.deepfillv2 import load_deepfillv2
    from .ported.pconv_unet import load_pconv_unet

    register_loader("deepfillv2", load_deepfillv2)
    register_loader("pconv-unet", load_pconv_unet)


_register_public_loaders()
