"""`edgebp flash` as a user runs it, with the hardware replaced: the UF2 bootloader drive is a
folder holding INFO_UF2.TXT, serial ports are a list, and esptool's command is captured.

UF2 files are built here from the format's specification (github.com/microsoft/uf2); ESP
images from esptool's own chip table, so that the offsets and chip ids are checked against
esptool rather than against edgebp's copy of them."""

import argparse
import shlex
import struct
import sys
from types import SimpleNamespace

import pytest

from edgebp.host.boards import flash
from edgebp.host.cli import board_commands, parser
from edgebp.host.cli.board_commands import do_flash
from edgebp.host.cli.common import State

# the UF2 specification's block layout
MAGIC_START0, MAGIC_START1, MAGIC_END = 0x0A324655, 0x9E5D5157, 0x0AB16F30
FAMILY_PRESENT = 0x00002000
# uf2families.json and picotool
RP2040, RP2_ABSOLUTE, RP2350_ARM_S = 0xE48BFF56, 0xE48BFF57, 0xE48BFF59

# INFO_UF2.TXT as the RP2040 and RP2350 boot ROMs write it
RP2040_INFO = "UF2 Bootloader v3.0\nModel: Raspberry Pi RP2\nBoard-ID: RPI-RP2\n"
RP2350_INFO = "UF2 Bootloader v1.0\nModel: Raspberry Pi RP2350\nBoard-ID: RP2350\n"

# (no port named here exists on a real machine: a path that exists counts as the port)
PICO_USB = SimpleNamespace(device="/dev/ttyACM97", vid=0x2E8A, pid=0x0005,
                           description="Board in FS mode")


def uf2(payload: bytes, family: int | None = RP2040, page: int = 256) -> bytes:
    pages = [payload[i:i + page] for i in range(0, len(payload), page)]
    out = b""
    for n, data in enumerate(pages):
        flags, word7 = (FAMILY_PRESENT, family) if family is not None else (0, len(payload))
        head = struct.pack("<8I", MAGIC_START0, MAGIC_START1, flags, 0x10000000 + n * page,
                           len(data), n, len(pages), word7)
        out += head + data.ljust(476, b"\x00") + struct.pack("<I", MAGIC_END)
    return out


def rp2350_e10_block() -> bytes:
    """The block picotool writes first in an RP2350 image: absolute family, 1 of 2 blocks."""
    head = struct.pack("<8I", MAGIC_START0, MAGIC_START1, FAMILY_PRESENT, 0x10FFFF00, 256, 0,
                       2, RP2_ABSOLUTE)
    return head + (b"\xef" * 256).ljust(476, b"\x00") + struct.pack("<I", MAGIC_END)


FIRMWARE = bytes(range(256)) * 9  # 9 pages


@pytest.fixture
def rig(tmp_path, monkeypatch):
    """No hardware: a mount folder, serial ports in a list, esptool and deploy recorded.

    The rp2 board is in its bootloader (no serial port) until an image is copied to its
    drive; then its port appears, on the `slow`-th look; bootsel() puts it back."""
    mounts = tmp_path / "media"
    mounts.mkdir()
    rig = SimpleNamespace(tmp=tmp_path, mounts=mounts, ports=[], ran=[], deployed=[],
                          board_port=PICO_USB, running=False, looks=0, slow=1, naps=0)

    def ports():
        if rig.running:
            rig.looks += 1
        up = rig.running and rig.looks >= rig.slow
        return list(rig.ports) + ([rig.board_port] if up else [])

    def copy(data, dest):
        copy_image(data, dest)
        rig.running = True

    def bootsel():
        rig.running, rig.looks, rig.naps = False, 0, 0

    def sleep(seconds):  # no test waits long: fail fast rather than spin through --wait
        rig.naps += 1
        assert rig.naps < 100, "still waiting for the serial port"

    copy_image = flash.copy_image
    rig.bootsel = bootsel
    monkeypatch.setattr(flash, "copy_image", copy)
    monkeypatch.setattr(flash, "_search_roots", lambda: [mounts])
    monkeypatch.setattr(flash, "_ports", ports)
    monkeypatch.setattr(flash, "_sleep", sleep)
    monkeypatch.setattr(flash, "_run", lambda cmd: rig.ran.append(cmd) or 0)
    monkeypatch.setattr(board_commands, "_deploy",
                        lambda port, args: rig.deployed.append(port) or 0)
    return rig


