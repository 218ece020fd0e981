"""The errors gateprobe raises on purpose, and the line between a user's mistake and a bug.

* :class:`GateprobeError` and its subclasses: something the user can fix (bad data, a damaged
  checkpoint, a run folder that cannot be used, an impossible setting). The message is one line
  that says what is wrong and how to fix it; the CLI prints it and exits with 2. Each subclass is
  also a ``ValueError`` (``FloatingPointError`` for :class:`NumericalError`), so ``except
  ValueError`` in older scripts keeps working.
* :class:`UserModelError`: the user's own model (or a module inside it) raised while gateprobe ran
  it; the message names the module and the original exception, the CLI exits with 1 and shows the
  traceback behind ``--debug``. Raised by :func:`calling_model`.
* Anything else is a bug in gateprobe and keeps its traceback.

This module imports nothing else of gateprobe, so every room may use it.
"""
from __future__ import annotations

import os
from contextlib import contextmanager


class GateprobeError(Exception):
    """Base of the errors a user can fix; the message says what is wrong and what to do."""


class SettingsError(GateprobeError, ValueError):
    """An argument or setting out of its range (``--n``, ``--quantile``, ``--shard``...)."""


class DataError(GateprobeError, ValueError):
    """Data that cannot be read or does not follow gateprobe's item contract."""


class CheckpointError(GateprobeError, ValueError):
    """A checkpoint that cannot be used."""


class RunError(GateprobeError, ValueError):
    """A run directory that cannot be used as asked."""


class ModelError(GateprobeError, ValueError):
    """A model that gateprobe cannot use as given (no recordable layers, wrong call convention...)."""


class NumericalError(GateprobeError, FloatingPointError):
    """NaN or inf where a finite number is needed (the message names the layer)."""


class UserModelError(Exception):
    """The user's model raised while gateprobe ran it. ``module`` is the module path that raised
    (``""`` for the model itself), ``original`` the exception it raised."""

    def __init__(self, message: str, module: str, original: BaseException):
        super().__init__(message)
        self.module, self.original = module, original


_PACKAGE = os.path.dirname(os.path.abspath(__file__))
# gateprobe's own architectures and layers are model code: an error raised there is the model's
_MODEL_CODE = tuple(os.path.join(_PACKAGE, room) + os.sep for room in ("models", "layers"))


def _raised_in_gateprobe(tb) -> bool:
    """Whether gateprobe's own code (not model code) runs anywhere below the frame of the ``with``
    block in traceback ``tb``: a hook of ours that raised inside the model's forward is our bug,
    whatever torch function it called last."""
    # the first two entries: calling_model's own frame, then the frame holding the ``with`` block
    tb = tb.tb_next.tb_next if tb.tb_next is not None else None
    while tb is not None:
        path = os.path.abspath(tb.tb_frame.f_code.co_filename)
        if path.startswith(_PACKAGE + os.sep) and not path.startswith(_MODEL_CODE):
            return True
        tb = tb.tb_next
    return False


def _raising_module(tb, names: dict) -> str | None:
    """The module path of the innermost frame of ``tb`` that runs a method of a module in ``names``."""
    found = None
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if owner is not None and id(owner) in names:
            found = names[id(owner)]
        tb = tb.tb_next
    return found


@contextmanager
def calling_model(model, what: str = "forward pass"):
    """Run the block that calls ``model``; an exception raised by the model's own code becomes a
    :class:`UserModelError` naming the module that raised. gateprobe's errors, errors raised
    inside gateprobe's own hooks (bugs) and ``KeyboardInterrupt`` pass through unchanged."""
    try:
        yield
    except (GateprobeError, UserModelError):
        raise
    except (Exception, SystemExit) as err:  # noqa: BLE001 - classified below, re-raised otherwise
        if err.__traceback__ is None or _raised_in_gateprobe(err.__traceback__):
            raise
        names = {id(module): name for name, module in model.named_modules()}
        module = _raising_module(err.__traceback__, names)
        where = f"module {module!r} ({type(model.get_submodule(module)).__name__})" if module else \
            f"{type(model).__name__}"
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise UserModelError(f"your model raised {type(err).__name__} in {where} during the {what}: {first}",
                             module or "", err) from err
