"""Building and loading the C++ statistics kernel (``native_kernel.cpp``, with the per-batch work
around it in ``native_batch.cpp``) of :mod:`probe.stats.native`.

The kernel is compiled with :func:`torch.utils.cpp_extension.load` into torch's extension folder
(``TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions/py3X_cpu``), under a name keyed by a
hash of the source, its path, the flags and the torch version, and loaded from there afterwards.

When it is built:

* at install: ``make venv`` runs ``gateprobe-build-kernel`` (:func:`main`; after ``pip install -e .``,
  run it yourself; about 35 s with g++ on 2 cores, once per machine and source);
* otherwise at the first recording on the CPU that needs it: :func:`start_background_build`
  starts it in a thread before the calibration pass, with one line on stderr that says so; the
  estimate line counts the time it still needs (:func:`pending_build_seconds`) and the first
  batch waits for it. Any other first use builds it in the foreground, with the same one line.

``GATEPROBE_NATIVE=0`` never builds; a machine without a C++ compiler (or a failed build) gets one
line on stderr and the pure-torch path.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import threading
import time
import warnings
from pathlib import Path

import torch

SOURCES = (Path(__file__).with_name("native_kernel.cpp"), Path(__file__).with_name("native_batch.cpp"))
CFLAGS = ("-O3", "-ffp-contract=off", "-fopenmp")  # no FMA contraction; OpenMP for at::parallel_for
LDFLAGS = ("-fopenmp",)  # resolves to the libgomp torch has loaded already: one thread pool
BUILD_SECONDS = 50.0  # expected build time before one was timed on this machine (g++ -O3, 2-core VM: 35-55 s)
TIMES_FILE = "gateprobe_build_seconds"  # in the extension root: the last build's seconds on this machine
COMMAND = "gateprobe-build-kernel"  # console script of main() (setup.cfg)
_lock = threading.Lock()
_state: dict = {"tried": False, "module": None, "build_s": None, "said": False, "thread": None, "started": None}


# ---------------------------------------------------------------------------------------------- where
def extension_name() -> str:
    """The extension's name: a hash of the sources, their resolved paths, the flags and the torch version.

    The paths are in it because torch writes the sources' paths into the build's ``build.ninja``: two
    copies of the package (two clones) under one name would each rebuild the other's build."""
    key = b"".join(s.read_bytes() for s in SOURCES) + repr(
        ([str(s.resolve()) for s in SOURCES], CFLAGS, LDFLAGS, torch.__version__)).encode()
    return "gateprobe_stats_" + hashlib.sha256(key).hexdigest()[:12]


def extensions_root() -> Path:
    """torch's extension folder for this Python and torch build (as ``cpp_extension`` computes it; nothing created)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root:
        return Path(root)
    from torch.utils.cpp_extension import get_default_build_root

    if torch.version.hip is not None:
        accelerator = f"rocm{torch.version.hip.replace('.', '')}"
    elif torch.version.cuda is not None:
        accelerator = f"cu{torch.version.cuda.replace('.', '')}"
    else:
        accelerator = "cpu"
    python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
    return Path(get_default_build_root()) / f"{python}_{accelerator}"


def library_path() -> Path:
    """The built extension's shared library (present once built)."""
    name = extension_name()
    return extensions_root() / name / f"{name}.so"


def is_built() -> bool:
    """Whether the cached build is there and not older than any source (loading it compiles nothing)."""
    try:
        built = library_path().stat().st_mtime
        return all(built >= source.stat().st_mtime for source in SOURCES)
    except OSError:
        return False


def disabled() -> bool:
    """``GATEPROBE_NATIVE=0``: the pure-torch path, nothing built."""
    return os.environ.get("GATEPROBE_NATIVE", "").strip() == "0"


def compiler() -> str | None:
    """The C++ compiler torch would call (``$CXX``, else ``c++``), or None when there is none."""
    return shutil.which(os.environ.get("CXX", "").strip() or "c++")


