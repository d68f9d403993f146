"""The command line: help, version, and errors as one line with the documented exit codes."""

import subprocess
import sys

import pytest

import edgebp
from edgebp.host.boards.session import SessionError
from edgebp.host.cli import parser as cli


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


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([name, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: edgebp {name}")
    assert cli.COMMANDS[name][2] in " ".join(out.split())


def test_user_error_is_one_line(monkeypatch, capsys):
    def do_fail(state, args):
        raise cli.UserError("no board on /dev/ttyACM0")

    monkeypatch.setitem(cli.COMMANDS, "fail", (do_fail, lambda parser: None, "fails"))
    assert cli.main(["fail"]) == 2
    captured = capsys.readouterr()
    assert captured.err == "edgebp: no board on /dev/ttyACM0\n"
    assert captured.out == ""


def test_link_error_is_one_line_with_exit_code_1(monkeypatch, capsys):
    def do_fail(state, args):
        raise SessionError("train: the board did not answer")

    monkeypatch.setitem(cli.COMMANDS, "fail", (do_fail, lambda parser: None, "fails"))
    assert cli.main(["fail"]) == 1
    assert capsys.readouterr().err == "edgebp: train: the board did not answer\n"


def test_missing_port_is_one_line(capsys):
    assert cli.main(["train", "--port", "/dev/edgebp-no-such-port"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("edgebp: ") and err.count("\n") == 1
    assert "/dev/edgebp-no-such-port" in err


def test_console_script_entry_point():
    done = subprocess.run(
        [sys.executable, "-c", "from edgebp.host.cli import main; raise SystemExit(main())"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "usage: edgebp" in done.stdout
