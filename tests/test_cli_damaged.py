"""Damaged input files: every one the `edgebp` command reads (a dataset as .csv or .npz, float
weights as .npz, a net as .ebp, a spec as .json) gives one line, `edgebp: FILE: ...`, and exit
code 2, never a traceback; whether truncated, bit-flipped, empty, a directory, or an .npz whose
zip names a compression method (99) or an encryption flag zipfile cannot read."""

import binascii
import contextlib
import io
import json
import struct
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from edgebp.host.cli import parser as cli

DATA = REPO / "examples" / "data"
IRIS = str(DATA / "iris_train.csv")


def main(*args) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in args])
    return code, err.getvalue()


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A sound file of each kind, and the command that reads it (none needs a board)."""
    tmp = tmp_path_factory.mktemp("good")
    assert main("init", tmp / "s.json", "--data", IRIS, "--hidden", "4")[0] == 0
    assert main("quantize", tmp / "s.json", "-o", tmp / "n.ebp", "--calib", IRIS)[0] == 0
    a = np.loadtxt(IRIS, delimiter=",", skiprows=1)
    np.savez(tmp / "d.npz", X=a[:, :4], y=a[:, 4])
    np.savez_compressed(tmp / "c.npz", X=a[:, :4], y=a[:, 4])
    from edgebp.host.cli import data
    from edgebp.host.nets import ebpfile

    data.save_weights(tmp / "w.npz", ebpfile.read(tmp / "n.ebp")[0])
    spec = tmp / "s.json"
    out = tmp / "out.ebp"
    return {
        "spec.json": ((tmp / "s.json").read_bytes(), lambda p: ("quantize", p, "-o", out)),
        "net.ebp": ((tmp / "n.ebp").read_bytes(), lambda p: ("plan", "--net", p)),
        "weights.npz": ((tmp / "w.npz").read_bytes(),
                        lambda p: ("quantize", spec, "--weights", p, "-o", out)),
        "data.npz": ((tmp / "d.npz").read_bytes(),
                     lambda p: ("quantize", spec, "--calib", p, "-o", out)),
        "deflated.npz": ((tmp / "c.npz").read_bytes(),
                         lambda p: ("quantize", spec, "--calib", p, "-o", out)),
        "data.csv": (open(IRIS, "rb").read()[:800],
                     lambda p: ("quantize", spec, "--calib", p, "-o", out)),
    }


def _zip_field(b: bytes, signature: bytes, offset: int, value: int, first_only=False) -> bytes:
    # set a 16-bit field of every (or the first) zip header with this signature
    x, i = bytearray(b), 0
    while (i := x.find(signature, i)) >= 0:
        x[i + offset:i + offset + 2] = struct.pack("<H", value)
        i += 4
        if first_only:
            break
    return bytes(x)


def damaged(b: bytes) -> dict[str, bytes | None]:
    rng = np.random.default_rng(13)
    cases: dict[str, bytes | None] = {"empty": b"", "directory": None}
    for n in (1, 4, 30, len(b) // 2, len(b) - 1):
        cases[f"truncated at {n}"] = b[:n]
    for p in sorted(rng.choice(len(b), 12, replace=False)):
        x = bytearray(b)
        x[p] ^= 1 << int(rng.integers(8))
        cases[f"bit flipped at {p}"] = bytes(x)
    if b[:2] == b"PK":
        central, local = b"PK\x01\x02", b"PK\x03\x04"
        cases["central directory: compression method 99"] = _zip_field(b, central, 10, 99, True)
        cases["every header: compression method 99"] = _zip_field(
            _zip_field(b, central, 10, 99), local, 8, 99)
        cases["encryption flag"] = _zip_field(b, central, 8, 1, True)
    return cases


KINDS = ["spec.json", "net.ebp", "weights.npz", "data.npz", "deflated.npz", "data.csv"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_damaged_file_is_one_line(good, tmp_path, kind):
    content, command = good[kind]
    refused = 0
    for what, b in damaged(content).items():
        path = tmp_path / f"{what.replace(' ', '_')}{kind[kind.index('.'):]}"
        if b is None:
            path.mkdir()
        else:
            path.write_bytes(b)
        code, err = main(*command(path))
        lines = [ln for ln in err.splitlines() if not ln.startswith("edgebp: warning: ")]
        assert code in (0, 2), f"{what}: {err}"
        if code == 2:  # refused, saying which file in one line (a flip may leave it sound)
            refused += 1
            assert len(lines) == 1 and lines[0].startswith(f"edgebp: {path}"), f"{what}: {err}"
    assert refused >= 8


def test_compression_method_99_from_the_real_command(good, tmp_path):
    """The case of issue 13, through the installed entry point: no traceback."""
    path = tmp_path / "bad.npz"
    path.write_bytes(_zip_field(good["data.npz"][0], b"PK\x01\x02", 10, 99, True))
    done = subprocess.run([sys.executable, "-m", "edgebp.host.cli", "train", "--data", str(path)],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"edgebp: {path}: not a readable .npz file (That "
                                        "compression method is not supported)"]


@pytest.mark.parametrize("section", [
    {"classes": 5}, {"classes": [1, [2]]}, {"hyper": 5}, {"hyper": {"lr": "x"}},
    {"hyper": {"lr": True}}, {"hyper": {"lr": 0.1, "seed": "s"}}, {"in_offset": "abc"},
    {"out_offset": [1, 2, 3], "out_scale": 2.0}, {"out_scale": -1},
])
def test_a_host_section_with_a_valid_crc_but_wrong_fields(good, tmp_path, section):
    b = good["net.ebp"][0]
    i = b.index(b"EBPH")
    text = json.dumps({**json.loads(b[i + 8:-4]), **section}).encode()
    path = tmp_path / "m.ebp"
    path.write_bytes(b[:i] + b"EBPH" + struct.pack("<I", len(text)) + text
                     + struct.pack("<I", binascii.crc32(text)))
    code, err = main("plan", "--net", path)
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"edgebp: {path}: host section")
