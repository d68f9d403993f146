"""firmware/manifest.py, run as MicroPython's build runs a freeze manifest, without building
MicroPython: its working directory is the manifest's folder, and package() and include() are
stand-ins that record what they are asked for, resolving paths as tools/manifestfile.py does
(package(p, files, base_path) freezes base_path/p/f as the module file p/f).

What it freezes must be what a board needs, at the paths a board has them: the same files,
with the same contents, as sim.device_files(), less the manifest itself."""

import atexit
import os
import shutil
from pathlib import Path

import pytest

import edgebp.firmware
from conftest import REPO
from edgebp.host.boards.sim import device_files

MANIFEST = Path(edgebp.firmware.__file__).with_name("manifest.py")
BOARD_MANIFEST = "$(BOARD_DIR)/manifest.py"
PORT_MANIFEST = "$(PORT_DIR)/boards/manifest.py"


class Build:
    """The manifest functions of MicroPython's build, recording instead of freezing."""

    def __init__(self, missing=(), broken=()):
        self.frozen: dict[str, str] = {}  # target path -> source text
        self.included: list[str] = []
        self.missing = set(missing)  # manifests that do not exist
        self.broken = set(broken)  # manifests that fail when run
        self.cleanups: list = []

    def include(self, path, **options):
        self.included.append(path)
        # the build wraps whatever the included manifest raises in its own error
        try:
            if path in self.missing:
                open(os.path.join(os.getcwd(), "no-such-dir", "manifest.py"))
            if path in self.broken:
                raise NameError("name 'frezee' isn't defined")
        except Exception as e:
            raise RuntimeError(f"Error in manifest file: {path}: {e}")  # noqa: B904

    def package(self, package_path, files=None, base_path=".", opt=None):
        base = os.path.abspath(base_path)
        if files is None:
            top = os.path.join(base, package_path)
            files = [os.path.relpath(os.path.join(d, n), top)
                     for d, _, names in os.walk(top) for n in names if n.endswith(".py")]
        for f in files:
            target = f"{package_path}/{f}"
            self.frozen[target] = Path(base, target).read_text()

    def refuse(self, *args, **kwargs):
        raise AssertionError("the manifest should need only include() and package()")

    def run(self, manifest: Path, monkeypatch) -> None:
        monkeypatch.chdir(manifest.parent)
        monkeypatch.setattr(atexit, "register", lambda *a: self.cleanups.append(a))
        functions = {"include": self.include, "package": self.package, "module": self.refuse,
                     "freeze": self.refuse, "require": self.refuse}
        exec(compile(manifest.read_text(), str(manifest), "exec"), functions)
        for fn, *args in self.cleanups:
            fn(*args)


def board_files() -> dict[str, str]:
    files = device_files()
    files.pop("edgebp/firmware/manifest.py", None)
    return files


def test_it_freezes_what_a_board_needs_where_a_board_has_it(monkeypatch):
    build = Build()
    build.run(MANIFEST, monkeypatch)
    assert build.frozen == board_files()
    assert "edgebp/firmware/server.py" in build.frozen and "edgebp/net.py" in build.frozen
    assert build.included == [BOARD_MANIFEST]


def test_its_temporary_tree_is_removed_when_the_build_ends(monkeypatch):
    build = Build()
    build.run(MANIFEST, monkeypatch)
    [(_, root, _)] = build.cleanups
    assert Path(root).name.startswith("edgebp-freeze-") and not Path(root).exists()


def test_from_an_installed_edgebp(tmp_path, monkeypatch):
    """A wheel installs the firmware inside the core, beside edgebp.host: host stays out."""
    core = tmp_path / "site-packages" / "edgebp"
    shutil.copytree(REPO / "edgebp", core, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "firmware", core / "firmware",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (core / "host").mkdir()
    (core / "host" / "cli.py").write_text("import numpy\n")
    build = Build()
    build.run(core / "firmware" / "manifest.py", monkeypatch)
    assert build.frozen == board_files()


def test_a_board_without_a_manifest_gets_the_ports(monkeypatch):
    build = Build(missing={BOARD_MANIFEST})
    build.run(MANIFEST, monkeypatch)
    assert build.included == [BOARD_MANIFEST, PORT_MANIFEST]
    assert build.frozen == board_files()


def test_a_failing_board_manifest_is_reported_not_replaced(monkeypatch):
    build = Build(broken={BOARD_MANIFEST})
    with pytest.raises(RuntimeError, match="frezee"):
        build.run(MANIFEST, monkeypatch)
    assert build.included == [BOARD_MANIFEST]
