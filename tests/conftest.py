"""Shared fixtures: the `runtime` parametrisation and the device-module runner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgebp.host.boards import mprun, qemu

REPO = Path(__file__).resolve().parent.parent
DEVICE = REPO / "tests" / "device"

_device_runs: list[str] = []  # every device module run, for the summary
_device_lines: list[str] = []  # of the running test, until its report carries them


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_runtime(name: str) -> None:
    """Skip locally, fail in CI, when runtime `name` cannot run here."""
    reason = mprun.find_runtime(name)
    if reason is None:
        return
    if name in mprun.BOARDS and not os.environ.get(qemu.ENV):
        # the emulated boards are opt-in: without the variable they skip, in CI too; with it
        # a board that cannot start fails the run there
        pytest.skip(f"emulated board {name}: {reason}")
    if in_ci():
        pytest.fail(f"runtime {name} is missing in CI: {reason}", pytrace=False)
    pytest.skip(f"runtime {name} is missing: {reason}")


@pytest.fixture(params=mprun.RUNTIMES)
def runtime(request: pytest.FixtureRequest) -> str:
    """Each test that takes `runtime` runs once per runtime: [cpython], [wasm], [unix], and
    the emulated boards [cortex-m3], [rv32] (started once per test module)."""
    require_runtime(request.param)
    return request.param


@pytest.fixture(autouse=True, scope="module")
def _stop_boards_after_module():
    """An idle emulated board keeps a host core busy: the boards a module's tests started
    are stopped when the module is done (its next module starts its own)."""
    yield
    qemu.stop_shared()


def _board_of(item: pytest.Item) -> str | None:
    """The emulated board a test is parametrised with (as `runtime`, `name`, ...), if any."""
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return None
    return next((v for v in callspec.params.values()
                 if isinstance(v, str) and v in mprun.BOARDS), None)


def pytest_report_header() -> str:
    """Which runtimes this run has, the emulated boards named."""
    boards = os.environ.get(qemu.ENV)
    where = (f"emulated boards {', '.join(mprun.BOARDS)} from {boards}" if boards
             else f"emulated boards off (set {qemu.ENV} to a directory with qemu-board)")
    return f"edgebp runtimes: {', '.join(mprun.HOSTS)}; {where}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Within each module, the tests on a board run after the others, grouped by board, in
    their order otherwise: a board then boots once per module, and the one before it can be
    stopped when the next starts (_one_board_at_a_time) instead of idling beside it."""
    first: dict[str, int] = {}  # module file -> where its first test is
    for i, item in enumerate(items):
        first.setdefault(item.nodeid.split("::")[0], i)
    rank = {kind: n + 1 for n, kind in enumerate(mprun.BOARDS)}

    def key(pair: tuple[int, pytest.Item]) -> tuple[int, int, int]:
        i, item = pair
        return first[item.nodeid.split("::")[0]], rank.get(_board_of(item) or "", 0), i

    items[:] = [item for _, item in sorted(enumerate(items), key=key)]


_board_in_use: list[str | None] = [None]


@pytest.fixture(autouse=True)
def _one_board_at_a_time(request: pytest.FixtureRequest):
    """A test on one board stops the shared board of the other (an idle board keeps a host
    core busy, and this machine has two)."""
    kind = _board_of(request.node)
    if kind is not None and _board_in_use[0] not in (None, kind):
        qemu.stop_shared()
    if kind is not None:
        _board_in_use[0] = kind
    yield


# the core's modules leaves first, as the firmware imports them (firmware/main.py)
_PACKED = ("edgebp.fixed", "edgebp.luts", "edgebp.wire", "edgebp.net", "edgebp.ebp",
           "edgebp.ckpt", "edgebp.firmware.server")


def run_device_module(
    runtime: str,
    module: str,
    extra_files: dict[str, str] | None = None,
    timeout: float = 120,
    heapsize: str | None = None,
) -> mprun.RunResult:
    """Run a device test module (path relative to the repo) with devtest and the core files.

    Fails the calling test, showing the device's output, unless every device test passed.
    """
    path = REPO / module
    files = mprun.core_files()
    files["devtest.py"] = (DEVICE / "devtest.py").read_text()
    files[path.name] = path.read_text()
    files.update(extra_files or {})
    # imported as the firmware's main imports the server (edgebp/imports.py): the kernels
    # first, then each module beside a ballast. Imported plainly, a module's objects end up
    # strewn among the filesystem reader's garbage, and a 192 KiB board's heap may be left
    # with no free run of 8 KB (test_wire's on cortex-m3, after a few other modules).
    names = [None] + [m for m in _PACKED if m.replace(".", "/") + ".py" in files]
    names += ["devtest"] + [rel[:-3] for rel in extra_files or {} if rel.endswith(".py")
                            and "/" not in rel]
    script = (f"from edgebp import imports\nimports.packed({names!r})\nimport devtest\n"
              f"import {path.stem}\ndevtest.run_tests({path.stem}.__dict__)\n")
    result = mprun.run(runtime, script, files, timeout=timeout, heapsize=heapsize)
    lines = result.stdout.strip().splitlines()
    summary = lines[-1] if lines and lines[-1].startswith("DEVTEST") else "no summary"
    _device_lines.append(f"[{runtime}] {module}: {summary}")
    print(f"[{runtime}] {module}: {summary}")
    if not result.ok or summary == "no summary":
        why = "timed out" if result.timed_out else f"exit code {result.returncode}"
        pytest.fail(
            f"{module} on {runtime}: {why}\n"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}",
            pytrace=False,
        )
    return result


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    # the device modules' summaries travel with the test's report, so that the process
    # that prints the summary has them when the tests ran in workers (pytest-xdist)
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and _device_lines:
        report.user_properties.append(("device_runs", list(_device_lines)))
        _device_lines.clear()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for name, lines in report.user_properties:
        if name == "device_runs":
            _device_runs.extend(lines)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _device_runs:
        terminalreporter.section("device test modules, per runtime")
        for line in _device_runs:
            terminalreporter.write_line(line)