def expected_build_seconds() -> float:
    """Seconds a build should take: the last build timed on this machine, else :data:`BUILD_SECONDS`."""
    try:
        seconds = float((extensions_root() / TIMES_FILE).read_text().strip())
        if 0 < seconds < 24 * 3600:
            return seconds
    except (OSError, ValueError):
        pass
    return BUILD_SECONDS


def _remember_build_seconds(seconds: float) -> None:
    try:
        (extensions_root() / TIMES_FILE).write_text(f"{seconds:.1f}\n")
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------- build
STALE_LOCK_SECONDS = 600.0  # a build takes about a minute: a lock this old was left by one that was killed


def clear_stale_lock() -> bool:
    """Remove the ``lock`` file that a killed build left in the kernel's build folder, once it is
    ``STALE_LOCK_SECONDS`` old (torch's loader would wait on it forever, saying nothing), with one
    line on stderr. Returns whether one was removed."""
    lock = extensions_root() / extension_name() / "lock"
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return False
    if age < STALE_LOCK_SECONDS:
        return False
    lock.unlink(missing_ok=True)
    print(f"gateprobe: removed {lock}, left {age / 60:.0f} min ago by a kernel build that did not finish",
          file=sys.stderr, flush=True)
    return True


def _build():
    """Compile (or load the cached build of) the kernel; raises whatever goes wrong."""
    from torch.utils import cpp_extension

    old_path = os.environ.get("PATH", "")
    try:  # the ninja of the `ninja` package (a dependency) first, activated virtualenv or not: ninjas of
        import ninja  # other versions read each other's build logs as stale, and would rebuild each time

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + old_path
    except ImportError:
        pass
    clear_stale_lock()
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():  # e.g. the compiler-ABI notice: quiet unless it fails
            warnings.simplefilter("ignore")
            module = cpp_extension.load(name=extension_name(), sources=[str(s) for s in SOURCES], extra_cflags=list(CFLAGS),
                                        extra_ldflags=list(LDFLAGS), verbose=False)
    finally:
        os.environ["PATH"] = old_path
    _state["build_s"] = time.perf_counter() - start
    return module


def _say_building(background: bool) -> None:
    """The one line (once per process) that a build, not a cached load, is under way."""
    if _state["said"]:
        return
    _state["said"] = True
    where = " in the background" if background else ""
    print(f"gateprobe: building the C++ statistics kernel{where} (first use of this source on this machine, "
          f"about {expected_build_seconds():.0f} s; `{COMMAND}` builds it ahead)", file=sys.stderr, flush=True)


def kernel_module():
    """The loaded extension, built once per process; None (after one line on stderr) if it cannot be.

    Waits for a build :func:`start_background_build` started."""
    if not _state["tried"]:
        with _lock:
            if not _state["tried"]:
                _load(background=False)
    return _state["module"]


def _load(background: bool) -> None:
    """Build or load the kernel into ``_state`` (holding ``_lock``)."""
    fresh = False
    try:
        fresh = not is_built()
        if fresh:
            if compiler() is None:
                raise RuntimeError(f"no C++ compiler: {os.environ.get('CXX', '').strip() or 'c++'} not found")
            _say_building(background)
        _state["module"] = _build()
    except Exception as exc:  # no compiler, no ninja, a compile error...: the torch path
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        reason = next((ln for ln in lines if "error:" in ln), lines[0]).strip()
        print(f"gateprobe: C++ statistics kernel unavailable ({reason[:200]}); "
              "using the pure-torch path", file=sys.stderr, flush=True)
    else:
        if fresh and _state["build_s"] is not None:
            _remember_build_seconds(_state["build_s"])
    _state["tried"] = True


def _needs_build(device) -> bool:
    device = torch.device("cpu" if device is None else device)
    return (device.type == "cpu" and not disabled() and not _state["tried"] and compiler() is not None
            and not is_built())


