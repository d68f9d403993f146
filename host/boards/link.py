"""The host end of the edgebp wire protocol (frames: edgebp/wire.py).

Every port is opened with `serial.serial_for_url(url, do_not_open=True, ...)`, so a USB port,
`socket://host:port`, `rfc2217://`, `loop://` and `spy://` (a traffic dump) share one code path.

`Link.request()` sends one frame and waits for its answer. `Link.stream()` sends a sequence of
frames ahead of the answers, up to the board's credits, so the link and the board's work
overlap. Both resend on a timeout or when the board reports a damaged or missing frame; the
board drops repeats by sequence number, so what it processes is exactly what was sent, once.

Errors are layered: LinkError (the transport) <- ProtocolError (no valid answer) <-
DeviceError (the board answered with an error code, decoded to words).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import serial
from serial.tools import list_ports

from edgebp import wire

# USB vendor ids of MicroPython boards and of the USB-UART bridges on esp32 boards
BOARD_VIDS = {
    0x2E8A: "rp2 (Raspberry Pi)",
    0xF055: "pyboard (MicroPython)",
    0x303A: "esp32 native USB (Espressif)",
    0x10C4: "CP210x USB-UART (esp32 boards)",
    0x1A86: "CH340 USB-UART (esp32 boards)",
    0x0403: "FTDI USB-UART",
}

FLUSH = bytes(wire.FLUSH_LEN)
HOST_FRAME_MAX = wire.HEADER + 65535 + wire.TRAILER


class LinkError(Exception):
    """The transport failed: the port is missing, busy or closed."""


class ProtocolError(LinkError):
    """The board did not answer as the protocol says (no answer, a malformed answer)."""


class NoReplError(LinkError):
    """The port gave no raw REPL prompt (nothing there, or a program that ignores Ctrl-C)."""


class DeviceError(ProtocolError):
    """The board answered with an error code."""

    def __init__(self, code: int, text: str, request: str = ""):
        self.code = code
        self.word = wire.ERROR_NAMES.get(code, f"error {code}")
        self.text = text
        self.request = request
        where = f"{request}: " if request else ""
        detail = f" ({text})" if text and text != self.word else ""
        super().__init__(f"{where}board says {self.word}{detail}")


@dataclass
class Reply:
    seq: int
    kind: int
    payload: bytes

    @property
    def code(self) -> int:
        return self.payload[0] if self.kind == wire.ERROR and self.payload else 0

    @property
    def text(self) -> str:
        return self.payload[1:].decode("ascii", "replace") if self.kind == wire.ERROR else ""


@dataclass
class PortInfo:
    device: str
    vid: int | None
    pid: int | None
    kind: str
    description: str


def list_boards(ports: Iterable | None = None) -> list[PortInfo]:
    """Serial ports whose USB vendor id is a MicroPython board or an esp32 USB-UART bridge."""
    found = []
    for p in ports if ports is not None else list_ports.comports():
        if p.vid in BOARD_VIDS:
            found.append(PortInfo(p.device, p.vid, p.pid, BOARD_VIDS[p.vid],
                                  p.description or ""))
    return sorted(found, key=lambda b: b.device)


def find_port(spec: str = "auto", ports: Iterable | None = None) -> str:
    """`spec` itself, or for "auto" the one board port there is."""
    if spec != "auto":
        return spec
    boards = list_boards(ports)
    if not boards:
        vids = ", ".join(f"{v:04x}" for v in BOARD_VIDS)
        raise LinkError(f"no board found on a USB serial port (vendor ids {vids}): "
                        "name the port")
    if len(boards) > 1:
        names = ", ".join(f"{b.device} ({b.kind})" for b in boards)
        raise LinkError(f"{len(boards)} boards found: {names}; name the port")
    return boards[0].device


def open_serial(url: str, baudrate: int = 115200, poll: float = 0.02) -> serial.SerialBase:
    """Open a port or URL; reads return after `poll` seconds with what has arrived."""
    try:
        ser = serial.serial_for_url(url, do_not_open=True, baudrate=baudrate, timeout=poll)
        ser.open()
    except (serial.SerialException, ValueError, OSError) as e:
        raise LinkError(f"cannot open {url}: {e}") from None
    return ser


START_CODE = b"from edgebp.firmware.main import start\nstart()\n"
READY = b"edgebp ready"
RAW_REPL = b"raw REPL; CTRL-B to exit\r\n>"


def _read_until(ser, marks: tuple[bytes, ...], timeout: float) -> bytes:
    """Bytes read until one of `marks` ends them, or all read by the deadline."""
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data += ser.read(max(1, ser.in_waiting))
        except (serial.SerialException, OSError) as e:
            raise LinkError(f"read failed: {e}") from None
        if any(m in data for m in marks):
            break
    return data


def start_server(ser, code: bytes = START_CODE, timeout: float = 10.0,
                 prompt_timeout: float = 2.0) -> None:
    """Start the edgebp server from the board's REPL, as mpremote runs code: Ctrl-C,
    raw REPL (Ctrl-A), the code, Ctrl-D; then wait for the server's ready line."""
    try:
        ser.write(b"\r\x03\x03")  # stop a running program
        time.sleep(0.05)
        ser.reset_input_buffer()
        ser.write(b"\r\x01")
    except (serial.SerialException, OSError) as e:
        raise LinkError(f"write failed: {e}") from None
    if not _read_until(ser, (RAW_REPL,), prompt_timeout).endswith(RAW_REPL):
        raise NoReplError("no raw REPL prompt: is MicroPython running on the board, and no "
                          "other program (mpremote, a terminal) using the port?")
    ser.write(code + b"\x04")
    data = _read_until(ser, (READY, b"\x04>"), timeout)
    if READY in data:
        return
    if data.startswith(b"OK") and b"\x04" in data:
        # the code ran and stopped: its error output sits between the two Ctrl-Ds
        err = data[2:].split(b"\x04")[1].decode("utf-8", "replace").strip().splitlines()
        why = err[-1] if err else "it stopped at once"
        raise LinkError(f"the board could not start the edgebp server: {why} "
                        "(is the firmware deployed?)")
    raise LinkError("the board did not start the edgebp server "
                    f"(it answered {data[:60]!r})")


