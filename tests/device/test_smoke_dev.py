# The harness itself, on every runtime: allocation-free int16 code passes no_alloc, and code
# that allocates fails it wherever detection is real (MicroPython).
from array import array

from devtest import ALLOC_CHECKED, no_alloc, skip


def mac_q15(a, b):
    # Each product of two int16 other than -32768 * -32768 stays below 2**30: a small int.
    acc = 0
    for i in range(len(a)):
        acc += (a[i] * b[i]) >> 15
    return acc


def make_list(n):
    return [0] * n


def expect_allocation(fn, *args):
    if not ALLOC_CHECKED:
        skip("CPython has no heap_lock")
    try:
        no_alloc(fn, *args)
    except AssertionError as e:
        assert "allocated" in str(e), str(e)
        return
    raise AssertionError("no_alloc did not notice an allocation in " + fn.__name__)


def test_int16_mac_allocates_nothing():
    a = array("h", [-32767, -5, 0, 7, 32767, 16384])
    b = array("h", [32767, 32767, 1, -32767, 32767, 16384])
    assert no_alloc(mac_q15, a, b) == -32767 - 5 - 7 + 32766 + 8192


def test_list_allocation_is_detected():
    expect_allocation(make_list, 4)


def test_heap_usable_after_failed_check():
    expect_allocation(make_list, 4)
    assert len(make_list(100)) == 100
