"""The runner and the runtimes behave as the device tests assume."""

import time

import pytest

from conftest import DEVICE, require_runtime, run_device_module
from edgebp.host.boards import mprun

MICROPYTHONS = ["wasm", "unix"]

# heap_lock with the no-op fallback, so the same script also runs under CPython.
LOCK = """
try:
    from micropython import heap_lock, heap_unlock
except ImportError:
    heap_lock = heap_unlock = lambda: 0
"""


def test_smoke_module(runtime):
    result = run_device_module(runtime, "tests/device/test_smoke_dev.py", timeout=60)
    # Allocation detection is real on MicroPython only; CPython skips those tests.
    expected = "1 passed, 0 failed, 2 skipped" if runtime == "cpython" else "3 passed, 0 failed"
    assert result.stdout.splitlines()[-1] == "DEVTEST " + expected


def test_device_failure_is_reported(runtime):
    failing = "def test_fails():\n    assert 1 == 2, 'one is not two'\n"
    script = "import devtest, t\ndevtest.run_tests(t.__dict__)\n"
    files = {"devtest.py": (DEVICE / "devtest.py").read_text(), "t.py": failing}
    result = mprun.run(runtime, script, files, timeout=60)
    assert result.returncode == 1
    assert "FAIL test_fails: AssertionError: one is not two" in result.stdout
    assert "DEVTEST 0 passed, 1 failed" in result.stdout


def test_uncaught_exception_exits_nonzero(runtime):
    result = mprun.run(runtime, "print('before')\nraise ValueError('boom')\n", timeout=60)
    assert result.returncode == 1
    assert result.stdout.startswith("before")
    # The unix port prints its traceback on stdout.
    assert "ValueError: boom" in result.stderr + result.stdout


def test_exit_codes(runtime):
    assert mprun.run(runtime, "import sys\nsys.exit(3)\n", timeout=60).returncode == 3
    assert mprun.run(runtime, "raise SystemExit\n", timeout=60).returncode == 0


def test_output_streams_and_last_line_kept(runtime):
    lines = []
    script = "import sys\nprint('one')\nsys.stderr.write('err\\n')\nprint('two', end='')\n"
    result = mprun.run(runtime, script, timeout=60, stream=lines.append)
    assert result.ok
    if runtime in mprun.BOARDS:
        # a board has one stream, its UART: stderr arrives in stdout, in order
        assert lines == ["one", "err", "two"]
        assert (result.stdout, result.stderr) == ("one\nerr\ntwo", "")
        return
    assert lines == ["one", "two"]
    assert result.stdout == "one\ntwo"
    assert result.stderr == "err\n"


def test_files_shadow_installed_package(runtime):
    files = {"edgebp/__init__.py": "WHERE = 'device copy'\n", "pkg/mod.py": "X = 42\n"}
    script = "import edgebp\nfrom pkg import mod\nprint(edgebp.WHERE, mod.X)\n"
    result = mprun.run(runtime, script, files, timeout=60)
    assert result.stdout == "device copy 42\n", result.stderr


def test_timeout_is_enforced(runtime):
    start = time.monotonic()
    result = mprun.run(runtime, "while True:\n    pass\n", timeout=3)
    assert result.timed_out and not result.ok
    assert time.monotonic() - start < 30


@pytest.mark.parametrize("name", MICROPYTHONS)
def test_exception_under_heap_lock_terminates(name):
    require_runtime(name)
    script = LOCK + "heap_lock()\nraise ValueError('locked')\n"
    result = mprun.run(name, script, timeout=30)
    assert not result.timed_out, "hung on an exception raised with the heap locked"
    assert result.returncode == 1


@pytest.mark.parametrize("name", MICROPYTHONS)
def test_overflowing_product_under_heap_lock_terminates(name):
    # -32768 * -32768 == 2**30: a heap int on a 31-bit port, raised as MemoryError under lock.
    require_runtime(name)
    script = LOCK + "from array import array\nb = array('h', [-32768])[0]\nheap_lock()\nb * b\n"
    result = mprun.run(name, script, timeout=30)
    assert not result.timed_out
    assert result.returncode == (1 if name == "wasm" else 0)


@pytest.mark.parametrize(("name", "bits"), [("wasm", 31), ("unix", 63)])
def test_small_int_width(name, bits):
    require_runtime(name)
    # Inside a function: a store to a module global can grow the globals dict and allocate.
    script = LOCK + (
        "from array import array\n"
        "def square_first(a):\n"
        "    heap_lock()\n"
        "    try:\n"
        "        a[1] = (a[0] * a[0]) >> 15\n"  # 2**30 needs a small int wider than 31 bits
        "        boxed = False\n"
        "    except MemoryError:\n"
        "        boxed = True\n"
        "    heap_unlock()\n"
        "    return boxed\n"
        "print('boxed' if square_first(array('h', [-32768, 0])) else 'small')\n"
    )
    result = mprun.run(name, script, timeout=30)
    assert result.ok, result.stderr
    assert result.stdout.strip() == ("boxed" if bits == 31 else "small")


def test_unix_has_viper():
    require_runtime("unix")
    script = (
        "import micropython\n"
        "@micropython.viper\n"
        "def wrap(x: int) -> int:\n"
        "    return x * x\n"
        "print(wrap(1 << 20))\n"
    )
    result = mprun.run("unix", script, timeout=30)
    assert result.ok, result.stdout + result.stderr
    assert result.stdout.strip() == str(1 << 40)


def test_unix_fixed_heap_raises_memoryerror():
    require_runtime("unix")
    script = "try:\n    b = bytearray(64 * 1024)\nexcept MemoryError:\n    print('full')\n"
    result = mprun.run("unix", script, timeout=30, heapsize="16k")
    assert result.stdout.strip() == "full", result.stdout + result.stderr


def test_unknown_runtime():
    with pytest.raises(ValueError):
        mprun.find_runtime("circuitpython")
