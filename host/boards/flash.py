"""`edgebp flash`: write a stock MicroPython image to a board, then deploy edgebp onto it.

    edgebp flash --port /dev/ttyACM0 --firmware RPI_PICO-20250415-v1.25.0.uf2
    edgebp flash --port /dev/ttyUSB0 --firmware ESP32_GENERIC-20250415-v1.25.0.bin

The image picks the method:
  .uf2  copied onto the board's UF2 bootloader drive: an rp2 board plugged in with BOOTSEL held
        mounts as a small drive holding INFO_UF2.TXT, flashes what is copied there and reboots
        into the new firmware, whose serial port is then awaited.
  .bin  written by esptool (`python -m esptool`) where MicroPython's image starts for the chip:
        its bootloader offset, 0x1000 on esp32 and esp32-s2, 0x2000 on esp32-c5 and esp32-p4,
        0 on the other esp32 chips and on esp8266 (micropython.org/download, each board's
        deploy instructions). The chip is read from the image unless --chip names it.

UF2 (github.com/microsoft/uf2): 512-byte blocks, each a header of eight little-endian uint32
(magicStart0 0x0A324655, magicStart1 0x9E5D5157, flags, targetAddr, payloadSize, blockNo,
numBlocks, fileSize or familyID), 476 data bytes, magicEnd 0x0AB16F30. Flag 0x2000 makes word 7
a family id: a bootloader ignores blocks of families it does not run, so a file for another
chip copies without error and flashes nothing. That is why the family is checked here.

ESP images (esptool's image format): byte 0 is 0xE9. An esp32-family image has an extended
header from byte 8: its chip id is the uint16 at byte 12, byte 23 (hash appended) is 0 or 1.
An esp8266 image has none (the test esptool's image-info makes). An application built by
ESP-IDF begins its first segment, at byte 32, with esp_app_desc_t (magic 0xABCD5432): such an
image lacks the bootloader and belongs at 0x10000, so it is refused.
"""

from __future__ import annotations

import getpass
import importlib.util
import os
import shlex
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from serial.tools import list_ports

from edgebp.host.boards.link import list_boards

Log = Callable[[str], object]


class FlashError(ValueError):
    """What stops a flash that the user can fix: a bad image, no bootloader drive, no port."""

# -- UF2 --

UF2_BLOCK = 512
UF2_DATA = 476
UF2_MAGIC_START0 = 0x0A324655
UF2_MAGIC_START1 = 0x9E5D5157
UF2_MAGIC_END = 0x0AB16F30
UF2_NOT_MAIN_FLASH = 0x00000001
UF2_FAMILY_PRESENT = 0x00002000

RP2040 = 0xE48BFF56
RP2_ABSOLUTE = 0xE48BFF57
RP2_DATA = 0xE48BFF58
RP2350_ARM_S = 0xE48BFF59
RP2350_RISCV = 0xE48BFF5A
RP2350_ARM_NS = 0xE48BFF5B

# family ids (utils/uf2families.json of the UF2 repository, and picotool's for the RP2350)
FAMILIES = {
    RP2040: "RP2040",
    RP2_ABSOLUTE: "RP2 absolute",
    RP2_DATA: "RP2 data",
    RP2350_ARM_S: "RP2350 (Arm)",
    RP2350_RISCV: "RP2350 (RISC-V)",
    RP2350_ARM_NS: "RP2350 (Arm non-secure)",
    0x68ED2B88: "SAMD21",
    0x55114460: "SAMD51",
    0xADA52840: "NRF52840",
    0x4FB2D5BD: "MIMXRT10XX",
    0xBFDD4EEE: "ESP32-S2",
    0xC47E5767: "ESP32-S3",
}

