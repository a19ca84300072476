"""fastctc: fast, correct CTC (Connectionist Temporal Classification) on CPU and GPU.

Public names only.  The PyTorch-style functions live in _engine.py; the other front
ends (MindSpore, optax, alignment, GPU) are loaded on first use so that `import fastctc`
stays light and never needs torch, jax or CUDA.
"""
import importlib as _importlib
import os as _os

from ._engine import ctc_loss, ctc_loss_and_grad
from ._validate import CTCRuntimeError, CTCTypeError, CTCTypeRuntimeError, CTCValueError, CTCValueRuntimeError
from ._version import __version__

# public name -> module that defines it (imported on first access)
_LAZY = {
    "CTCLossV2": "._mindspore",
    "ctc_loss_with_forward_probs": "._optax",
    "optax_ctc_loss": "._optax",
    "forced_align": "._align",
    "merge_tokens": "._align",
    "TokenSpan": "._align",
    "ctc_posteriors": "._align",
}

__all__ = [
    "__version__", "ctc_loss", "ctc_loss_and_grad", "info", "get_include",
    "CTCValueError", "CTCTypeError", "CTCRuntimeError", "CTCValueRuntimeError", "CTCTypeRuntimeError",
    *sorted(_LAZY),
]


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fastctc' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


def get_include():
    """The folder holding fastctc/fastctc.h (pass it to the compiler with ``-I``).

    Returns
    -------
    str
        The ``include`` folder inside an installed wheel; in an editable install (or with
        ``PYTHONPATH=pyx``) the source tree's ``include/``.

    Raises
    ------
    FileNotFoundError
        When the C headers are in neither place.

    Examples
    --------
    >>> import os
    >>> import fastctc
    >>> os.path.isfile(os.path.join(fastctc.get_include(), "fastctc", "fastctc.h"))
    True
    """
    here = _os.path.dirname(_os.path.abspath(__file__))
    packaged = _os.path.join(here, "include")
    if _os.path.isfile(_os.path.join(packaged, "fastctc", "fastctc.h")):
        return packaged
    source_tree = _os.path.normpath(_os.path.join(here, "..", "..", "include"))
    if _os.path.isfile(_os.path.join(source_tree, "fastctc", "fastctc.h")):
        return source_tree
    raise FileNotFoundError("fastctc's C headers are not installed next to the package")


def info():
    """A dict describing this build and machine (what ``fastctc info`` prints).

    Returns
    -------
    dict
        ``version`` (str); ``simd_level`` (str, the level in use: ``"scalar"``, ``"avx2"``,
        ``"avx512"`` or ``"neon"``); ``simd_levels_available`` (list of str, the levels this
        CPU and build support); ``openmp`` (bool, whether the engine was built with
        OpenMP); ``threads`` (int, the default thread count of a call: ``OMP_NUM_THREADS``,
        else every core this process may use; 1 without OpenMP); ``cuda`` (dict, the GPU
        path's status: ``available`` (bool) and ``reason`` (str) at least).

    Examples
    --------
    >>> import fastctc
    >>> sorted(fastctc.info())
    ['cuda', 'openmp', 'simd_level', 'simd_levels_available', 'threads', 'version']
    >>> fastctc.info()["version"] == fastctc.__version__
    True
    """
    from . import _core
    from ._engine import default_threads
    return {
        "version": __version__,
        "simd_level": _core.simd_level(),
        "simd_levels_available": _core.simd_levels_supported(),
        "openmp": _core.openmp_enabled(),
        "threads": default_threads() if _core.openmp_enabled() else 1,
        "cuda": _cuda_status(),
    }


def _cuda_status():
    try:
        from . import _cuda
    except ImportError:
        return {"available": False, "reason": "the GPU path is not part of this build"}
    return _cuda.status()
