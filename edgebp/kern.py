# Kernel selection: native, then viper, then the pure kernels, as the runtime allows.
#
# All three sets give bit-identical results, so the choice changes speed only:
# - native: edgebp/native/kernels.c compiled to a native module (edgebp/kernels_native.mpy,
#   copied by `edgebp deploy` for the board's architecture): compiled speed, no custom
#   firmware. Importing it fails where it was not deployed (ImportError) or was built for
#   another architecture (ValueError: incompatible .mpy).
# - viper: edgebp/kernels_viper.py. A runtime without the viper emitter fails the import:
#   CPython has no `micropython` module, a MicroPython without native code rejects the
#   decorator with a SyntaxError, a precompiled .mpy for another architecture raises
#   ValueError.
# - python: edgebp/kernels.py, the definition, everywhere.

_CHOICES = ("python", "viper", "native")
_errors = {}  # type: dict[str, str]  # why a kernel set failed to import, once it has: a retried import leaks RAM


def _load(name):
    if name in _errors:
        return None
    try:
        if name == "native":
            from edgebp import kernels_native  # type: ignore[attr-defined]

            return kernels_native
        from edgebp import kernels_viper

        return kernels_viper
    except (ImportError, SyntaxError, ValueError, OSError) as e:
        _errors[name] = "%s: %s" % (type(e).__name__, e)
        return None


def select(prefer=None):
    """The kernel module for Net(..., kernels=...).

    prefer=None picks native where it imports, else viper, else the pure-Python kernels;
    "python", "viper" or "native" forces one, and forcing one that is unavailable here
    raises ImportError saying why.
    """
    if prefer is not None and prefer not in _CHOICES:
        raise ValueError("kernels must be None, 'python', 'viper' or 'native', not %r"
                         % (prefer,))
    if prefer != "python":
        for which in ("native", "viper"):
            if prefer is None or prefer == which:
                k = _load(which)
                if k is not None:
                    return k
        if prefer is not None:
            raise ImportError("%s kernels unavailable on this runtime: %s"
                              % (prefer, _errors[prefer]))
    from edgebp import kernels

    return kernels


def name(k):
    """"python", "viper" or "native": which set a kernel module is."""
    n = k.__name__
    return "native" if n.endswith("native") else "viper" if n.endswith("viper") else "python"