def drive(rig, name="RPI-RP2", info=RP2040_INFO, info_name="INFO_UF2.TXT"):
    d = rig.mounts / name
    d.mkdir()
    (d / info_name).write_text(info)
    return d


def image(rig, data: bytes, name="RPI_PICO-v1.25.0.uf2"):
    path = rig.tmp / name
    path.write_bytes(data)
    return path


def run(*argv) -> int:
    ap = argparse.ArgumentParser(prog="edgebp flash")
    parser.argparse_flash(ap)
    return do_flash(State(), ap.parse_args([str(a) for a in argv]))


def fails(*argv) -> str:
    with pytest.raises(flash.FlashError) as e:
        run(*argv)
    message = str(e.value)
    assert "\n" not in message
    return message


# -- UF2 --


def test_uf2_is_copied_to_the_drive_then_the_port_awaited_then_deployed(rig):
    d = drive(rig)
    img = image(rig, uf2(FIRMWARE))
    rig.slow = 3  # MicroPython's USB port shows up a moment after the copy
    assert run("--firmware", img, "--port", "/dev/ttyACM97") == 0
    assert (d / img.name).read_bytes() == img.read_bytes()
    assert rig.looks == 3
    assert rig.deployed == ["/dev/ttyACM97"]


def test_port_auto_is_the_board_that_appears(rig, capsys, monkeypatch):
    d = drive(rig)
    img = image(rig, uf2(FIRMWARE))
    esp = SimpleNamespace(device="/dev/ttyUSB0", vid=0x10C4, pid=0xEA60, description="CP2102")
    rig.ports.append(esp)  # another board, plugged in all along
    assert run("--firmware", img, "--no-deploy") == 0
    assert (d / img.name).is_file()
    assert rig.deployed == []
    assert "flashed: MicroPython runs on /dev/ttyACM97" in capsys.readouterr().out
    rig.bootsel()
    assert run("--firmware", img) == 0
    assert rig.deployed == ["/dev/ttyACM97"]
    rig.bootsel()

    def two_appear():
        return [PICO_USB, esp] if rig.running else []

    monkeypatch.setattr(flash, "_ports", two_appear)
    assert "2 boards appeared" in fails("--firmware", img)


def test_a_port_that_never_comes_back(rig):
    drive(rig)
    img = image(rig, uf2(FIRMWARE))
    message = fails("--firmware", img, "--port", "/dev/ttyACM98", "--wait", "0")
    assert "/dev/ttyACM98 did not appear" in message and "edgebp deploy" in message


@pytest.mark.parametrize("damage, words", [
    (lambda f: b"", "empty"),
    (lambda f: f[:-100], "not a whole number of 512-byte"),
    (lambda f: f[:-512], "cut short: it holds 8 of the 9 blocks for RP2040"),
    (lambda f: b"\x00" * 4 + f[4:], "not a UF2 file"),
    (lambda f: f[:512 * 3 + 508] + b"\x00" * 4 + f[512 * 4:], "block 3 lacks the UF2 magic"),
    (lambda f: b"UF2 is a file format..." * 512, "not a UF2 file"),
])
def test_a_damaged_uf2_is_refused_and_nothing_copied(rig, damage, words):
    d = drive(rig)
    img = image(rig, damage(uf2(FIRMWARE)))
    message = fails("--firmware", img, "--no-deploy")
    assert words in message and "download it again" in message
    assert sorted(p.name for p in d.iterdir()) == ["INFO_UF2.TXT"]


def test_an_image_for_another_chip_is_refused(rig):
    img = image(rig, rp2350_e10_block() + uf2(FIRMWARE, RP2350_ARM_S))
    d = drive(rig)
    message = fails("--firmware", img, "--no-deploy")
    assert "is for RP2350 (Arm)" in message and "RPI-RP2" in message
    assert "Download the .uf2 for this board" in message
    assert not (d / img.name).exists()
    (d / "INFO_UF2.TXT").write_text(RP2350_INFO)
    assert run("--firmware", img, "--no-deploy") == 0  # its E10 block is not counted
    pico = image(rig, uf2(FIRMWARE), "pico.uf2")
    assert "is for RP2040" in fails("--firmware", pico, "--no-deploy")