def start_background_build(device: torch.device | str | None = None) -> bool:
    """Start building the kernel in a thread when a recording on ``device`` will need a build (one line
    on stderr says so; :func:`kernel_module` waits for it); returns whether a build is under way.

    Nothing starts on a GPU device, with ``GATEPROBE_NATIVE=0``, without a compiler, or when the build
    is cached. The thread is not a daemon: a process that ends early waits for the build to finish
    (an interrupted build would leave torch's lock file in the build folder)."""
    if _state["thread"] is not None and _state["thread"].is_alive():
        return True
    if not _needs_build(device) or not _lock.acquire(blocking=False):
        return False
    try:
        if _state["tried"]:
            return False
        _say_building(background=True)
        _state["started"] = time.monotonic()

        def work():
            try:
                _load(background=True)
            finally:
                _lock.release()

        thread = threading.Thread(target=work, name="gateprobe-kernel-build", daemon=False)
        _state["thread"] = thread
        thread.start()
    except BaseException:
        _lock.release()
        raise
    return True


def pending_build_seconds(device: torch.device | str | None = None) -> float:
    """Seconds a recording on ``device`` will still wait for a build of the kernel before its first
    batch: 0 when none will happen (loaded, cached, ``GATEPROBE_NATIVE=0``, no compiler, a GPU
    device), else the expected build time less what a background build has run already (at least 1 s)."""
    thread = _state["thread"]
    if thread is not None and thread.is_alive():
        return max(1.0, expected_build_seconds() - (time.monotonic() - _state["started"]))
    if not _needs_build(device):
        return 0.0
    return expected_build_seconds()


def _reset() -> None:
    """Forget the loaded extension (tests): the next use builds or loads it again."""
    thread = _state["thread"]
    if thread is not None:
        thread.join()
    with _lock:
        _state.update(tried=False, module=None, build_s=None, said=False, thread=None, started=None)


def native_available() -> bool:
    """Whether the C++ kernel can be used (builds it on first call unless ``GATEPROBE_NATIVE=0``)."""
    if disabled():
        return False
    return kernel_module() is not None


def build_seconds() -> float | None:
    """Seconds the first :func:`native_available` of this process spent building or loading the kernel."""
    return _state["build_s"]


def path(device: torch.device | str | None = None) -> str:
    """``"native"`` or ``"torch"``: the path :func:`accumulate_gate_batch` takes for tensors on ``device``."""
    return "native" if native_module(torch.device("cpu" if device is None else device)) is not None else "torch"


def native_module(device: torch.device):
    """The kernel's module when tensors on ``device`` take the native path (:func:`path`), else None:
    the per-call check of the small operations that have a C++ form (no ``torch.device`` built)."""
    if device.type != "cpu" or disabled():
        return None
    return kernel_module()


# ---------------------------------------------------------------------------------------------- command
def main(argv: list[str] | None = None) -> int:
    """``gateprobe-build-kernel``: build the kernel now (``make venv`` runs it).

    Exit 0 when it is built (or cached), and also when it cannot be (no compiler: one line, the
    pure-torch path) unless ``--strict``; with ``GATEPROBE_NATIVE=0`` nothing is built."""
    import argparse

    parser = argparse.ArgumentParser(prog=COMMAND, description="Build the C++ statistics kernel of gateprobe "
                                     "into torch's extension folder (once per machine and source).")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the kernel cannot be built")
    args = parser.parse_args(argv)
    if disabled():
        print("gateprobe: GATEPROBE_NATIVE=0: the C++ statistics kernel is not built", file=sys.stderr)
        return 0
    cached = is_built()
    start = time.perf_counter()
    ok = kernel_module() is not None
    if ok:
        what = "already built, loaded" if cached else "built"
        print(f"gateprobe: C++ statistics kernel {what} in {time.perf_counter() - start:.1f} s ({library_path()})",
              file=sys.stderr)
    return 1 if args.strict and not ok else 0
