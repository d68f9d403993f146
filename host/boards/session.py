"""A training session with one board: load a net, stream data, read weights and gradients.

    with Session("/dev/ttyACM0") as s:      # or "auto", "socket://...", "sim://", ...
        s.load(qnet, hyper)
        s.train(Xq, Tq, order)              # TRAIN frames streamed up to the board's credits
        W, B = s.get_weights()

Ports: a device path or pyserial URL; "auto" finds the one USB board; "sim://" (alias
"sim://cpython") starts the firmware in this process behind a pseudo-terminal, "sim://socket"
behind a TCP socket, "sim://micropython" in a unix MicroPython process (host/boards/sim.py).

Every method raises SessionError, one line for the user, with the link, protocol or device
error as its cause.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edgebp import dynfmt as core_dynfmt, fixed, wire
from edgebp.ebp import EbpError
from edgebp.host.boards.link import (
    DeviceError,
    Link,
    LinkError,
    NoReplError,
    ProtocolError,
    VersionError,
    back_to_repl,
    find_port,
    open_serial,
    start_server,
)
from edgebp.host.nets import ebpfile, planner
from edgebp.host.nets.qnet import Hyper, QuantNet

Progress = Callable[[int, int], None]
# INFO's kernel code (firmware/server.py _KERNELS)
KERNEL_NAMES = {0: "python", 1: "viper", 2: "native"}


class SessionError(Exception):
    """What went wrong, in one line; `code` is the board's error code if it refused."""

    def __init__(self, message: str, code: int = 0):
        super().__init__(message)
        self.code = code


class UnsavedError(SessionError):
    """An automatic checkpoint could not be written during training: the board learned
    `learned` samples of the call (`pending` of them in gradient sums not yet applied)."""

    def __init__(self, message: str, learned: int, pending: int):
        super().__init__(message, wire.E_CKPT)
        self.learned = learned
        self.pending = pending


@dataclass
class BoardInfo:
    protocol: int
    credits: int
    max_payload: int
    free_ram: int
    firmware: str
    runtime: str
    board: str
    sizes: list[int] | None = None  # the net loaded on the board, if any
    loss: int | None = None
    word: int = 0  # bytes per word of the board's heap (0: not MicroPython)
    holes: list[int] = field(default_factory=list)  # largest free heap blocks, in bytes
    kernels: str = ""  # the kernel set its nets run: "python", "viper", "native" ("": not said)
    holes_by_address: list[int] = field(default_factory=list)  # the same, lowest address
    # first, where the board knows the addresses (else empty)


@dataclass
class Stats:
    seen: int  # training samples since the last reset
    correct: int
    loss_sum: int  # Q12
    eval_seen: int
    eval_correct: int
    eval_loss_sum: int
    pending: int  # samples in the gradient sums not yet applied

    @property
    def loss(self) -> float:
        return self.loss_sum / 4096 / self.seen if self.seen else float("nan")

    @property
    def accuracy(self) -> float:
        return self.correct / self.seen if self.seen else float("nan")

    @property
    def eval_loss(self) -> float:
        return self.eval_loss_sum / 4096 / self.eval_seen if self.eval_seen else float("nan")

    @property
    def eval_accuracy(self) -> float:
        return self.eval_correct / self.eval_seen if self.eval_seen else float("nan")


@dataclass
class Checkpoint:
    """The board's checkpoint state (CKPT answer)."""

    gen: int  # number of the last checkpoint saved or restored, 0 if none
    saved: int  # the sample counter that checkpoint holds
    samples: int  # training samples learned since the net was loaded
    updates: int  # weight updates since the net was loaded
    every: int  # automatic checkpoint period in updates (0: on request only)
    pending: int  # samples in the gradient sums


@dataclass
class Result:
    samples: int
    loss: float  # mean per sample
    accuracy: float


@dataclass
class OnBoard:
    """A dataset file on the board, as its reader found it (DATASET with count 0)."""

    name: str
    records: int
    tag: bytes  # the input and target maps' tag (host/boards/ondata.py tag_of)


