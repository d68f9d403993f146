# Kernel selection: the viper kernels where the runtime can compile them, else the pure ones.
#
# Both sets give bit-identical results, so the choice changes speed only. A runtime without
# the viper emitter (CPython, the WebAssembly port, some MCU builds) fails the import:
# CPython has no `micropython` module, a MicroPython without native code rejects the
# decorator with a SyntaxError, and a precompiled .mpy for another architecture raises
# ValueError.

_CHOICES = ("python", "viper")
_viper_error = None  # why the viper kernels failed to import, once they have


def select(prefer=None):
    """The kernel module for Net(..., kernels=...).

    prefer=None picks viper when available, else the pure-Python kernels; "python" or
    "viper" forces one, and forcing viper where it is unavailable raises ImportError.
    """
    if prefer is not None and prefer not in _CHOICES:
        raise ValueError("kernels must be None, 'python' or 'viper', not %r" % (prefer,))
    global _viper_error
    if prefer != "python" and _viper_error is None:
        try:
            from edgebp import kernels_viper

            return kernels_viper
        except (ImportError, SyntaxError, ValueError) as e:
            # remember the failure: a retried import recompiles the source and leaks RAM
            _viper_error = "%s: %s" % (type(e).__name__, e)
    if prefer == "viper":
        raise ImportError("viper kernels unavailable on this runtime: %s" % _viper_error)
    from edgebp import kernels

    return kernels
