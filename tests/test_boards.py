"""Board profiles (firmware/boards.py): the boards edgebp knows, overrides, the status LED."""

import sys
import types

import pytest

from edgebp.firmware import boards


def test_the_named_boards_and_a_fallback():
    for name in ("rp2", "esp32", "stm32", "generic", "unix"):
        p = boards.profile(name)
        assert p.name == name and p.stream == "repl"
        assert p.max_payload >= 512 and p.credits >= 1
    for name in ("rp2", "esp32", "stm32"):
        assert boards.profile(name).uart_id is not None  # uart=True has a default UART
    assert boards.PLATFORMS["pyboard"] == "stm32"
    assert boards.profile("rp2", uart=True, baudrate=921600).stream == "uart"
    with pytest.raises(ValueError, match="unknown board 'nrf'"):
        boards.profile("nrf")
    with pytest.raises(ValueError, match="unknown profile setting 'speed'"):
        boards.profile("rp2", speed=1)


class FakePin:
    OUT = 1
    made: list = []

    def __init__(self, name, mode):
        if name == "NOPE":
            raise ValueError("invalid pin")
        self.name, self.values = name, []
        FakePin.made.append(self)

    def value(self, v):
        self.values.append(v)


def test_the_status_led_is_lit_while_the_server_runs(monkeypatch):
    monkeypatch.setitem(sys.modules, "machine", types.SimpleNamespace(Pin=FakePin))
    FakePin.made.clear()
    led = boards.status_led(boards.profile("rp2"))
    led(1)
    led(0)
    assert [(p.name, p.values) for p in FakePin.made] == [("LED", [1, 0])]
    # no LED, or a pin this board does not have: nothing to light, nothing fails
    boards.status_led(boards.profile("esp32"))(1)
    boards.status_led(boards.profile("rp2", led="NOPE"))(1)
    assert len(FakePin.made) == 1
    monkeypatch.delitem(sys.modules, "machine")
    boards.status_led(boards.profile("rp2"))(1)  # CPython, the unix port: no machine.Pin
