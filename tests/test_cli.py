"""The command line: help, version, and user errors as one line."""

import subprocess
import sys

import pytest

import edgebp
from edgebp.host import cli


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"edgebp {edgebp.__version__}"


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_user_error_is_one_line(monkeypatch, capsys):
    def do_fail(state, args):
        raise cli.UserError("no board on /dev/ttyACM0")

    monkeypatch.setitem(cli.COMMANDS, "fail", (do_fail, lambda parser: None, "fails"))
    assert cli.main(["fail"]) == 2
    captured = capsys.readouterr()
    assert captured.err == "edgebp: no board on /dev/ttyACM0\n"
    assert captured.out == ""


def test_console_script_entry_point():
    done = subprocess.run(
        [sys.executable, "-c", "from edgebp.host.cli import main; raise SystemExit(main())"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "usage: edgebp" in done.stdout
