# Device-side test harness: runs unchanged under CPython and MicroPython.
#
# A device test module defines test_* functions and is run by tests/conftest.py's
# run_device_module(), which imports it and calls run_tests() on its globals. Output, one line
# per test, then a summary; the exit code is non-zero if any test failed:
#   PASS name | FAIL name: exception | SKIP name: reason
#   DEVTEST n passed, m failed[, k skipped]
import gc
import sys
from array import array

try:  # Rand's generator; devtest also runs without edgebp (tests/test_runtimes.py)
    from edgebp.fixed import seed30, xorshift30
except ImportError:
    seed30 = xorshift30 = None

try:
    from micropython import heap_lock, heap_unlock

    # Only a real MicroPython turns an allocation under heap_lock into a MemoryError.
    ALLOC_CHECKED = True
except (ImportError, AttributeError):
    heap_lock = heap_unlock = lambda: 0
    ALLOC_CHECKED = False


class Rand:
    # xorshift30 draws: the same sequence on every runtime
    def __init__(self, seed):
        self.s = seed30(seed)

    def below(self, n):
        self.s = xorshift30(self.s)
        return self.s % n

    def int_in(self, lo, hi):
        span = hi - lo + 1
        if span <= (1 << 29):
            return lo + self.below(span)
        hi_part = self.below(1 << 20)
        return lo + ((hi_part << 20) | self.below(1 << 20)) % span

    def value(self, lo, hi, edges=()):
        # a random value, or one of the edge values one time in four
        if edges and self.below(4) == 0:
            return edges[self.below(len(edges))]
        return self.int_in(lo, hi)

    def values(self, n, lo, hi, edges=()):
        # random values with the edge values sprinkled in
        out = []
        for _ in range(n):
            out.append(self.value(lo, hi, edges))
        return out

    def pair(self, typ, n, lo, hi, edges=()):
        # pair(typ, self.values(...)) without the list: on a 192 KiB board a list of 2000
        # values is an 8 KB block beside the arrays
        a = array(typ, range(n))  # sized from len(range), no list or bytes in between
        b = array(typ, range(n))
        for i in range(n):
            a[i] = b[i] = self.value(lo, hi, edges)
        return a, b


class SkipTest(Exception):
    pass


def _unlock_to(depth):
    # heap_unlock() returns the remaining depth; calling it on an unlocked heap wraps the
    # counter, so stop at the depth we started from.
    while heap_unlock() > depth:
        pass


def no_alloc(fn, *args):
    """Call fn(*args) with the heap locked and return its result; AssertionError if it allocated.

    An exception raised under the lock has no heap either: it may lose its message or become a
    MemoryError, so run the code once unlocked to see its real errors.
    """
    # A star-call allocates its argument array on ports without a Python stack (unix), so
    # spell out each arity.
    n = len(args)
    if n > 6:
        raise TypeError("no_alloc: at most 6 arguments")
    heap_lock()
    depth = heap_unlock()
    heap_lock()
    try:
        if n == 0:
            return fn()
        if n == 1:
            return fn(args[0])
        if n == 2:
            return fn(args[0], args[1])
        if n == 3:
            return fn(args[0], args[1], args[2])
        if n == 4:
            return fn(args[0], args[1], args[2], args[3])
        if n == 5:
            return fn(args[0], args[1], args[2], args[3], args[4])
        return fn(args[0], args[1], args[2], args[3], args[4], args[5])
    except MemoryError:
        pass
    finally:
        _unlock_to(depth)
    raise AssertionError("allocated: " + getattr(fn, "__name__", repr(fn)))


def skip(reason):
    raise SkipTest(reason)


def _print_traceback(e):
    if hasattr(sys, "print_exception"):
        sys.print_exception(e, sys.stdout)
    else:
        import traceback

        traceback.print_exception(type(e), e, e.__traceback__, file=sys.stdout)


def run_tests(module_globals):
    # MicroPython dicts do not keep insertion order, so run the tests in name order.
    names = sorted(k for k in module_globals if k.startswith("test_"))
    passed = failed = skipped = 0
    for name in names:
        fn = module_globals[name]
        if not callable(fn):
            continue
        # what the tests before left is garbage now: collected before the next allocates, so
        # that its buffers find the free heap in large pieces (a 192 KiB board fragments)
        gc.collect()
        try:
            fn()
        except SkipTest as e:
            skipped += 1
            print("SKIP " + name + ": " + str(e))
        except Exception as e:
            failed += 1
            print("FAIL " + name + ": " + type(e).__name__ + ": " + str(e))
            _print_traceback(e)
        else:
            passed += 1
            print("PASS " + name)
    summary = "DEVTEST %d passed, %d failed" % (passed, failed)
    if skipped:
        summary += ", %d skipped" % skipped
    print(summary)
    if failed:
        raise SystemExit(1)