# INFO_UF2.TXT's Board-ID begins with the chip (the UF2 spec: "the first token is the CPU
# type"); the RP2040 boot ROM says RPI-RP2. What each such bootloader flashes:
BOARD_FAMILIES = {
    "RPI-RP2": {RP2040},
    "RP2350": {RP2_ABSOLUTE, RP2_DATA, RP2350_ARM_S, RP2350_RISCV, RP2350_ARM_NS},
    "SAMD21": {0x68ED2B88},
    "SAMD51": {0x55114460},
    "NRF52840": {0xADA52840},
    "MIMXRT10": {0x4FB2D5BD},
    "ESP32S2": {0xBFDD4EEE},
    "ESP32S3": {0xC47E5767},
}

INFO_FILE = "INFO_UF2.TXT"
HOLD_BOOTSEL = ("hold BOOTSEL while plugging the board in (or run `mpremote bootloader` if "
                "it runs MicroPython already; other UF2 boards: double-press RESET), or name "
                "the drive with --drive")


def family_name(family: int | None) -> str:
    if family is None:
        return "no family id"
    return FAMILIES.get(family, f"family {family:#010x}")


@dataclass
class Uf2:
    """What a UF2 file flashes: blocks written, bytes, the families they are for."""

    blocks: int = 0
    nbytes: int = 0
    families: set[int | None] = field(default_factory=set)

    def describe(self) -> str:
        fams = ", ".join(sorted(family_name(f) for f in self.families))
        return f"{self.blocks} blocks, {self.nbytes:,} bytes, {fams}"


def _bootrom_skips(flags: int, family: int | None, block_no: int, num_blocks: int,
                   payload: bytes) -> bool:
    """A block no bootloader writes: a comment block, or the lone block picotool puts first
    in RP2350 images (RP2350-E10 workaround: absolute family, block 0 of 2, all 0xEF)."""
    if flags & UF2_NOT_MAIN_FLASH:
        return True
    return (family == RP2_ABSOLUTE and block_no == 0 and num_blocks == 2
            and payload == b"\xef" * len(payload))