def test_images_the_board_can_take(rig):
    """A file for two chips, one without family ids, a bootloader edgebp does not know."""
    d = drive(rig)
    both = image(rig, uf2(FIRMWARE, RP2350_ARM_S) + uf2(FIRMWARE, RP2040), "both.uf2")
    plain = image(rig, uf2(FIRMWARE, None), "plain.uf2")
    for img in (both, plain):
        assert run("--firmware", img, "--no-deploy") == 0
        assert (d / img.name).read_bytes() == img.read_bytes()
        rig.bootsel()
    (d / "INFO_UF2.TXT").write_text("UF2 Bootloader 1.0\nBoard-ID: WIDGET-v1\n")
    assert run("--firmware", both, "--no-deploy") == 0


def test_finding_the_bootloader_drive(rig):
    img = image(rig, uf2(FIRMWARE))
    (rig.mounts / "USBSTICK").mkdir()  # a drive without INFO_UF2.TXT is no bootloader
    message = fails("--firmware", img)
    assert "no UF2 bootloader drive" in message and "hold BOOTSEL" in message
    first = drive(rig, "RPI-RP2", info_name="info_uf2.txt")  # as some mounts show it
    assert run("--firmware", img, "--no-deploy") == 0 and (first / img.name).is_file()
    rig.bootsel()
    second = drive(rig, "RPI-RP2 1")
    assert "2 UF2 bootloader drives" in fails("--firmware", img, "--no-deploy")
    assert run("--firmware", img, "--drive", second, "--no-deploy") == 0
    assert (second / img.name).is_file()
    message = fails("--firmware", img, "--drive", rig.mounts / "USBSTICK")
    assert "holds no INFO_UF2.TXT" in message


def test_uf2_dry_run_touches_nothing(rig, capsys):
    img = image(rig, uf2(FIRMWARE))
    assert run("--firmware", img, "--dry-run") == 0
    out = capsys.readouterr().out
    assert "none is mounted now: hold BOOTSEL" in out
    d = drive(rig)
    assert run("--firmware", img, "--dry-run", "--port", "/dev/ttyACM3") == 0
    out = capsys.readouterr().out
    assert f"would copy {img} (9 blocks, 2,304 bytes, RP2040) to {d / img.name}" in out
    assert "then deploy edgebp to /dev/ttyACM3" in out
    assert sorted(p.name for p in d.iterdir()) == ["INFO_UF2.TXT"]
    assert rig.deployed == []


# -- esptool --


def esp_image(chip_id: int, hash_appended: int = 1) -> bytes:
    """An esp32-family image header (esptool's format): magic, 3 segments, DIO, 4 MB; the
    extended header with the chip id; a first segment that is not an app description."""
    head = struct.pack("<BBBBI", 0xE9, 3, 2, 0x20, 0x40080000)
    ext = struct.pack("<B3sHBHH4sB", 0xEE, b"\0\0\0", chip_id, 0, 0, 0xFFFF, b"\0" * 4,
                      hash_appended)
    return head + ext + struct.pack("<II", 0x3FF80000, 64) + bytes(range(64))


def esp8266_image() -> bytes:
    """Header, then the first segment's load address and size: no extended header."""
    return struct.pack("<BBBBIII", 0xE9, 1, 0, 0x40, 0x40100004, 0x40100000, 64) + b"\x55" * 64


def esptool_chips():
    targets = pytest.importorskip("esptool.targets")
    return targets.CHIP_DEFS


@pytest.mark.parametrize("chip", [c for c in flash.ESP_CHIPS if c != "esp8266"])
def test_esptool_writes_at_the_chips_bootloader_offset(rig, chip):
    rom = esptool_chips()[chip]
    img = image(rig, esp_image(rom.IMAGE_CHIP_ID), f"{chip}.bin")
    rig.ports.append(SimpleNamespace(device="/dev/ttyUSB0", vid=0x10C4, pid=0xEA60,
                                       description="CP2102"))
    assert run("--firmware", img, "--port", "/dev/ttyUSB0", "--no-deploy") == 0
    assert rig.ran == [[sys.executable, "-m", "esptool", "--chip", chip, "--port",
                          "/dev/ttyUSB0", "--baud", "460800", "write-flash",
                          hex(rom.BOOTLOADER_FLASH_OFFSET), str(img.resolve())]]