def back_to_repl(ser, timeout: float = 2.0, already: bytes = b"") -> bool:
    """After BYE: wait for the end of the raw REPL's run, then leave the raw REPL (Ctrl-B).
    `already`: what was read after the BYE answer (Link.unread()). True if the board's
    prompt came back."""
    data = already if b"\x04>" in already else already + _read_until(ser, (b"\x04>",), timeout)
    try:
        ser.write(b"\r\x02")
    except (serial.SerialException, OSError) as e:
        raise LinkError(f"write failed: {e}") from None
    return data.endswith(b"\x04>")


@dataclass
class Counters:
    frames: int = 0  # frames sent, first time
    resent: int = 0  # frames sent again
    timeouts: int = 0
    naks: int = 0  # link errors reported by the board
    bad: int = 0  # damaged frames received
    bytes_out: int = 0
    bytes_in: int = 0


@dataclass
class _Pending:
    seq: int
    kind: int
    data: bytes
    sent: float
    items: int = 0


@dataclass
class Link:
    """Frames over an open serial-like object (read, write, in_waiting, close)."""

    ser: Any  # a pyserial port, or anything with the same read/write/in_waiting/close
    timeout: float = 1.0  # time to wait for an answer beyond the wire and board time
    retries: int = 10  # tries without progress before giving up
    window: int = 127  # frames ahead of the answers, at most (the board's credits bound it)
    baudrate: int | None = None  # set for a real UART: waits grow with the bytes in flight
    counters: Counters = field(default_factory=Counters)

    def __post_init__(self) -> None:
        self.seq = 0
        self.credits = 1
        self.service = 0.0  # seconds the board spends per streamed frame (running average)
        self._dec = wire.Decoder(HOST_FRAME_MAX)
        self._buf = b""
        self._pos = 0

    # -- transport --

    def _write(self, data: bytes) -> None:
        try:
            self.ser.write(data)
        except (serial.SerialException, OSError) as e:
            raise LinkError(f"write failed: {e}") from None
        self.counters.bytes_out += len(data)

    def _read(self) -> bytes:
        try:
            n = self.ser.in_waiting
            return self.ser.read(max(1, n))
        except (serial.SerialException, OSError) as e:
            raise LinkError(f"read failed: {e}") from None

    def wire_time(self, nbytes: int) -> float:
        return 10.0 * nbytes / self.baudrate if self.baudrate else 0.0

    def resync(self) -> None:
        """Drop stale input and end any frame the board is half-way through."""
        try:
            self.ser.reset_input_buffer()
        except (serial.SerialException, OSError, AttributeError):
            pass
        self._buf = b""
        self._pos = 0
        self._write(FLUSH)

    def unread(self) -> bytes:
        """Bytes read from the port but not decoded yet (what followed the last frame)."""
        rest = self._buf[self._pos:]
        self._buf = b""
        self._pos = 0
        return rest

    def close(self) -> None:
        try:
            self.ser.close()
        except (serial.SerialException, OSError):
            pass

    def next_frame(self, deadline: float) -> Reply | None:
        """The next intact frame from the board, or None at the deadline."""
        dec = self._dec
        while True:
            if self._pos < len(self._buf):
                self._pos = dec.feed(self._buf, self._pos, len(self._buf))
                r = dec.result
                if r > 0:
                    seq, kind, payload = wire.parse(dec, r)
                    if kind & 0x80:
                        return Reply(seq, kind, payload)
                    # a request is no answer (loop:// or an echoing terminal sends it back)
                    self.counters.bad += 1
                    continue
                if r < 0 and r != wire.INCOMPLETE:
                    self.counters.bad += 1
                continue
            if time.monotonic() >= deadline:
                return None
            data = self._read()
            self.counters.bytes_in += len(data)
            self._buf = data
            self._pos = 0

    # -- requests --

    def _take_seq(self) -> int:
        s = self.seq
        self.seq = (s + 1) & 0xFF
        return s

    def request(self, kind: int, payload: bytes = b"", timeout: float | None = None,
                reply_bytes: int = 64, tries: int | None = None,
                resend_on_timeout: bool = True) -> Reply:
        """Send one frame, return its answer; DeviceError if the board refused it.

        resend_on_timeout=False resends only when the board reports it missed the frame
        (for BYE: after it the board is back at its REPL, which must not get frames).
        """
        name = wire.TYPE_NAMES.get(kind, str(kind))
        seq = self._take_seq()
        data = wire.frame(seq, kind, payload)
        wait = (timeout if timeout is not None else self.timeout) + self.wire_time(
            len(data) + reply_bytes)
        tries = tries if tries is not None else self.retries
        attempt = 1
        self.counters.frames += 1
        self._write(data)
        deadline = time.monotonic() + wait
        while True:
            r = self.next_frame(deadline)
            if r is None or (r.kind == wire.ERROR and r.code < wire.LINK_ERRORS):
                if r is None:
                    self.counters.timeouts += 1
                else:
                    self.counters.naks += 1
                    # the board wants this frame, or got it and the answer was lost
                    if r.seq not in (seq, (seq + 1) & 0xFF):
                        continue
                attempt += 1
                if attempt > tries or (r is None and not resend_on_timeout):
                    raise ProtocolError(f"{name}: no answer from the board after "
                                        f"{attempt - 1} tries: is the edgebp server running "
                                        "there?")
                self.counters.resent += 1
                self._write(FLUSH + data if r is None else data)
                deadline = time.monotonic() + wait
                continue
            if r.seq != seq:
                continue  # an answer repeated for an earlier frame
            if r.kind == wire.ERROR:
                raise DeviceError(r.code, r.text, name)
            return r

    def stream(self, frames: Iterable[tuple[int, bytes, int]],
               progress: Callable[[int], None] | None = None) -> None:
        """Send (kind, payload, items) frames ahead of the answers, up to the credits.

        `progress(items)` is called with the items of each frame as it is acknowledged.
        A refused frame stops the stream: the frames in flight are drained, then DeviceError.
        """
        it = iter(frames)
        out: list[_Pending] = []
        error: DeviceError | None = None
        more = True
        attempt = 0
        last = time.monotonic()  # last progress: an answer, or the stream's start
        while True:
            while more and error is None and len(out) < min(self.window, self.credits):
                try:
                    kind, payload, items = next(it)
                except StopIteration:
                    more = False
                    break
                seq = self._take_seq()
                p = _Pending(seq, kind, wire.frame(seq, kind, payload), time.monotonic(), items)
                self.counters.frames += 1
                self._write(p.data)
                out.append(p)
            if not out:
                break
            head = out[0]
            wait = self.timeout + 2 * self.service + self.wire_time(
                sum(len(p.data) for p in out) + 16)
            r = self.next_frame(max(head.sent, last) + wait)
            now = time.monotonic()
            if r is None:
                self.counters.timeouts += 1
                attempt += 1
                if attempt > self.retries:
                    raise ProtocolError(f"no answer from the board after {self.retries} tries")
                self._resend(out, FLUSH)
                continue
            seqs = [p.seq for p in out]
            if r.kind == wire.ERROR and r.code < wire.LINK_ERRORS:
                self.counters.naks += 1
                # the board expects r.seq: every frame before it arrived
                if r.seq in seqs:
                    done = seqs.index(r.seq)
                elif r.seq == self.seq:
                    done = len(out)
                else:
                    continue
                self._acked(out[:done], progress, now, last)
                del out[:done]
                if done:
                    last = now
                    attempt = 0
                else:
                    attempt += 1
                    if attempt > self.retries:
                        raise ProtocolError(f"board keeps refusing frames ({r.text})")
                self._resend(out, b"")
                continue
            if r.seq not in seqs:
                continue
            done = seqs.index(r.seq) + 1
            refused = out[done - 1].kind
            self._acked(out[:done], progress, now, last)
            del out[:done]
            last = now
            attempt = 0
            if r.kind == wire.ERROR:
                if error is None:
                    error = DeviceError(r.code, r.text, wire.TYPE_NAMES.get(refused, ""))
            elif r.kind == wire.ACK and r.payload:
                self.credits = max(1, r.payload[0])
        if error is not None:
            raise error

    def _resend(self, out: list[_Pending], prefix: bytes) -> None:
        if not out:
            return
        now = time.monotonic()
        for p in out:
            p.sent = now
        self.counters.resent += len(out)
        self._write(prefix + b"".join(p.data for p in out))

    def _acked(self, done: list[_Pending], progress, now: float, last: float) -> None:
        if not done:
            return
        # answers come one board-service-time apart while the board has work queued
        per = (now - max(done[0].sent, last)) / len(done)
        self.service = per if self.service == 0 else 0.8 * self.service + 0.2 * per
        if progress is not None:
            for p in done:
                progress(p.items)