def _parse_info(p: bytes) -> BoardInfo:
    proto, credits, max_payload, free = struct.unpack_from("<BBHI", p, 0)
    pos = 8
    sizes = loss = None
    if p[pos]:
        L, loss = p[pos + 1], p[pos + 2]
        sizes = list(struct.unpack_from(f"<{L + 1}H", p, pos + 3))
        pos += 3 + 2 * (L + 1)
    else:
        pos += 1
    strings = []
    for _ in range(3):
        n = p[pos]
        strings.append(p[pos + 1:pos + 1 + n].decode("ascii", "replace"))
        pos += 1 + n
    word = p[pos] if pos < len(p) else 0
    holes: list[int] = []
    by_address: list[int] = []
    kernels = ""
    if pos + 1 < len(p):
        n = p[pos + 1]
        holes = list(struct.unpack_from(f"<{n}I", p, pos + 2))
        pos += 2 + 4 * n
        if pos < len(p):
            kernels = KERNEL_NAMES.get(p[pos], "")
        if pos + 1 < len(p) and p[pos + 1]:
            by_address = holes
        holes = sorted(holes, reverse=True)
    return BoardInfo(proto, credits, max_payload, free, firmware=strings[0], runtime=strings[1],
                     board=strings[2], sizes=sizes, loss=loss, word=word, holes=holes,
                     kernels=kernels, holes_by_address=by_address)


def _board_lost(e: SessionError) -> bool:
    # the board stopped answering, or answers as one that lost its net: a reset
    cause = e.__cause__
    if isinstance(cause, DeviceError):
        return cause.code == wire.E_NONET
    return isinstance(cause, LinkError)


def _open_sim(spec: str):
    from edgebp.host.boards import sim

    kind = spec[len("sim://"):] or "cpython"
    if kind == "cpython":
        return sim.InProcessBoard("pty")
    if kind == "socket":
        return sim.InProcessBoard("socket")
    if kind == "micropython":
        return sim.MicroPythonBoard()
    raise SessionError(f"unknown simulator {spec!r}: use sim://, sim://socket or "
                       "sim://micropython")


