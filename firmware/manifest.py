# ruff: noqa: F821
# mypy: ignore-errors
# A MicroPython freeze manifest: builds edgebp into a firmware image. The core becomes the
# package `edgebp` and the board-side server `edgebp.firmware`, the modules and import paths
# `edgebp deploy` puts on a board's filesystem. Frozen bytecode runs from flash, so the heap
# keeps the RAM that importing them from .py or .mpy files takes.
#
#     make BOARD=RPI_PICO FROZEN_MANIFEST=/path/to/edgebp/firmware/manifest.py
#
# This is not a module: MicroPython's build (tools/makemanifest.py) runs it with package()
# and include() defined and this file's folder as the working directory.
#
# A FROZEN_MANIFEST replaces the board's default one, which freezes modules the board's
# firmware relies on (asyncio, networking), so that is included first: the board's own, or
# the port's for the many boards without one. (A manifest of your own may include this one
# too: the build reads each manifest once, however often it is included.)
#
# Frozen module names come from file paths, and a checkout keeps the firmware beside the
# core (firmware/) where an installed edgebp has it inside (edgebp/firmware/): both are
# copied into one temporary tree laid out as on a board, which the build compiles before it
# exits.

import atexit
import os
import shutil
import tempfile


def include_board_manifest():
    try:
        include("$(BOARD_DIR)/manifest.py")
    except Exception as e:
        # only a board without a manifest falls back; a failure inside one is reported
        if not isinstance(e.__context__, FileNotFoundError):
            raise
        include("$(PORT_DIR)/boards/manifest.py")


def sources(folder):
    return sorted(n for n in os.listdir(folder) if n.endswith(".py") and n != "manifest.py")


def stage():
    """A temporary folder holding edgebp/ as on a board, and the files in it."""
    firmware = os.getcwd()
    core = os.path.join(os.path.dirname(firmware), "edgebp")  # a checkout
    if not os.path.isfile(os.path.join(core, "net.py")):
        core = os.path.dirname(firmware)  # installed: the firmware is inside the core
    root = tempfile.mkdtemp(prefix="edgebp-freeze-")
    atexit.register(shutil.rmtree, root, True)
    files = []
    for src, sub in ((core, ""), (firmware, "firmware/")):
        os.makedirs(os.path.join(root, "edgebp", sub), exist_ok=True)
        for name in sources(src):
            # copy2 keeps the time stamp, by which the build knows what to recompile
            shutil.copy2(os.path.join(src, name), os.path.join(root, "edgebp", sub, name))
            files.append(sub + name)
    return root, files


include_board_manifest()
root, files = stage()
package("edgebp", files=files, base_path=root)