def test_offsets_are_those_micropythons_download_page_gives(rig, capsys):
    # micropython.org/download: esp32 and esp32-s2 at 0x1000, esp32-s3, -c3, -c6 at 0
    chips = esptool_chips()
    for chip, offset in {"esp32": "0x1000", "esp32s2": "0x1000", "esp32s3": "0x0",
                         "esp32c3": "0x0", "esp32c6": "0x0"}.items():
        img = image(rig, esp_image(chips[chip].IMAGE_CHIP_ID), f"{chip}.bin")
        assert run("--firmware", img, "--port", "COM4", "--dry-run") == 0
        assert f"write-flash {offset} " in capsys.readouterr().out


def test_esp8266_and_the_options(rig, capsys):
    img = image(rig, esp8266_image(), "ESP8266_GENERIC.bin")
    rig.ports.append(SimpleNamespace(device="/dev/ttyUSB0", vid=0x1A86, pid=0x7523,
                                       description="CH340"))
    assert run("--firmware", img, "--erase", "--baud", "115200", "--dry-run") == 0
    cmd = [sys.executable, "-m", "esptool", "--chip", "esp8266", "--port", "/dev/ttyUSB0",
           "--baud", "115200", "write-flash", "--erase-all", "--flash-size", "detect", "0x0",
           str(img.resolve())]
    assert capsys.readouterr().out.splitlines() == [
        f"would run: {shlex.join(cmd)}", "then deploy edgebp to /dev/ttyUSB0 (edgebp deploy)"]
    assert rig.ran == []
    assert run("--firmware", img, "--no-deploy") == 0
    assert rig.ran[0][4] == "esp8266"


def test_esp_dry_run_without_a_board_shows_where_the_port_goes(rig, capsys):
    img = image(rig, esp_image(esptool_chips()["esp32"].IMAGE_CHIP_ID), "e.bin")
    assert run("--firmware", img, "--dry-run", "--no-deploy") == 0
    assert "--port PORT --baud 460800 write-flash 0x1000" in capsys.readouterr().out
    assert "no board found" in fails("--firmware", img)
    assert rig.ran == []


def test_esp_images_and_chips_that_do_not_fit(rig):
    chips = esptool_chips()
    s3 = image(rig, esp_image(chips["esp32s3"].IMAGE_CHIP_ID), "s3.bin")
    assert "is an esp32s3 image, not esp32" in fails("--firmware", s3, "--chip", "esp32",
                                                     "--port", "COM3")
    app = esp_image(chips["esp32"].IMAGE_CHIP_ID)
    app = app[:32] + struct.pack("<I", 0xABCD5432) + app[36:]  # esp_app_desc_t's magic word
    message = fails("--firmware", image(rig, app, "micropython.bin"), "--port", "COM3")
    assert "without the bootloader" in message and "0x10000" in message
    zeros = image(rig, bytes(4096), "zeros.bin")
    assert "not an ESP firmware image" in fails("--firmware", zeros, "--port", "COM3")
    assert rig.ran == []


def test_esptool_failing(rig, monkeypatch):
    img = image(rig, esp_image(esptool_chips()["esp32c3"].IMAGE_CHIP_ID), "c3.bin")
    monkeypatch.setattr(flash, "_run", lambda cmd: 2)
    message = fails("--firmware", img, "--port", "/dev/ttyACM97")
    assert message.startswith("esptool failed (exit 2) writing c3.bin to /dev/ttyACM97")
    assert "hold BOOT while pressing RESET" in message and "--baud 115200" in message
    assert rig.deployed == []


# -- what edgebp flash does not do --


def test_images_and_boards_it_does_not_know(rig):
    dfu = image(rig, b"DfuSe" + bytes(100), "PYBV11.dfu")
    message = fails("--firmware", dfu)
    assert "PYBV11.dfu is a .dfu" in message
    assert ".uf2 images (rp2" in message and ".bin images (esp32 and esp8266" in message
    assert "then run `edgebp deploy`" in message
    assert "does not know stm32 boards" in fails("--firmware", dfu, "--board", "stm32")
    pico = image(rig, uf2(FIRMWARE))
    assert "esp32 boards take a .bin image" in fails("--firmware", pico, "--board", "esp32")
    message = fails("--firmware", rig.tmp / "missing.uf2")
    assert message.startswith("no firmware image") and "micropython.org/download" in message
    assert "(a folder)" in fails("--firmware", rig.tmp)