def read_uf2(data: bytes, name: str) -> Uf2:
    """Check `data` is a whole UF2 file; raise FlashError saying what is wrong."""
    again = "download it again"
    if not data:
        raise FlashError(f"{name} is empty: {again}")
    if len(data) % UF2_BLOCK:
        raise FlashError(f"{name} is {len(data):,} bytes, not a whole number of 512-byte UF2 "
                        f"blocks: it is cut short or not a UF2 file; {again}")
    summary = Uf2()
    seen: dict[int | None, tuple[int, set[int]]] = {}  # family: (numBlocks, blockNos)
    for k in range(len(data) // UF2_BLOCK):
        block = data[k * UF2_BLOCK:(k + 1) * UF2_BLOCK]
        start0, start1, flags, _addr, size, block_no, num_blocks, word7 = struct.unpack_from(
            "<8I", block)
        (end,) = struct.unpack_from("<I", block, UF2_BLOCK - 4)
        if (start0, start1, end) != (UF2_MAGIC_START0, UF2_MAGIC_START1, UF2_MAGIC_END):
            if k == 0:
                raise FlashError(f"{name} is not a UF2 file (its first block lacks the UF2 "
                                f"magic numbers): {again}")
            raise FlashError(f"{name} is damaged: block {k} lacks the UF2 magic numbers; {again}")
        if size > UF2_DATA or block_no >= num_blocks:
            raise FlashError(f"{name} is damaged: block {k} has payload size {size} and number "
                            f"{block_no} of {num_blocks}; {again}")
        family = word7 if flags & UF2_FAMILY_PRESENT else None
        if _bootrom_skips(flags, family, block_no, num_blocks, block[32:32 + size]):
            continue
        total, numbers = seen.setdefault(family, (num_blocks, set()))
        if num_blocks != total:
            raise FlashError(f"{name} is damaged: block {k} says the file has {num_blocks} "
                            f"blocks, earlier ones {total}; {again}")
        numbers.add(block_no)
        summary.blocks += 1
        summary.nbytes += size
    for family, (total, numbers) in seen.items():
        if len(numbers) != total:
            raise FlashError(f"{name} is cut short: it holds {len(numbers)} of the {total} "
                            f"blocks for {family_name(family)}; {again}")
    if not seen:
        raise FlashError(f"{name} has no block a bootloader would write")
    summary.families = set(seen)
    return summary


# -- the bootloader drive --


def _search_roots() -> list[Path]:
    """Folders whose entries are mounted drives."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name (a container): the roots without one
        user = ""
    return [Path("/media", user), Path("/run/media", user), Path("/Volumes")]


def _candidates() -> list[Path]:
    found = []
    for root in _search_roots():
        try:
            found += sorted(p for p in root.iterdir() if p.is_dir())
        except OSError:  # missing, or not ours to read
            continue
    if os.name == "nt":
        found += [Path(f"{letter}:\\") for letter in "DEFGHIJKLMNOPQRSTUVWXYZ"]
    return found


def info_file(drive: Path) -> Path | None:
    # FAT is case-insensitive, but how a mount shows a name is up to its options
    for name in (INFO_FILE, INFO_FILE.lower()):
        try:
            if (drive / name).is_file():
                return drive / name
        except OSError:  # a drive letter with no medium
            return None
    return None


def find_drives() -> list[Path]:
    """Mounted UF2 bootloader drives: those holding INFO_UF2.TXT."""
    return [d for d in _candidates() if info_file(d) is not None]


def read_info(drive: Path) -> dict[str, str]:
    """INFO_UF2.TXT's "Key: value" lines."""
    path = info_file(drive)
    info = {}
    text = path.read_text(errors="replace") if path is not None else ""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    return info


def board_families(info: dict[str, str]) -> set[int] | None:
    """The families the drive's bootloader flashes, or None where its Board-ID is unknown."""
    board_id = info.get("Board-ID", "").upper()
    for prefix, families in BOARD_FAMILIES.items():
        if board_id.startswith(prefix):
            return families
    return None


def choose_drive(drive: str | None) -> Path | None:
    """The drive named, else the one mounted; None if none is."""
    if drive is not None:
        path = Path(drive)
        if info_file(path) is None:
            raise FlashError(f"{drive} holds no {INFO_FILE}: not a UF2 bootloader drive")
        return path
    drives = find_drives()
    if len(drives) > 1:
        raise FlashError(f"{len(drives)} UF2 bootloader drives are mounted "
                        f"({', '.join(map(str, drives))}): name one with --drive")
    return drives[0] if drives else None


def check_family(uf2: Uf2, image: str, drive: Path) -> str:
    """Refuse an image whose every block the drive's bootloader would ignore; say the board."""
    info = read_info(drive)
    board = info.get("Board-ID") or info.get("Model") or "a board"
    accepted = board_families(info)
    families = {f for f in uf2.families if f is not None}
    if accepted is not None and families and not families & accepted:
        raise FlashError(f"{image} is for {', '.join(sorted(map(family_name, families)))}, but "
                        f"{drive} is {board} ({', '.join(sorted(map(family_name, accepted)))}): "
                        "it would ignore the image. Download the .uf2 for this board")
    return board


def copy_image(data: bytes, dest: Path) -> None:
    """Write the image onto the drive and push it to the device before returning."""
    try:
        with open(dest, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        # The bootloader reboots once it has every block, and its drive vanishes: an error
        # with the drive gone (the system still writing metadata) means it took the image.
        if info_file(dest.parent) is None:
            return
        raise FlashError(f"could not write {dest}: {e.strerror or e}") from None


# -- serial ports --


def _ports() -> list:
    return list(list_ports.comports())


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def wait_for_port(port: str, timeout: float, log: Log, before: set[str] | None = None) -> str:
    """Wait until the board's serial port is there and return it. For "auto", that is the
    one board port not among `before` (the ports there while the board was in its
    bootloader), so that another board plugged in all along is not taken for it."""
    if "://" in port:
        return port  # a URL (socket://, rfc2217://) is no device to wait for
    log(f"waiting for the board's serial port ({'any board' if port == 'auto' else port})")
    deadline = time.monotonic() + timeout
    while True:
        ports = _ports()
        if port == "auto":
            boards = [b for b in list_boards(ports) if b.device not in (before or set())]
            if len(boards) == 1:
                return boards[0].device
            if len(boards) > 1:
                names = ", ".join(b.device for b in boards)
                raise FlashError(f"{len(boards)} boards appeared ({names}): name the flashed "
                                "one with --port to deploy to it")
        elif port in {p.device for p in ports} or os.path.exists(port):
            return port
        if time.monotonic() >= deadline:
            what = "no board's serial port appeared" if port == "auto" else f"{port} did not appear"
            raise FlashError(f"flashed, but {what} within {timeout:g} s: unplug and replug the "
                            "board, then run `edgebp deploy`")
        _sleep(0.25)


# -- esptool --

ESP_IMAGE_MAGIC = 0xE9
ESP_APP_DESC_MAGIC = 0xABCD5432
# esptool --chip name: (image chip id, where MicroPython's image starts)
ESP_CHIPS = {
    "esp32": (0, 0x1000),
    "esp32s2": (2, 0x1000),
    "esp32s3": (9, 0x0),
    "esp32c2": (12, 0x0),
    "esp32c3": (5, 0x0),
    "esp32c5": (23, 0x2000),
    "esp32c6": (13, 0x0),
    "esp32p4": (18, 0x2000),
    "esp8266": (None, 0x0),
}
DEFAULT_BAUD = 460800


def esp_image_chip(data: bytes, image: str) -> str:
    """The chip an ESP image is for, as esptool names it."""
    if not data or data[0] != ESP_IMAGE_MAGIC:
        first = f"{data[0]:#04x}" if data else "nothing"
        raise FlashError(f"{image} is not an ESP firmware image (it starts with {first}, not "
                        f"{ESP_IMAGE_MAGIC:#04x}): download the .bin for your board from "
                        "micropython.org/download")
    if len(data) >= 36 and struct.unpack_from("<I", data, 32)[0] == ESP_APP_DESC_MAGIC:
        raise FlashError(f"{image} is an application image without the bootloader (it belongs "
                        "at 0x10000): use the firmware .bin from micropython.org/download, or "
                        "a build's firmware.bin, which hold bootloader, partitions and app")
    if len(data) >= 24 and data[23] in (0, 1):
        chip_id = struct.unpack_from("<H", data, 12)[0]
        for chip, (known, _) in ESP_CHIPS.items():
            if known == chip_id:
                return chip
    return "esp8266"


def esptool_command(port: str, image: Path, chip: str, baud: int, erase: bool) -> list[str]:
    cmd = [sys.executable, "-m", "esptool", "--chip", chip, "--port", port, "--baud", str(baud),
           "write-flash"]
    if erase:
        cmd.append("--erase-all")
    if chip == "esp8266":
        cmd += ["--flash-size", "detect"]  # as MicroPython's esp8266 instructions say
    return [*cmd, hex(ESP_CHIPS[chip][1]), str(image)]


def _run(cmd: list[str]) -> int:
    return subprocess.run(cmd).returncode


# -- flash --

# --board: the images each known kind of board takes
BOARDS = {"rp2": ".uf2", "esp32": ".bin", "esp8266": ".bin"}
SUPPORTED = ("edgebp flash writes .uf2 images (rp2 boards, through their bootloader drive) "
             "and .bin images (esp32 and esp8266, with esptool)")


def _own_tool(what: str) -> FlashError:
    return FlashError(f"{what}: {SUPPORTED}. Flash MicroPython with the board's own tool "
                     "(micropython.org/download says which), then run `edgebp deploy`")


def _resolve_port(port: str, dry_run: bool) -> str:
    if port != "auto":
        return port
    boards = list_boards(_ports())
    if len(boards) == 1:
        return boards[0].device
    if dry_run:
        return "PORT"
    if not boards:
        raise FlashError("no board found on a USB serial port: plug it in (holding BOOT if it "
                        "does not answer), or name its port with --port")
    raise FlashError(f"{len(boards)} boards found ({', '.join(b.device for b in boards)}): "
                    "name the one to flash with --port")


def flash(port: str, image: str | os.PathLike, *, board: str | None = None,
          chip: str | None = None, drive: str | None = None, baud: int = DEFAULT_BAUD,
          erase: bool = False, wait: float = 30.0, dry_run: bool = False,
          log: Log = print) -> str:
    """Write MicroPython `image` to the board; the board's serial port afterwards.

    With dry_run nothing is written: the steps are logged instead."""
    path = Path(image)
    if board is not None and board not in BOARDS:
        raise _own_tool(f"edgebp flash does not know {board} boards")
    if not path.is_file():
        raise FlashError(f"no firmware image {path}" + (" (a folder)" if path.is_dir() else "")
                        + ": download MicroPython for your board from micropython.org/download")
    suffix = path.suffix.lower()
    if suffix not in (".uf2", ".bin"):
        raise _own_tool(f"{path.name} is a {suffix or 'file without extension'}")
    if board is not None and BOARDS[board] != suffix:
        raise FlashError(f"{board} boards take a {BOARDS[board]} image, not {path.name}")
    data = path.read_bytes()
    if suffix == ".uf2":
        return _flash_uf2(port, path, data, drive, wait, dry_run, log)
    if board == "esp8266" and chip is None:
        chip = "esp8266"
    return _flash_esp(port, path, data, chip, baud, erase, wait, dry_run, log)


def _flash_uf2(port: str, path: Path, data: bytes, drive: str | None, wait: float,
               dry_run: bool, log: Log) -> str:
    uf2 = read_uf2(data, path.name)
    target = choose_drive(drive)
    if target is None:
        if not dry_run:
            raise FlashError(f"no UF2 bootloader drive ({INFO_FILE}) is mounted: {HOLD_BOOTSEL}")
        log(f"would copy {path.name} ({uf2.describe()}) onto the board's bootloader drive, but "
            f"none is mounted now: {HOLD_BOOTSEL}")
        return port
    board = check_family(uf2, path.name, target)
    dest = target / path.name
    if dry_run:
        log(f"would copy {path} ({uf2.describe()}) to {dest} ({board})")
        log(f"then wait up to {wait:g} s for the board's serial port "
            f"({'the one USB board' if port == 'auto' else port})")
        return port
    log(f"copying {path.name} ({uf2.describe()}) to {dest} ({board})")
    before = {p.device for p in _ports()}
    copy_image(data, dest)
    found = wait_for_port(port, wait, log, before)
    log(f"flashed: MicroPython runs on {found}")
    return found


def _flash_esp(port: str, path: Path, data: bytes, chip: str | None, baud: int, erase: bool,
               wait: float, dry_run: bool, log: Log) -> str:
    from_image = esp_image_chip(data, path.name)
    if chip is None:
        chip = from_image
    elif chip not in ESP_CHIPS:
        raise FlashError(f"--chip {chip}: edgebp flash knows {', '.join(ESP_CHIPS)}")
    # an image without a chip id reads as esp8266: only a chip id can contradict --chip
    elif from_image != "esp8266" and chip != from_image:
        raise FlashError(f"{path.name} is an {from_image} image, not {chip}: download the "
                        "image for your chip")
    port = _resolve_port(port, dry_run)
    cmd = esptool_command(port, path.resolve(), chip, baud, erase)
    if dry_run:
        log(f"would run: {shlex.join(cmd)}")
        return port
    if importlib.util.find_spec("esptool") is None:
        raise FlashError("esptool is not installed: pip install esptool")
    log(f"writing {path.name} ({chip}) at {cmd[-2]} with esptool")
    code = _run(cmd)
    if code != 0:
        raise FlashError(f"esptool failed (exit {code}) writing {path.name} to {port}, its "
                        "message is above: if it could not connect, hold BOOT while pressing "
                        "RESET and try again; if it stopped partway, try --baud 115200")
    found = wait_for_port(port, wait, log)
    log(f"flashed: MicroPython runs on {found}")
    return found
