"""Shared fixtures: the `runtime` parametrisation and the device-module runner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgebp.host.boards import mprun, qemu

REPO = Path(__file__).resolve().parent.parent
DEVICE = REPO / "tests" / "device"

_device_runs: list[str] = []


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_runtime(name: str) -> None:
    """Skip locally, fail in CI, when runtime `name` cannot run here."""
    reason = mprun.find_runtime(name)
    if reason is None:
        return
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
    script = f"import devtest\nimport {path.stem}\ndevtest.run_tests({path.stem}.__dict__)\n"
    result = mprun.run(runtime, script, files, timeout=timeout, heapsize=heapsize)
    lines = result.stdout.strip().splitlines()
    summary = lines[-1] if lines and lines[-1].startswith("DEVTEST") else "no summary"
    _device_runs.append(f"[{runtime}] {module}: {summary}")
    print(f"[{runtime}] {module}: {summary}")
    if not result.ok or summary == "no summary":
        why = "timed out" if result.timed_out else f"exit code {result.returncode}"
        pytest.fail(
            f"{module} on {runtime}: {why}\n"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}",
            pytrace=False,
        )
    return result


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _device_runs:
        terminalreporter.section("device test modules, per runtime")
        for line in _device_runs:
            terminalreporter.write_line(line)
