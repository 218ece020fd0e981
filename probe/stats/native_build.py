"""Building and loading the C++ statistics kernel (``native_kernel.cpp``) of :mod:`probe.stats.native`.

The kernel is compiled with :func:`torch.utils.cpp_extension.load` (cached in torch's extension
folder, keyed by a hash of the source, the flags and the torch version) the first time a process
asks for it, and loaded from that cache afterwards.
"""
from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("native_kernel.cpp")
CFLAGS = ("-O3", "-ffp-contract=off", "-fopenmp")  # no FMA contraction; OpenMP for at::parallel_for
LDFLAGS = ("-fopenmp",)  # resolves to the libgomp torch has loaded already: one thread pool
_lock = threading.Lock()
_state: dict = {"tried": False, "module": None, "build_s": None}


def _build():
    """Compile (or load the cached build of) the kernel; raises whatever goes wrong."""
    from torch.utils import cpp_extension

    key = SOURCE.read_bytes() + repr((CFLAGS, LDFLAGS, torch.__version__)).encode()
    name = "gateprobe_stats_" + hashlib.sha256(key).hexdigest()[:12]
    old_path = os.environ.get("PATH", "")
    try:  # the ninja of the `ninja` package (a dependency) first, activated virtualenv or not: ninjas of
        import ninja  # other versions read each other's build logs as stale, and would rebuild each time

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + old_path
    except ImportError:
        pass
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():  # e.g. the compiler-ABI notice: quiet unless it fails
            warnings.simplefilter("ignore")
            module = cpp_extension.load(name=name, sources=[str(SOURCE)], extra_cflags=list(CFLAGS),
                                        extra_ldflags=list(LDFLAGS), verbose=False)
    finally:
        os.environ["PATH"] = old_path
    _state["build_s"] = time.perf_counter() - start
    return module


def kernel_module():
    """The loaded extension, built once per process; None (after one line on stderr) if it cannot be."""
    if not _state["tried"]:
        with _lock:
            if not _state["tried"]:
                try:
                    _state["module"] = _build()
                except Exception as exc:  # no compiler, no ninja, a compile error...: the torch path
                    lines = str(exc).strip().splitlines() or [type(exc).__name__]
                    reason = next((ln for ln in lines if "error:" in ln), lines[0]).strip()
                    print(f"gateprobe: C++ statistics kernel unavailable ({reason[:200]}); "
                          "using the pure-torch path", file=sys.stderr)
                _state["tried"] = True
    return _state["module"]


def _reset() -> None:
    """Forget the loaded extension (tests): the next use builds or loads it again."""
    with _lock:
        _state.update(tried=False, module=None, build_s=None)


def native_available() -> bool:
    """Whether the C++ kernel can be used (builds it on first call unless ``GATEPROBE_NATIVE=0``)."""
    if os.environ.get("GATEPROBE_NATIVE", "").strip() == "0":
        return False
    return kernel_module() is not None


def build_seconds() -> float | None:
    """Seconds the first :func:`native_available` of this process spent building or loading the kernel."""
    return _state["build_s"]


def path(device: torch.device | str | None = None) -> str:
    """``"native"`` or ``"torch"``: the path :func:`accumulate_gate_batch` takes for tensors on ``device``."""
    device = torch.device("cpu" if device is None else device)
    return "native" if device.type == "cpu" and native_available() else "torch"
