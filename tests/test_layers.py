"""The host's layers import one way: cli -> bench -> fleet -> boards -> nets -> the portable
core.

Every import statement of every module under host/ (at any depth: inside functions too) is
read with `ast` and resolved to the layer it names; an import of a layer above its own fails.
The portable core (edgebp/, firmware/) imports nothing of the host at all.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HOST = REPO / "host"
# lowest first
LAYERS = ["core", "nets", "boards", "fleet", "bench", "cli"]


def layer_of_module(name: str) -> str | None:
    """The layer an absolute module name belongs to; None for what is not edgebp."""
    parts = name.split(".")
    if parts[0] != "edgebp":
        return None
    if len(parts) == 1 or parts[1] != "host":
        return "core"
    if len(parts) == 2:
        return "host"  # the package itself: nothing may import it for its contents
    return parts[2] if parts[2] in LAYERS else "host"


def module_name(path: Path) -> str:
    if path.is_relative_to(HOST):
        rel = path.relative_to(HOST).with_suffix("")
        parts = ["edgebp", "host", *rel.parts]
    elif path.is_relative_to(REPO / "firmware"):
        parts = ["edgebp", "firmware", *path.relative_to(REPO / "firmware").with_suffix("").parts]
    else:
        parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, text: str | None = None, name: str | None = None
            ) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in the file (or in `text`, as module `name`),
    `from X import y` giving X.y as well as X, since y may be a submodule."""
    tree = ast.parse(path.read_text() if text is None else text, str(path))
    here = (name or module_name(path)).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.append((node.lineno, mod))
            found += [(node.lineno, f"{mod}.{a.name}") for a in node.names]
    return found


def violations(path: Path, own: str, text: str | None = None, name: str | None = None
               ) -> list[str]:
    out = []
    for line, mod in imports(path, text, name):
        other = layer_of_module(mod)
        if other is None or other == "host":
            continue
        if LAYERS.index(other) > LAYERS.index(own):
            out.append(f"{path.relative_to(REPO)}:{line}: {own} imports {mod} ({other})")
    return out


def host_modules():
    for path in sorted(HOST.rglob("*.py")):
        rel = path.relative_to(HOST)
        if len(rel.parts) == 1:
            continue  # host/__init__.py: the package's docstring
        yield pytest.param(path, rel.parts[0], id=str(rel))


@pytest.mark.parametrize("path, layer", list(host_modules()))
def test_host_module_imports_only_below(path, layer):
    assert layer in LAYERS, f"{path} is in no layer: host/ holds only {LAYERS[1:]}"
    assert not violations(path, layer)


def test_no_module_left_at_the_top_of_host():
    top = sorted(p.name for p in HOST.iterdir() if p.is_file() and p.suffix == ".py")
    assert top == ["__init__.py"]
    assert sorted(p.name for p in HOST.iterdir() if p.is_dir() and p.name != "__pycache__") \
        == sorted(LAYERS[1:])


def test_core_imports_nothing_of_the_host():
    bad = []
    for folder in ("edgebp", "firmware"):
        for path in sorted((REPO / folder).rglob("*.py")):
            bad += [f"{path.relative_to(REPO)}:{line}: {mod}" for line, mod in imports(path)
                    if layer_of_module(mod) not in (None, "core")]
    assert not bad


def test_the_check_catches_an_upward_import():
    # the check itself: a numerics module that reached for a higher layer is caught, by
    # every import form; a command-line module may import what lies below it
    probe = HOST / "nets" / "probe.py"
    for text in ("from edgebp.host.cli import parser\n",
                 "import edgebp.host.boards.session\n",
                 "def f():\n    from ..boards import sim\n",
                 "from edgebp.host.bench.step import run\n"):
        assert violations(probe, "nets", text, "edgebp.host.nets.probe"), text
    text = "from edgebp.host.nets import ranges\nfrom ..boards import sim\nimport edgebp.net\n"
    assert not violations(HOST / "cli" / "probe.py", "cli", text, "edgebp.host.cli.probe")