class Session:
    def __init__(self, port: str = "auto", *, baudrate: int = 115200, timeout: float = 1.0,
                 retries: int = 10, frame_bytes: int = 512, wrap=None,
                 connect_timeout: float = 5.0, start: bool = False, give_up: float = 60.0):
        """Open `port` and say HELLO. `wrap(serial) -> serial-like` interposes on the port
        (host/boards/lossy.py); `frame_bytes` bounds the frames sent (the board's limit also does).
        A request waits `timeout` for its answer before it is sent again, and fails after
        `give_up` seconds without progress (and at least `retries` tries); saying HELLO at the
        start fails after `connect_timeout`.
        start=True starts the server from the board's REPL unless it already answers, and
        bye() then leaves the board at its REPL prompt."""
        self.board = None
        self._said_bye = False
        self._started = False
        self.link: Link | None = None
        self.qnet: QuantNet | None = None
        self.frame_bytes = frame_bytes
        self.port = port
        self.baudrate = baudrate
        self.wrap = wrap
        try:
            with self._errors("connect"):
                if port.startswith("sim://"):
                    self.board = _open_sim(port)
                    port = self.board.url
                self.port = find_port(port)
                ser = open_serial(self.port, baudrate)
                is_uart = "://" not in self.port
                if wrap is not None:
                    ser = wrap(ser)
                self.link = Link(ser, timeout=timeout, retries=retries,
                                 baudrate=baudrate if is_uart else None, give_up=give_up)
                if start:
                    self._start(ser)
                self.link.resync()
            self.info = self.hello(connect_timeout)
        except BaseException:
            self.close()
            raise

    # -- plumbing --

    def _start(self, ser) -> None:
        # REPL first: its control bytes are harmless noise to a server already running (one
        # left by a session without BYE), while frames typed at a REPL are not (Ctrl-D, -E)
        self._started = True
        assert self.link is not None
        try:
            start_server(ser, prompt_timeout=max(0.5, 2 * self.link.timeout))
        except NoReplError as e:
            self.link.resync()
            try:
                self.link.request(wire.HELLO, bytes([wire.PROTOCOL]), timeout=0.3, tries=2,
                                  give_up=0)
            except ProtocolError:
                raise e from None

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except DeviceError as e:
            raise SessionError(f"{what}: the board refused: {e.word}"
                               + (f" ({e.text})" if e.text and e.text != e.word else ""),
                               e.code) from e
        except ProtocolError as e:
            raise SessionError(f"{what}: {e}") from e
        except LinkError as e:
            raise SessionError(f"{what}: {self.port}: {e}") from e
        except OSError as e:  # a simulator that could not start
            raise SessionError(f"{what}: {e}") from e

    @property
    def _link(self) -> Link:
        if self.link is None:
            raise SessionError("the session is closed")
        return self.link

    def _request(self, kind: int, payload: bytes = b"", reply_bytes: int = 64, **kw):
        return self._link.request(kind, payload, reply_bytes=reply_bytes, **kw)

    def close(self) -> None:
        if self.link is not None:
            self.link.close()
            self.link = None
        if self.board is not None:
            if not self._said_bye and hasattr(self.board, "kill"):
                self.board.kill()
            self.board.close()
            self.board = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def counters(self):
        return self.link.counters if self.link else None

    # -- requests --

    def hello(self, wait: float | None = None) -> BoardInfo:
        """Ask the board who it is (also restarts its sequence numbering)."""
        with self._errors("hello"):
            assert self.link is not None
            try:
                r = self._request(wire.HELLO, bytes([wire.PROTOCOL]), give_up=wait)
            except VersionError as e:
                raise SessionError(str(e)) from e
            if r.kind != wire.INFO:
                raise ProtocolError(f"HELLO answered with {wire.TYPE_NAMES.get(r.kind)}")
            try:
                info = _parse_info(r.payload)
            except (struct.error, IndexError):
                raise ProtocolError("malformed INFO answer") from None
        if info.protocol != wire.PROTOCOL:
            raise SessionError(f"the board speaks protocol {info.protocol}, this host "
                               f"{wire.PROTOCOL}: deploy the matching firmware")
        self.link.credits = info.credits
        self.info = info
        return info

    def _frame_limit(self) -> int:
        return max(16, min(self.info.max_payload, self.frame_bytes))

    def load(self, net: QuantNet | bytes | str | Path, hyper: Hyper | None = None,
             progress: Progress | None = None) -> None:
        """Send a net (a QuantNet with its hyper-parameters, or a .ebp file or its bytes).

        A load refused, by this host (the net does not fit, the file is bad) or by the board,
        ends a session that started the server (start=True): the board leaves the server
        for its REPL, where Ctrl-C and mpremote work again, and SessionError is raised."""
        try:
            self._load(net, hyper, progress)
        except SessionError as e:
            # not when the link failed: a board that does not answer is not told anything
            cause = e.__cause__
            if self._started and (isinstance(cause, DeviceError)
                                  or not isinstance(cause, LinkError)):
                try:
                    self.bye()
                except SessionError:
                    self.close()
            raise

    def _load(self, net, hyper, progress) -> None:
        try:
            if isinstance(net, QuantNet):
                qnet = net
                data = ebpfile.board_part(net, hyper)
            else:
                raw = Path(net).read_bytes() if isinstance(net, (str, Path)) else bytes(net)
                qnet, file_hyper = ebpfile.from_bytes(raw)
                data = ebpfile.board_part(qnet, hyper if hyper is not None else file_hyper)
        except (EbpError, OSError) as e:
            where = f"{net}: " if isinstance(net, (str, Path)) else ""
            raise SessionError(f"load: {where}{e}") from e
        self._check_fits(qnet.sizes, qnet.loss)
        try:
            plan = planner.check(qnet, self.info)
        except planner.PlanError as e:
            raise SessionError(f"load: {e}") from None
        if getattr(plan, "replaces", False):
            # the board keeps its net while it loads the next: this one fits only without it
            self.drop()
        step = self._frame_limit() - 4
        total = len(data)

        def chunks():
            for off in range(0, total, step):
                part = data[off:off + step]
                yield wire.LOAD_CHUNK, struct.pack("<I", off) + part, len(part)

        done = [0]

        def tick(n):
            done[0] += n
            if progress:
                progress(done[0], total)

        def send():
            done[0] = 0
            with self._errors("load"):
                self._request(wire.LOAD_BEGIN, struct.pack("<I", total))
                self._link.stream(chunks(), tick)
                self._request(wire.LOAD_COMMIT)

        try:
            send()
        except SessionError as e:
            if e.code != wire.E_ROOM:
                raise
            # the new net does not fit beside the board's: the user asked for the new one,
            # so the old one goes (the board never drops a net by itself)
            self.drop()
            send()
        self.qnet = qnet
        self.info.sizes = list(qnet.sizes)
        self.info.loss = qnet.loss

    def _check_fits(self, sizes, loss) -> None:
        n_t = 1 if loss == fixed.SOFTMAX_CE else sizes[-1]
        need = 2 + 2 * (sizes[0] + n_t)
        if need > self.info.max_payload:
            raise SessionError(f"one sample needs a {need}-byte frame but the board's frames "
                               f"hold {self.info.max_payload} bytes: raise max_payload in "
                               "its profile")

    def drop(self) -> None:
        """Have the board let go of its net (a load or a resume keeps it until the new
        one is whole, which two big nets may not leave room for)."""
        with self._errors("drop the board's net"):
            self._request(wire.DROP)
        self.qnet = None
        self.info.sizes = None
        self.info.loss = None

    def set_hyper(self, hyper: Hyper) -> None:
        try:
            block = ebpfile.hyper_block(hyper)
        except EbpError as e:
            raise SessionError(f"set hyper-parameters: {e}") from e
        with self._errors("set hyper-parameters"):
            self._request(wire.SET_HYPER, block)

    def stats(self, reset: bool = False) -> Stats:
        with self._errors("stats"):
            r = self._request(wire.STATS, bytes([1 if reset else 0]))
        return Stats(*struct.unpack_from("<6IH", r.payload, 0))

    def _net(self) -> tuple[list[int], int]:
        if not self.info.sizes or self.info.loss is None:
            raise SessionError("no net on the board: load one first")
        return self.info.sizes, self.info.loss

    def _samples(self, Xq, Tq, order) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sizes, loss = self._net()
        n_t = 1 if loss == fixed.SOFTMAX_CE else sizes[-1]
        X = np.asarray(Xq)
        T = np.asarray(Tq)
        if T.ndim == 1:
            T = T.reshape(-1, 1)
        if X.ndim != 2 or X.shape[1] != sizes[0]:
            raise SessionError(f"inputs have shape {X.shape}, the net takes {sizes[0]} values")
        if T.shape != (len(X), n_t):
            raise SessionError(f"targets have shape {T.shape}, expected ({len(X)}, {n_t})")
        for name, a in (("inputs", X), ("targets", T)):
            if a.size and (a.min() < -32767 or a.max() > 32767):
                raise SessionError(f"{name} outside the int16 range [-32767, 32767]: "
                                   "quantise them first")
        if loss == fixed.SOFTMAX_CE and T.size and (T.min() < 0 or T.max() >= sizes[-1]):
            raise SessionError(f"class indices must lie in 0..{sizes[-1] - 1}")
        idx = np.arange(len(X)) if order is None else np.asarray(order, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(X)):
            raise SessionError("order holds an index beyond the samples")
        return X.astype("<i2"), T.astype("<i2"), idx

    def _stream_samples(self, kind: int, X, T, idx, flags_last: int, flags: int,
                        progress: Progress | None) -> None:
        per = max(1, min(255, (self._frame_limit() - 2) // (2 * (X.shape[1] + T.shape[1]))))
        total = len(idx)

        def frames():
            for i in range(0, total, per):
                sel = idx[i:i + per]
                f = flags | (flags_last if i + per >= total else 0)
                body = np.concatenate([X[sel], T[sel]], axis=1).astype("<i2").tobytes()
                yield kind, bytes([len(sel), f]) + body, len(sel)
            if total == 0 and flags_last:
                yield kind, bytes([0, flags_last]), 0

        done = [0]

        def tick(n):
            done[0] += n
            if progress:
                progress(done[0], total)

        self._link.stream(frames(), tick)

    def train(self, Xq, Tq, order=None, *, accumulate: bool = False, update: bool = False,
              progress: Progress | None = None, resume: bool = False,
              max_resets: int = 3, reconnect_wait: float = 10.0) -> Result:
        """Train on the samples in `order` (default: as given), exactly as Net.learn would.

        accumulate: forward and backward only, the gradient sums grow (see get_grads);
        update: apply the pending gradient sums after the last sample.
        resume: survive resets of the board (up to `max_resets`). A checkpoint is saved first
        unless the board's last one is of this moment; when the link then fails, the session
        reconnects, the board restores its newest checkpoint and reports the sample counter
        in it, and the stream goes on from that sample of `order`: no sample is lost or
        learned twice, and the weights end as if nothing had happened. checkpoint(every=N)
        first bounds what is repeated.
        """
        X, T, idx = self._samples(Xq, Tq, order)
        flags = wire.F_ACCUMULATE if accumulate else 0
        last = wire.F_UPDATE if update else 0
        with self._errors("train"):
            self._request(wire.STATS, b"\x01")
        start = pos = 0
        if resume:
            ck = self.checkpoint_state()
            if ck.gen == 0 or ck.saved != ck.samples or ck.pending:
                ck = self.checkpoint()
            start = ck.samples
        resets = 0
        while True:

            def tick(done: int, _total: int, pos: int = pos) -> None:
                if progress:
                    progress(pos + done, len(idx))

            try:
                with self._errors("train"):
                    self._stream_samples(wire.TRAIN, X, T, idx[pos:], last, flags, tick)
                st = self.stats()
                break
            except SessionError as e:
                if e.code == wire.E_CKPT:
                    raise self._unsaved(e, len(idx)) from e
                if not resume or resets >= max_resets or not _board_lost(e):
                    raise
            resets += 1
            self.reconnect(reconnect_wait)
            ck = self.resume()
            if not start <= ck.samples <= start + len(idx):
                raise SessionError(f"train: the board resumed at sample {ck.samples}, outside "
                                   f"this call's samples {start}..{start + len(idx)}")
            pos = ck.samples - start
        if st.seen != len(idx):
            raise SessionError(f"train: the board counted {st.seen} samples of {len(idx)} sent")
        return Result(st.seen, st.loss, st.accuracy)

    # -- training from a dataset file on the board --

    def _dataset(self, name: str, flags: int, state: int, start: int, count: int,
                 what: str, timeout: float | None = None) -> tuple[Stats, int, bytes]:
        raw = name.encode("ascii", "replace")
        payload = struct.pack("<BIIIB", flags, state, start, count, len(raw)) + raw
        with self._errors(what):
            r = self._request(wire.DATASET, payload, reply_bytes=34, timeout=timeout)
            if r.kind != wire.COUNTS or len(r.payload) != 34:
                raise ProtocolError(f"{what}: malformed answer")
        records, = struct.unpack_from("<I", r.payload, 26)
        return Stats(*struct.unpack_from("<6IH", r.payload, 0)), records, r.payload[30:34]

    def dataset(self, name: str) -> OnBoard:
        """Open the dataset `name` on the board (its reader checks all of it) without
        learning anything: its records and tag."""
        self._net()
        _, records, tag = self._dataset(name, 0, 0, 0, 0, f"dataset {name}",
                                        timeout=self._link.timeout + 60.0)
        return OnBoard(name, records, tag)

    def _slices(self, name: str, flags: int, state: int, first: int, end: int,
                what: str, progress: Progress | None, slice_seconds: float,
                base: int) -> Stats:
        # records first..end-1 as DATASET requests each taking about slice_seconds on the
        # board (sized from the rate of the ones before): every answer is progress
        size, pos, st = 16, first, None
        rate = 0.0
        while pos < end or st is None:
            n = min(size, end - pos)
            last = flags if pos + n >= end else flags & ~wire.F_UPDATE
            expect = n / rate if rate else 1.0
            t0 = time.monotonic()
            st, _, _ = self._dataset(name, last, state, pos, n, what,
                                     timeout=self._link.timeout + 3 * expect)
            took = time.monotonic() - t0
            pos += n
            if progress:
                progress(pos - base, end - base)
            if n and took > 0:
                rate = n / took
                size = max(1, min(65535, int(rate * slice_seconds)))
        return st

    def train_on_board(self, name: str, state: int, n: int, start: int = 0, *,
                       update: bool = True, progress: Progress | None = None,
                       resume: bool = False, max_resets: int = 3,
                       reconnect_wait: float = 10.0, slice_seconds: float = 1.0) -> Result:
        """Learn records start..n-1 of the order that xorshift30 state `state` draws over
        the board's dataset `name` of n records (0: file order; the host's twin is
        edgebp.host.nets.reference.epoch_order): exactly as train() streaming those samples
        in that order would. Sent as slices of about `slice_seconds` of the board's time.
        resume: as for train(), a reset of the board is survived from its checkpoint."""
        flags = wire.F_UPDATE if update else 0
        with self._errors("train"):
            self._request(wire.STATS, b"\x01")
        base = 0  # the board's sample counter at record 0 of this order
        if resume:
            ck = self.checkpoint_state()
            if ck.gen == 0 or ck.saved != ck.samples or ck.pending:
                ck = self.checkpoint()
            base = ck.samples - start
        pos, resets = start, 0
        while True:
            try:
                st = self._slices(name, flags, state, pos, n, "train", progress,
                                  slice_seconds, start)
                break
            except SessionError as e:
                if e.code == wire.E_CKPT:
                    raise self._unsaved(e, n - start) from e
                if not resume or resets >= max_resets or not _board_lost(e):
                    raise
            resets += 1
            self.reconnect(reconnect_wait)
            ck = self.resume()
            if not base + start <= ck.samples <= base + n:
                raise SessionError(f"train: the board resumed at sample {ck.samples}, outside "
                                   f"this call's samples {base + start}..{base + n}")
            pos = ck.samples - base
        if st.seen != n - start:
            raise SessionError(f"train: the board counted {st.seen} samples of {n - start}")
        return Result(st.seen, st.loss, st.accuracy)

    def evaluate_on_board(self, name: str, n: int, progress: Progress | None = None,
                          slice_seconds: float = 1.0) -> Result:
        """Loss and accuracy of the board's net on its dataset `name` (n records)."""
        with self._errors("evaluate"):
            self._request(wire.STATS, b"\x01")
        st = self._slices(name, wire.D_EVAL, 0, 0, n, "evaluate", progress, slice_seconds, 0)
        if st.eval_seen != n:
            raise SessionError(f"evaluate: the board counted {st.eval_seen} samples of {n}")
        return Result(st.eval_seen, st.eval_loss, st.eval_accuracy)

    def _unsaved(self, e: SessionError, sent: int) -> UnsavedError:
        # An automatic checkpoint failed inside a TRAIN frame: the board stopped that frame
        # after the update, and learned the frames already in flight. What it learned, from
        # its counters (reset when this call began): one line for the user.
        cause = e.__cause__
        why = cause.text if isinstance(cause, DeviceError) else str(e)
        st = self.stats()
        ck = self.checkpoint_state()
        last = (f"its last checkpoint holds sample {ck.saved}" if ck.gen
                else "it holds no checkpoint")
        return UnsavedError(
            f"train: the board could not write its automatic checkpoint ({why}): it learned "
            f"{st.seen} of the {sent} samples sent and its weights hold them ({st.pending} "
            f"in gradient sums not yet applied); {last}", st.seen, st.pending)

    def evaluate(self, Xq, Tq, order=None, progress: Progress | None = None) -> Result:
        """Loss and accuracy of the board's net on the samples, without learning."""
        X, T, idx = self._samples(Xq, Tq, order)
        with self._errors("evaluate"):
            self._request(wire.STATS, b"\x01")
            self._stream_samples(wire.EVAL, X, T, idx, 0, 0, progress)
        st = self.stats()
        if st.eval_seen != len(idx):
            raise SessionError(f"evaluate: the board counted {st.eval_seen} samples of "
                               f"{len(idx)} sent")
        return Result(st.eval_seen, st.eval_loss, st.eval_accuracy)

    def _tensor(self, kind: int, layer: int, part: int, n: int, size: int) -> np.ndarray:
        step = max(1, (self._frame_limit() - 8) // size)
        dtype = "<i2" if size == 2 else "<i4"
        out = np.empty(n, dtype)
        for off in range(0, n, step):
            count = min(step, n - off)
            head = struct.pack("<BBIH", layer, part, off, count)
            r = self._request(kind, head, reply_bytes=8 + count * size)
            if r.kind != wire.DATA or r.payload[:8] != head or len(r.payload) != 8 + count * size:
                raise ProtocolError(f"malformed answer for layer {layer + 1} values {off}..")
            out[off:off + count] = np.frombuffer(r.payload, dtype, count, 8)
        return out

    def _tensors(self, kind: int, size: int, what: str):
        sizes, _ = self._net()
        Ws, Bs = [], []
        with self._errors(what):
            for l in range(len(sizes) - 1):
                n_in, n_out = sizes[l], sizes[l + 1]
                Ws.append(self._tensor(kind, l, wire.PART_W, n_in * n_out, size)
                          .reshape(n_out, n_in))
                Bs.append(self._tensor(kind, l, wire.PART_B, n_out, size))
        return Ws, Bs

    # -- checkpoints --

    def _ckpt(self, kind: int, payload: bytes, what: str) -> Checkpoint:
        with self._errors(what):
            r = self._request(kind, payload, timeout=self._link.timeout + 30.0)
            if r.kind != wire.CKPT or len(r.payload) != 20:
                raise ProtocolError(f"{what}: malformed answer")
        return Checkpoint(*struct.unpack("<4I2H", r.payload))

    def checkpoint(self, every: int | None = None, now: bool = True) -> Checkpoint:
        """Save the board's training state to its filesystem now (now=True) and/or set the
        period of automatic checkpoints: after every `every` weight updates, 0 for none."""
        flags = (wire.CK_NOW if now else 0) | (wire.CK_EVERY if every is not None else 0)
        if every is not None and not 0 <= every <= 65535:
            raise SessionError(f"checkpoint period {every} outside 0..65535 updates")
        return self._ckpt(wire.CHECKPOINT, struct.pack("<BH", flags, every or 0), "checkpoint")

    def checkpoint_state(self) -> Checkpoint:
        return self._ckpt(wire.CHECKPOINT, b"\x00\x00\x00", "checkpoint state")

    def resume(self) -> Checkpoint:
        """Replace the board's net by its newest valid checkpoint; `samples` in the answer
        is where training goes on (samples learned since the net was loaded)."""
        try:
            st = self._ckpt(wire.RESUME, b"", "resume")
        except SessionError as e:
            if e.code != wire.E_ROOM:
                raise
            self.drop()  # the checkpoint's net fits only without the board's
            st = self._ckpt(wire.RESUME, b"", "resume")
        self.hello()
        return st

    def reconnect(self, wait: float = 10.0) -> BoardInfo:
        """Open the port again after a reset of the board and say HELLO (starting the
        server from the REPL first if this session started it)."""
        deadline = time.monotonic() + wait
        old = self._link
        with self._errors("reconnect"):
            old.close()
            while True:
                try:
                    ser = open_serial(self.port, self.baudrate)
                    break
                except LinkError:
                    # a USB board comes back a moment after its reset
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(0.1)
            if self.wrap is not None:
                ser = self.wrap(ser)
            self.link = Link(ser, timeout=old.timeout, retries=old.retries,
                             baudrate=old.baudrate, counters=old.counters,
                             give_up=old.give_up)
            if self._started:
                self._start(ser)
            self.link.resync()
        return self.hello(max(0.5, deadline - time.monotonic()))

    def get_weights(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """(W, B) per layer: int16, W of shape (n_out, n_in)."""
        return self._tensors(wire.GET_WEIGHTS, 2, "get weights")

    def get_grads(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The pending gradient sums (GW, GB) per layer, int32: see QuantNet.grad_scale."""
        return self._tensors(wire.GET_GRADS, 4, "get gradients")

    def pull(self) -> QuantNet:
        """The net loaded in this session, with the board's current weights."""
        if self.qnet is None:
            raise SessionError("pull: no net was loaded in this session")
        Ws, Bs = self.get_weights()
        if self.qnet.dyn is None:
            return replace(self.qnet, W=Ws, B=Bs)
        # formats that follow the weights: the board's now
        with self._errors("get weight formats"):
            now = self._tensor(wire.GET_WEIGHTS, 0, wire.PART_F, self.qnet.L, 2)
        q = self.qnet
        sw = [int(v) for v in now]
        # the formats that follow them (edgebp.dynfmt.derived, from the formats loaded)
        sa, sd = core_dynfmt.derived(q.acts, q.shift_a, q.shift_d, q.shift_w, sw)
        return replace(q, W=Ws, B=Bs, shift_w=sw, shift_a=sa, shift_d=sd)

    def bye(self) -> bool:
        """End the session: the board leaves the server and its REPL is back.

        False if the board did not confirm (its answer may be lost: BYE is not sent again
        after a timeout, since a board that got it reads its REPL again).
        """
        if self.link is None:
            return False
        try:
            with self._errors("bye"):
                self._request(wire.BYE, resend_on_timeout=False)
            confirmed = True
        except SessionError as e:
            if isinstance(e.__cause__, DeviceError) or not isinstance(e.__cause__,
                                                                     ProtocolError):
                raise
            confirmed = False
        self._said_bye = True
        if confirmed and self._started:
            with self._errors("bye"):
                confirmed = back_to_repl(self.link.ser, already=self.link.unread())
        self.close()
        return confirmed
