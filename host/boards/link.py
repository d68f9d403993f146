"""The host end of the edgebp wire protocol (frames: edgebp/wire.py).

Every port is opened with `serial.serial_for_url(url, do_not_open=True, ...)`, so a USB port,
`socket://host:port`, `rfc2217://`, `loop://` and `spy://` (a traffic dump) share one code path.

`Link.request()` sends one frame and waits for its answer. `Link.stream()` sends a sequence of
frames ahead of the answers, up to the board's credits, so the link and the board's work
overlap. Both resend on a timeout or when the board reports a damaged or missing frame; the
board drops repeats by sequence number, so what it processes is exactly what was sent, once.

On a bad line a long frame seldom arrives whole (each byte lost or damaged with chance p, a
frame of n bytes arrives with (1-p)**n), so the link adapts: after a lost answer it sends each
frame several times over (`copies`, doubled after each timeout, back to 1 as answers come) and
fetches a lost answer in short slices (AGAIN -> PART) instead of having the request done
again. It gives up by time, after `give_up` seconds without progress, and then says whether
the line (frames come back damaged, the board reports ours damaged) or the board (nothing
comes back) is to blame.

Errors are layered: LinkError (the transport) <- ProtocolError (no valid answer) <-
DeviceError (the board answered with an error code, decoded to words); LinkFailure and
VersionError are ProtocolErrors.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
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
MAX_COPIES = 8
_PART_HEAD = 5  # PART: kind, total u16, offset u16
_PART_MAX = 56  # payload bytes in one PART (the board's link buffer holds 57)


def _now() -> float:
    return time.monotonic()


def _assemble(parts: dict[int, bytes], total: int) -> bytes | None:
    # the answer's payload once the slices cover 0..total, else None
    out = b""
    for off in sorted(parts):
        if off > len(out):
            return None
        out = out[:off] + parts[off]
        if len(out) >= total:
            return out[:total]
    return out if len(out) >= total else None


def _legacy(f, n: int) -> bool:
    # an answer of a protocol-1 board, sealed with CRC-16: a link error or an INFO
    return (n >= wire.HEADER + 3 and f[1] in (wire.ERROR, wire.INFO)
            and wire.crc16(f, 0, n - 2) == f[n - 2] | (f[n - 1] << 8))


class LinkError(Exception):
    """The transport failed: the port is missing, busy or closed."""


class ProtocolError(LinkError):
    """The board did not answer as the protocol says (no answer, a malformed answer)."""


class LinkFailure(ProtocolError):
    """The line damages or loses so many frames that no answer got through in time."""


class VersionError(ProtocolError):
    """The board speaks another version of the protocol."""


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


_RECENT = 512


def _board_stopped(recent: bytes) -> str:
    """The last line of a MicroPython traceback among the bytes last read, or ""."""
    at = recent.rfind(b"Traceback (most recent call last)")
    if at < 0:
        return ""
    lines = [ln.strip() for ln in recent[at:].decode("utf-8", "replace").splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith(("Traceback", "File "))]
    return lines[-1][:120] if lines else ""


@dataclass
class Counters:
    frames: int = 0  # frames sent, first time
    resent: int = 0  # frames sent again
    timeouts: int = 0
    naks: int = 0  # link errors reported by the board
    bad: int = 0  # damaged frames received
    good: int = 0  # intact frames received
    written: int = 0  # frames written, every copy counted
    parts: int = 0  # answer slices received (PART)
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
    retries: int = 10  # tries at least, before giving up
    window: int = 127  # frames ahead of the answers, at most (the board's credits bound it)
    baudrate: int | None = None  # set for a real UART: waits grow with the bytes in flight
    counters: Counters = field(default_factory=Counters)
    give_up: float = 60.0  # seconds without progress before giving up

    def __post_init__(self) -> None:
        self.seq = 0
        self.credits = 1
        self.copies = 1  # times each frame is sent at a retry (see the module doc)
        self.legacy = 0  # protocol-1 answers seen
        self.service = 0.0  # seconds the board spends per streamed frame (running average)
        self._dec = wire.Decoder(HOST_FRAME_MAX)
        self._buf = b""
        self._pos = 0
        self._recent = b""  # the last bytes read: text the board printed, if it stopped

    # -- transport --

    def _write(self, data: bytes, frames: int = 1) -> None:
        self.counters.written += frames
        try:
            self.ser.write(data)
        except (serial.SerialException, OSError) as e:
            raise LinkError(f"write failed: {e}") from None
        self.counters.bytes_out += len(data)

    def _read(self, left: float) -> bytes:
        # what has arrived, waiting up to the port's poll time, but not much past `left`
        try:
            n = self.ser.in_waiting
            if not n and left < (getattr(self.ser, "timeout", None) or 0):
                time.sleep(min(left, 0.002))
                return b""
            data = self.ser.read(max(1, n))
        except (serial.SerialException, OSError) as e:
            raise LinkError(f"read failed: {e}") from None
        self._recent = (self._recent + data)[-_RECENT:]
        return data

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
        self._write(FLUSH, 0)

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
                        self.counters.good += 1
                        return Reply(seq, kind, payload)
                    # a request is no answer (loop:// or an echoing terminal sends it back)
                    self.counters.bad += 1
                    continue
                if r < 0 and r != wire.INCOMPLETE:
                    self.counters.bad += 1
                    if _legacy(dec.frame, dec.last):
                        self.legacy += 1
                continue
            left = deadline - _now()
            if left <= 0:
                return None
            data = self._read(left)
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
                resend_on_timeout: bool = True, give_up: float | None = None) -> Reply:
        """Send one frame, return its answer; DeviceError if the board refused it.

        Gives up after `tries` tries (default `retries`) once `give_up` seconds (default the
        link's) passed without progress. resend_on_timeout=False resends only when the board
        reports it missed the frame (for BYE: after it the board is back at its REPL, which
        must not get frames).
        """
        name = wire.TYPE_NAMES.get(kind, str(kind))
        seq = self._take_seq()
        data = wire.frame(seq, kind, payload)
        # BYE: a copy after the one processed would reach the REPL; HELLO: a copy is done again
        once = kind in (wire.BYE, wire.HELLO)
        tries = tries if tries is not None else self.retries
        give_up = self.give_up if give_up is None else give_up
        c = self.counters
        c0 = replace(c)
        attempt = 1
        done = False  # the board processed the frame: fetch its answer, do not resend it
        parts: dict[int, bytes] = {}  # slices of the answer by offset
        whole: tuple[int, int] | None = None  # (kind, length) of the answer, from a PART
        c.frames += 1
        n = 1 if once else self.copies
        self._write(data * n, n)
        start = progress = _now()
        deadline = start + self._wait(timeout, n * len(data), reply_bytes)
        while True:
            r = self.next_frame(deadline)
            if r is not None and r.kind == wire.PART:
                if r.seq != seq or len(r.payload) < _PART_HEAD:
                    continue  # a slice of an earlier answer
                c.parts += 1
                k, total, off = struct.unpack_from("<BHH", r.payload)
                if kind == wire.HELLO and k != wire.INFO:
                    continue  # the old session's last answer: HELLO is not done yet
                if whole != (k, total):
                    whole = (k, total)
                    parts.clear()
                parts[off] = r.payload[_PART_HEAD:]
                done = kind != wire.HELLO
                progress = _now()
                got = _assemble(parts, total)
                if got is None:
                    continue
                r = Reply(seq, k, got)
            if r is None:
                c.timeouts += 1
            elif r.kind == wire.ERROR and r.code < wire.LINK_ERRORS:
                c.naks += 1
                # the board wants this frame, or got it and the answer was lost
                if r.seq == (seq + 1) & 0xFF:
                    # (for HELLO it may be the old session's numbering: HELLO goes on being
                    # sent, and done again, until its answer is in)
                    done = kind != wire.HELLO
                elif r.seq != seq:
                    if kind == wire.HELLO:
                        continue  # the old session's numbering, until HELLO restarts it
                    # every earlier frame was answered: a board that expects another one
                    # has lost its place
                    raise LinkFailure(f"{name}: the board expects frame {r.seq}, not {seq}: "
                                      "it has lost its place (a reset?)")
            elif r.seq != seq:
                continue  # an answer repeated for an earlier frame
            else:
                self.copies = max(1, self.copies // 2)
                if r.kind == wire.ERROR:
                    raise DeviceError(r.code, r.text, name)
                return r
            if self.legacy and kind == wire.HELLO:
                raise VersionError(f"the board speaks protocol 1 (frames sealed with CRC-16), "
                                   f"this host {wire.PROTOCOL}: deploy the matching firmware")
            now = _now()
            if (attempt >= tries and now - progress >= give_up) or (
                    r is None and not resend_on_timeout):
                raise self._gave_up(name, attempt, now - start, c0)
            attempt += 1
            if r is None:
                self.copies = min(MAX_COPIES, self.copies * 2)
            n = 1 if once else self.copies
            out = []
            if not done:
                c.resent += 1
                out += [data] * n
            if kind != wire.BYE:
                out += self._agains(seq, parts, whole, reply_bytes, n)
            self._write((FLUSH if r is None else b"") + b"".join(out), len(out))
            deadline = _now() + self._wait(timeout, sum(map(len, out)), reply_bytes)

    def _wait(self, timeout: float | None, out_bytes: int, reply_bytes: int) -> float:
        return (timeout if timeout is not None else self.timeout) + self.wire_time(
            out_bytes + reply_bytes)

    def _agains(self, seq: int, parts: dict[int, bytes], whole, reply_bytes: int,
                n: int) -> list[bytes]:
        # AGAIN frames for the slices of the answer not received yet, each n times; slices
        # shorter the worse the line, so that one arrives whole now and then
        size = max(8, _PART_MAX // self.copies)
        total = whole[1] if whole else max(1, reply_bytes)
        have = sorted(parts.items())
        out = []
        pos = 0
        for off, b in have + [(total, b"")]:
            while pos < min(off, total):
                k = min(size, off - pos)
                out += [wire.frame(seq, wire.AGAIN, struct.pack("<HB", pos, k))] * n
                pos += k
            pos = max(pos, off + len(b))
        return out

    def _gave_up(self, name: str, tries: int, took: float, c0: Counters) -> ProtocolError:
        c = self.counters
        stopped = _board_stopped(self._recent)
        if stopped:
            # not the link: the server ended (out of memory, say) and MicroPython said why
            return ProtocolError(f"{name}: the board's server stopped: {stopped}")
        sent = c.written - c0.written
        if c.bytes_in == c0.bytes_in:
            if c.good:
                return LinkFailure(
                    f"{name}: serial link silent: no answer to {sent} frames in {took:.1f} s, "
                    f"after {c.good} answers before: check the cable, or the board stopped")
            return ProtocolError(f"{name}: no answer from the board after {tries} tries in "
                                 f"{took:.1f} s: is the edgebp server running there?")
        good = c.good - c0.good
        return LinkFailure(
            f"{name}: serial link failing: {sent - good} of {sent} frames damaged or lost in "
            f"{took:.1f} s ({c.bad - c0.bad} came back damaged, the board reported "
            f"{c.naks - c0.naks} of ours damaged or missing): check the cable and the baud rate")
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
        c = self.counters
        c0 = replace(c)
        start = last = _now()  # last progress: an answer, or the stream's start
        while True:
            while more and error is None and len(out) < min(self.window, self.credits):
                try:
                    kind, payload, items = next(it)
                except StopIteration:
                    more = False
                    break
                seq = self._take_seq()
                p = _Pending(seq, kind, wire.frame(seq, kind, payload), _now(), items)
                c.frames += 1
                self._write(p.data * self.copies, self.copies)
                out.append(p)
            if not out:
                break
            head = out[0]
            wait = self.timeout + 2 * self.service + self.wire_time(
                self.copies * sum(len(p.data) for p in out) + 16)
            r = self.next_frame(max(head.sent, last) + wait)
            now = _now()
            if r is None:
                c.timeouts += 1
                attempt += 1
                if attempt > self.retries and now - last >= self.give_up:
                    raise self._gave_up(wire.TYPE_NAMES.get(head.kind, ""), attempt,
                                        now - start, c0)
                self.copies = min(MAX_COPIES, self.copies * 2)
                self._resend(out, FLUSH)
                continue
            if r.kind == wire.PART:
                continue  # a slice of an earlier request's answer
            seqs = [p.seq for p in out]
            if r.kind == wire.ERROR and r.code < wire.LINK_ERRORS:
                c.naks += 1
                # the board expects r.seq: every frame before it arrived
                if r.seq in seqs:
                    done = seqs.index(r.seq)
                elif r.seq == self.seq:
                    done = len(out)
                else:
                    # every frame before the window was answered
                    raise LinkFailure(f"{wire.TYPE_NAMES.get(head.kind, '')}: the board "
                                      f"expects frame {r.seq}, not {head.seq}: it has lost "
                                      "its place (a reset?)")
                self._acked(out[:done], progress, now, last)
                del out[:done]
                if done:
                    last = now
                    attempt = 0
                else:
                    attempt += 1
                    if attempt > self.retries and now - last >= self.give_up:
                        raise self._gave_up(wire.TYPE_NAMES.get(head.kind, ""), attempt,
                                            now - start, c0)
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
            self.copies = max(1, self.copies // 2)
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
        now = _now()
        for p in out:
            p.sent = now
        self.counters.resent += len(out)
        n = self.copies
        self._write(prefix + b"".join(p.data * n for p in out), n * len(out))

    def _acked(self, done: list[_Pending], progress, now: float, last: float) -> None:
        if not done:
            return
        # answers come one board-service-time apart while the board has work queued
        per = (now - max(done[0].sent, last)) / len(done)
        self.service = per if self.service == 0 else 0.8 * self.service + 0.2 * per
        if progress is not None:
            for p in done:
                progress(p.items)
