"""Keep triton out of processes where loading it would crash them (armed by importing ``napari_msa.engine``).

Why: ``segment_anything`` and ``timm`` import torchvision, which imports ``torch._dynamo``, which calls
``torch.utils._triton.has_triton_package()``, i.e. ``import triton``. ``triton/_C/libtriton.so`` links its own copy
of LLVM statically but exports its symbols. When another LLVM is already in the process as a shared library --
Mesa's ``libLLVM-NN.so``, which Qt's OpenGL loads for napari's canvas under software rendering (Xvfb, VMs, remote
desktops) and with Mesa's llvmpipe/radeonsi drivers on many Linux desktops -- the dynamic linker binds libtriton's
references to that library's definitions (LD_DEBUG: ``llvm::DebugCounter::instance()`` of libtriton.so bound to
libLLVM-15.so.1), and libtriton's static initialisers then corrupt memory of the wrong LLVM version: SIGSEGV inside
``dlopen`` (gdb: ``free()`` in ``llvm::DenseMap::grow`` under ``_GLOBAL__sub_I_PassBuilder.cpp``). This is what
killed napari when the plugin was opened from its menu after the viewer had drawn. In the other order (triton first,
Mesa later) both loaded and drew here, and ``import torch`` alone never loads triton.

What: just before torchvision (or ``torch._dynamo``, ``timm``, ``segment_anything``) is first imported -- as late as
possible, so a canvas drawn since is seen, and without importing torch for processes that never need it -- if
triton is not imported yet and either
  * a ``libLLVM`` shared library is already mapped into this process (it would crash), or
  * torch sees no CUDA device (triton only compiles GPU kernels; torch's CPU inductor generates C++ without it),
we put ``None`` in ``sys.modules["triton"]``. Python then treats triton exactly as not installed: ``import triton``
raises ImportError and ``importlib.util.find_spec("triton")`` returns None, which torch handles everywhere (its CPU
wheels ship without triton), so ``has_triton_package()`` is False and nothing is loaded.

GPUs keep working: with CUDA and no foreign LLVM loaded yet (NVIDIA's own GL, no display, the CLI, torchrun, a
script importing napari_msa before napari draws) triton loads normally and torch.compile works. On a CUDA machine
whose display uses Mesa and where torchvision is first imported after the canvas exists, triton is kept out of that
process: eager CUDA inference and tuning are unaffected (napari-msa never uses torch.compile), only torch.compile's
GPU backend (inductor/triton kernels) is unavailable in it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

#: Why triton was kept out of this process, or None when it was left alone.
kept_out_because: str | None = None


def foreign_llvm_loaded(maps: str = "/proc/self/maps") -> str | None:
    """The path of a shared ``libLLVM`` already mapped into this process (Linux), else None."""
    try:
        with open(maps, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                path = line.rstrip("\n").rpartition(" ")[2]
                if "/libLLVM" in path:
                    return path
    except OSError:  # no /proc: not Linux, where triton ships no official wheels anyway
        pass
    return None


def _cuda_available() -> bool:
    """torch.cuda.is_available() -- ``import torch`` loads neither torchvision nor torch._dynamo nor triton."""
    import torch

    return torch.cuda.is_available()


def keep_triton_out_if_unsafe(modules: dict = sys.modules, maps: str = "/proc/self/maps",
                              cuda_available: Callable[[], bool] = _cuda_available) -> str | None:
    """Keep triton out of this process when it would crash it or cannot be used; returns the reason, or None.

    The LLVM check comes first, so a process that must keep triton out does not initialise CUDA to learn it.
    """
    global kept_out_because
    if "triton" in modules:  # already loaded (or already kept out): nothing left to decide
        return kept_out_because if modules is sys.modules else None
    llvm = foreign_llvm_loaded(maps)
    if llvm is not None:
        reason = f"{llvm} is already loaded; triton's own LLVM would crash the process"
    elif not cuda_available():
        reason = "no CUDA device; triton only compiles GPU kernels"
    else:
        return None
    modules.setdefault("triton", None)
    if modules is sys.modules:
        kept_out_because = reason
    return reason


TRIGGERS = ("torchvision", "torch._dynamo", "timm", "segment_anything")


def _is_trigger(name: str) -> bool:
    return any(name == t or name.startswith(t + ".") for t in TRIGGERS)


class _DecideBeforeTorchvision:
    """A meta-path finder that finds nothing: at the first import of a trigger it decides about triton (once),
    steps aside, and lets the usual finders import the module."""

    def find_spec(self, name, path=None, target=None):
        if _is_trigger(name) and self in sys.meta_path:
            sys.meta_path.remove(self)
            keep_triton_out_if_unsafe()
        return None


_finder = _DecideBeforeTorchvision()


def decide_before_torchvision() -> None:
    """Arm the decision for the first import of torchvision (or decide now when one is already imported)."""
    if "triton" in sys.modules or _finder in sys.meta_path:
        return
    if any(_is_trigger(name) for name in sys.modules):
        keep_triton_out_if_unsafe()
    else:
        sys.meta_path.insert(0, _finder)


decide_before_torchvision()
