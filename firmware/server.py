# The training server: answers edgebp wire frames (edgebp/wire.py) on one byte stream.
#
# Input is a stream with readinto(buf, n) -> count (None: nothing yet; 0: end of input),
# output one with write(buf, n): sys.stdin.buffer and sys.stdout.buffer, or one machine.UART.
# Every buffer is made in the constructor or when a net is loaded; serving TRAIN and EVAL
# frames allocates nothing.
#
# Reliability: frames carry a sequence number. A frame with the expected number is processed
# and answered with the same number; the encoded answer is kept, and a repeated frame (the
# host's retransmission after a lost answer) gets it again without being processed twice. A
# frame that is damaged or ahead of the expected number is answered with an ERROR carrying
# the expected number (once per gap, so a burst of frames after a lost one costs one answer;
# an empty frame, which the host sends to resynchronise, re-arms it). AGAIN asks for a slice of
# the kept answer, so a host on a bad line can fetch a long answer in pieces short enough to
# arrive whole; the slice goes out through the link buffers, which keeps the answer intact.
#
# Checkpoints (edgebp/ckpt.py) go to the directory `root` of the board's filesystem: on
# CHECKPOINT, and once CHECKPOINT set a period, right after every `every`-th weight update
# (inside a TRAIN frame if the update falls there). RESUME brings the newest valid one back.
# Saving allocates file objects: it runs between training steps, never inside one.
#
# DATASET trains (or evaluates) from a dataset file on the board's filesystem (edgebp/dataset.py,
# under `root`), in the order the host names by its shuffle state, exactly as TRAIN frames
# holding those samples would; the file is checked whole when a session first opens it, and
# reading a sample allocates nothing.
#
# A net being loaded (LOAD_BEGIN .. LOAD_COMMIT) or restored (RESUME) is built beside the one
# in use, which it replaces only once it is whole: a load refused leaves the board's net as it
# was. Where the new net does not fit beside it, the board answers E_ROOM with the bytes
# needed and free, and keeps its net; the host that wants the new one sends DROP first.
#
# `heap`: a RAM budget in bytes for a host without gc.mem_free (CPython, a simulated board):
# a net is refused before it is allocated if the budget cannot hold it beside what the
# server holds, as on a board of that heap. 0: no limit.

import gc
import sys

import edgebp
from edgebp import ckpt, ebp, wire
from edgebp.fixed import SMALL_MAX, SOFTMAX_CE, const
from edgebp.net import zeros
from edgebp.wire import (
    ACK,
    CK_EVERY,
    CK_NOW,
    CKPT,
    COUNTS,
    D_EVAL,
    DATA,
    E_CKPT,
    E_DATA,
    E_EBP,
    E_INTERNAL,
    E_LEN,
    E_MEM,
    E_NONET,
    E_RANGE,
    E_ROOM,
    E_SEQ,
    E_STATE,
    E_TYPE,
    E_VALUE,
    EOF,
    ERROR,
    F_ACCUMULATE,
    F_UPDATE,
    HEADER,
    INFO,
    PART,
    TRAILER,
)

_TEXT_MAX = const(60)
_DATA_HEAD = const(8)  # layer, part, offset u32, count u16

_LINK_TEXT = (b"", b"crc mismatch", b"malformed frame", b"frame longer than the buffer",
              b"frame out of sequence")


def _text(s, limit=_TEXT_MAX):
    # a message as bytes for a frame (error path: may allocate)
    b = s if isinstance(s, bytes) else str(s).encode()
    return b[:limit]


class Server:
    def __init__(self, rx, tx=None, max_payload=1024, credits=4, board="generic",
                 kernels=None, root="", probe=False, heap=0):
        if max_payload < 128 or max_payload > 65535:
            raise ValueError("max_payload %d outside 128..65535" % max_payload)
        if credits < 1 or credits > 127:
            raise ValueError("credits %d outside 1..127" % credits)
        self.rd = rx.readinto
        self.wr = (tx if tx is not None else rx).write
        self.max_payload = max_payload
        self.credits = credits
        if kernels is None:
            # chosen now, not at the first load: importing the native or viper kernels puts
            # their machine code on the heap, which the free RAM reported at HELLO must
            # already show (where compiling them does not fit, each load tries again)
            from edgebp.kern import select

            try:
                kernels = select()
            except MemoryError:
                pass
        self.kernels = kernels
        size = HEADER + max_payload + TRAILER
        self.dec = wire.Decoder(size)
        self.out = bytearray(size)  # the answer being built, then the last answer
        self.out_n = 0
        self.tx = bytearray(wire.encoded_max(size))  # the last answer, encoded
        self.tx_n = 0
        # link errors and slices of the last answer: keep out and tx intact
        self.lout = bytearray(HEADER + 2 + _TEXT_MAX + TRAILER)
        self.ltx = bytearray(wire.encoded_max(len(self.lout)))
        self.expect = 0
        self.naked = -1  # expected seq of the last link error sent
        self.running = True
        impl = sys.implementation
        v = impl.version
        self.strings = (
            _text(edgebp.__version__, 32),
            _text("%s %d.%d.%d %s" % (impl.name, v[0], v[1], v[2], sys.platform), 32),
            _text(board, 32),
        )
        self.net = None
        self.loader = None
        self.x = _int16s(0)  # a sample's inputs and targets, sized when a net is loaded
        self.t = _int16s(0)
        self.e_seen = 0
        self.e_correct = 0
        self.e_loss = 0
        self.root = root  # checkpoints live here
        self.probe = probe  # report the heap's largest free blocks at HELLO
        self.samples_in = 0  # training samples learned since the net was loaded
        self.updates = 0  # weight updates since the net was loaded
        self.every = 0  # checkpoint after this many updates (0: on request only)
        self.gen = 0  # generation of the last checkpoint saved or restored
        self.saved = 0  # samples_in at that checkpoint
        self.saved_updates = 0
        self.unsaved = False  # an automatic checkpoint failed: TRAIN is held (see save_or_fail)
        self.data = None  # the dataset file last opened (edgebp/dataset.py), checked whole
        self.data_state = 0  # the xorshift30 state whose order data.offs holds
        self.heap = 0 if hasattr(gc, "mem_free") else heap
        # what the buffers above take of the budget
        self.held = 2 * size + len(self.tx) + len(self.lout) + len(self.ltx)

    # -- the loop --

    def serve(self):
        while self.step():
            pass

    def step(self):
        # Serve one frame; False at the end of the input or after BYE.
        r = self.dec.read(self.rd)
        if r == EOF:
            return False
        if r < 0:
            if not self.old_hello():
                self.link_error(-r)
            return True
        if r == 0:
            self.naked = -1
            return True
        f = self.dec.frame
        seq = f[0]
        kind = f[1]
        d = (seq - self.expect) & 0xFF
        if kind == wire.AGAIN:
            if d == 255 and self.tx_n:
                self.part(seq, r - HEADER)
            elif d == 0:
                self.link_error(E_SEQ)  # not processed yet: the host sends it again
            return True
        if kind == wire.HELLO:
            self.expect = seq  # a new session: its first number is the expected one
            d = 0
        if d:
            if d < 128:
                self.link_error(E_SEQ)
            elif self.tx_n:
                self.wr(self.tx, self.tx_n)
            return True
        self.expect = (seq + 1) & 0xFF
        self.naked = -1
        try:
            self.dispatch(seq, kind, r - HEADER)
        except MemoryError:
            self.fail(seq, E_MEM, b"out of memory")
        except Exception as e:
            self.fail(seq, E_INTERNAL, _text("%s: %s" % (type(e).__name__, e)))
        return self.running

    def dispatch(self, seq, kind, n):
        if kind == wire.TRAIN:
            self.samples(seq, n, True)
        elif kind == wire.EVAL:
            self.samples(seq, n, False)
        elif kind == wire.LOAD_CHUNK:
            self.load_chunk(seq, n)
        elif kind == wire.HELLO:
            self.hello(seq)
        elif kind == wire.LOAD_BEGIN:
            self.load_begin(seq, n)
        elif kind == wire.LOAD_COMMIT:
            self.load_commit(seq, n)
        elif kind == wire.GET_WEIGHTS:
            self.get_tensor(seq, n, False)
        elif kind == wire.GET_GRADS:
            self.get_tensor(seq, n, True)
        elif kind == wire.SET_HYPER:
            self.set_hyper(seq, n)
        elif kind == wire.STATS:
            self.stats(seq, n)
        elif kind == wire.CHECKPOINT:
            self.checkpoint(seq, n)
        elif kind == wire.RESUME:
            self.resume(seq, n)
        elif kind == wire.DATASET:
            self.dataset(seq, n)
        elif kind == wire.DROP:
            self.drop_net()
            self.ack(seq)
        elif kind == wire.BYE:
            self.running = False
            self.ack(seq)
        else:
            self.fail(seq, E_TYPE, b"unknown message type")

    # -- answers --

    def send(self, seq, kind, n):
        # send out[HEADER:HEADER+n] as the answer to frame seq and keep it for repeats
        out = self.out
        out[0] = seq
        out[1] = kind
        m = wire.seal(out, HEADER + n)
        self.out_n = m
        self.tx_n = wire.encode(out, m, self.tx)
        self.wr(self.tx, self.tx_n)

    def ack(self, seq):
        self.out[HEADER] = self.credits
        self.send(seq, ACK, 1)

    def fail(self, seq, code, text):
        out = self.out
        out[HEADER] = code
        n = len(text)
        for i in range(n):
            out[HEADER + 1 + i] = text[i]
        self.send(seq, ERROR, 1 + n)

    def link_error(self, code):
        # the frame was not processed: ask for the expected one, once per gap
        if self.naked == self.expect:
            return
        self.naked = self.expect
        out = self.lout
        out[0] = self.expect
        out[1] = ERROR
        out[2] = code
        text = _LINK_TEXT[code] if code < len(_LINK_TEXT) else b""
        for i in range(len(text)):
            out[3 + i] = text[i]
        m = wire.seal(out, 3 + len(text))
        self.wr(self.ltx, wire.encode(out, m, self.ltx))

    def part(self, seq, n):
        # AGAIN [offset u16][count u8]: PART [kind][total u16][offset u16] + payload bytes
        if n != 3:
            return
        f = self.dec.frame
        off = f[HEADER] | (f[HEADER + 1] << 8)
        count = f[HEADER + 2]
        total = self.out_n - HEADER - TRAILER
        out = self.lout
        room = len(out) - HEADER - 5 - TRAILER
        if off > total:
            off = total
        if count > total - off:
            count = total - off
        if count > room:
            count = room
        src = self.out
        out[0] = seq
        out[1] = PART
        out[2] = src[1]
        _put16(out, 3, total)
        _put16(out, 5, off)
        for i in range(count):
            out[7 + i] = src[HEADER + off + i]
        m = wire.seal(out, 7 + count)
        self.wr(self.ltx, wire.encode(out, m, self.ltx))

    def old_hello(self):
        # A host of protocol 1 says HELLO in 5 bytes sealed with CRC-16. Answer it in its own
        # format, an INFO with this protocol's number and nothing else, so that it can say
        # which side to update instead of finding no board.
        f = self.dec.frame
        if self.dec.last != 5 or f[1] != wire.HELLO or wire.crc16(f, 0, 3) != f[3] | (f[4] << 8):
            return False
        out = self.lout
        out[0] = f[0]
        out[1] = INFO
        out[2] = wire.PROTOCOL
        out[3] = self.credits
        _put16(out, 4, self.max_payload)
        for i in range(6, 14):
            out[i] = 0  # free RAM unknown, no net, three empty strings
        c = wire.crc16(out, 0, 14)
        out[14] = c & 0xFF
        out[15] = c >> 8
        self.wr(self.ltx, wire.encode(out, 16, self.ltx))
        return True

    # -- requests --

    def hello(self, seq):
        out = self.out
        p = HEADER
        out[p] = wire.PROTOCOL
        out[p + 1] = self.credits
        _put16(out, p + 2, self.max_payload)
        holes, by_address = _holes() if self.probe else ((), False)
        free = 0
        if hasattr(gc, "mem_free"):
            gc.collect()  # garbage is free RAM too
            free = gc.mem_free()
        _put32(out, p + 4, free)
        net = self.net
        p += 8
        if net is None:
            out[p] = 0
            p += 1
        else:
            out[p] = 1
            out[p + 1] = net.L
            out[p + 2] = net.loss_kind
            p += 3
            for n in net.sizes:
                _put16(out, p, n)
                p += 2
        for s in self.strings:
            out[p] = len(s)
            for i in range(len(s)):
                out[p + 1 + i] = s[i]
            p += 1 + len(s)
        out[p] = _WORD
        out[p + 1] = len(holes)
        p += 2
        for h in holes:
            _put32(out, p, h)
            p += 4
        out[p] = _KERNELS.get(getattr(self.kernels, "__name__", ""), 0)
        out[p + 1] = 1 if by_address else 0
        self.send(seq, INFO, p + 2 - HEADER)

    def drop_net(self):
        self.net = None
        self.loader = None
        self.data = None
        gc.collect()

    def budget_free(self):
        # the bytes of the RAM budget not held by the server's buffers and its net
        net = self.net
        used = self.held + 2 * (len(self.x) + len(self.t))
        if net is not None:
            used += ebp.net_need(net)
        return max(0, self.heap - used)

    def _mem_free(self):
        # what a loader checks a net against: the budget, or (None) the heap's own count
        return self.budget_free if self.heap else None

    def refuse_room(self, seq, e):
        # a net that does not fit: E_ROOM if it might fit were the board's net dropped, else
        # (no net, or too little room even without it) E_MEM
        gc.collect()
        net = self.net
        if net is None or (e.free >= 0 and e.need > e.free + ebp.net_need(net)):
            return self.fail(seq, E_MEM, _text(e))
        if e.free < 0:
            return self.fail(seq, E_ROOM, _text("needs about %d bytes beside the loaded net"
                                                % e.need))
        return self.fail(seq, E_ROOM, _text("needs about %d bytes, %d free beside the loaded "
                                            "net" % (e.need, e.free)))

    def close(self):
        # Let go of the net and the buffers once the server is done: a stale word on the
        # stack (the gc is conservative) may keep the Server itself from being collected,
        # and then it must hold nothing big.
        self.net = self.loader = self.data = None
        self.dec = self.out = self.tx = self.lout = self.ltx = None  # type: ignore[assignment]
        self.x = self.t = None

    def load_begin(self, seq, n):
        f = self.dec.frame
        if n != 4:
            return self.fail(seq, E_LEN, b"LOAD_BEGIN takes a u32 size")
        total = _get32(f, HEADER)
        if total < 0:
            return self.fail(seq, E_RANGE, b"net file size beyond 2**30")
        # the net in use stays until the new one is committed
        self.loader = None
        gc.collect()
        self.loader = ebp.Loader(total, self.kernels, self._mem_free())
        self.ack(seq)

    def load_chunk(self, seq, n):
        f = self.dec.frame
        ld = self.loader
        if ld is None:
            return self.fail(seq, E_STATE, b"LOAD_CHUNK before LOAD_BEGIN")
        if n < 4:
            return self.fail(seq, E_LEN, b"LOAD_CHUNK without an offset")
        if _get32(f, HEADER) != ld.got:
            return self.fail(seq, E_STATE, _text("chunk at offset %d, expected %d"
                                                 % (_get32(f, HEADER), ld.got)))
        if ld.total >= 0 and ld.got + n - 4 > ld.total:
            return self.fail(seq, E_RANGE, b"chunk beyond the size given to LOAD_BEGIN")
        try:
            ld.feed(f, HEADER + 4, HEADER + n)
        except ebp.NoRoom as e:
            self.loader = None
            return self.refuse_room(seq, e)
        except ebp.EbpError as e:
            self.loader = None
            gc.collect()
            return self.fail(seq, E_EBP, _text(e))
        self.ack(seq)

    def load_commit(self, seq, n):
        ld = self.loader
        if ld is None:
            return self.fail(seq, E_STATE, b"LOAD_COMMIT before LOAD_BEGIN")
        self.loader = None
        try:
            if ld.total >= 0 and ld.got != ld.total:
                raise ebp.EbpError("truncated: %d bytes of %d" % (ld.got, ld.total))
            net = ld.finish()
        except ebp.EbpError as e:
            ld = None
            gc.collect()
            return self.fail(seq, E_EBP, _text(e))
        ld = None
        try:
            self.install(net)
        except MemoryError:
            net = None
            gc.collect()
            return self.fail(seq, E_ROOM if self.net is not None else E_MEM,
                             b"out of memory for the sample buffers")
        self.samples_in = self.updates = self.every = 0
        self.gen = self.saved = self.saved_updates = 0
        self.unsaved = False
        self.ack(seq)

    def install(self, net):
        # all or nothing: a MemoryError leaves the net in use and its buffers as they were
        n_t = 1 if net.loss_kind == SOFTMAX_CE else net.sizes[net.L]
        x = _int16s(net.sizes[0])
        t = _int16s(n_t)
        self.x = x
        self.t = t
        self.n_t = n_t
        self.sample_bytes = 2 * (net.sizes[0] + n_t)
        self.net = net
        self.data = None  # checked against the net it was opened for

    def samples(self, seq, n, learn):
        # TRAIN (learn) or EVAL: [count u8][flags u8] then count x (x int16 * n_in, t int16 * n_t)
        net = self.net
        if net is None:
            return self.fail(seq, E_NONET, b"no net loaded")
        f = self.dec.frame
        if n < 2:
            return self.fail(seq, E_LEN, b"sample frame without a count")
        count = f[HEADER]
        flags = f[HEADER + 1]
        sb = self.sample_bytes
        if n != 2 + count * sb:
            return self.fail(seq, E_LEN, b"payload length disagrees with the sample count")
        n_in = net.sizes[0]
        n_t = self.n_t
        ce = net.loss_kind == SOFTMAX_CE
        if ce:
            n_out = net.sizes[net.L]
            p = HEADER + 2 + 2 * n_in
            for _ in range(count):
                c = f[p] | (f[p + 1] << 8)
                if c >= n_out:
                    return self.fail(seq, E_VALUE, b"class index beyond the outputs")
                p += sb
        if learn and self.unsaved:
            return self.fail(seq, E_CKPT, b"held: an automatic checkpoint failed")
        accumulate = learn and (flags & F_ACCUMULATE)
        if learn and net.lr_m == 0 and (not accumulate or flags & F_UPDATE) and (
                count or net.count):
            # an update needs a learning rate: refused before anything is learned
            return self.fail(seq, E_STATE, b"no learning rate: send SET_HYPER first")
        if accumulate and net.count + count > net.batch_max:
            return self.fail(seq, E_STATE, b"gradient sums hold at most batch_max samples")
        x = self.x
        t = self.t
        p = HEADER + 2
        learned = self.samples_in
        updates = self.updates
        for k in range(count - 1, -1, -1):  # k: samples of the frame after this one
            for i in range(n_in):
                v = f[p] | (f[p + 1] << 8)
                # -32768 is outside the symmetric range the arithmetic relies on
                x[i] = v - 65536 if v > 32768 else (-32767 if v == 32768 else v)
                p += 2
            for i in range(n_t):
                v = f[p] | (f[p + 1] << 8)
                t[i] = v - 65536 if v > 32768 else (-32767 if v == 32768 else v)
                p += 2
            if not learn:
                net.forward(x)
                loss = net.score(t)
                self.e_seen += 1
                self.e_correct += net.good
                e = self.e_loss
                self.e_loss = e + loss if loss < SMALL_MAX - e else SMALL_MAX
            elif accumulate:
                net.forward(x)
                net.backward(t)
            else:
                net.learn(x, t)
                if net.count == 0:  # learn() applied the batch
                    updates += 1
                    if self.every and updates - self.saved_updates >= self.every:
                        self.samples_in = learned + 1
                        self.updates = updates
                        if not self.save_or_fail(seq, k):
                            return
            if learn and learned < SMALL_MAX:
                learned += 1
        if not learn:
            return self.counts(seq, 0)
        self.samples_in = learned
        if flags & F_UPDATE and net.count:
            net.update()
            updates += 1
            self.updates = updates
            if self.every and updates - self.saved_updates >= self.every:
                if not self.save_or_fail(seq, 0):
                    return
        self.updates = updates
        self.ack(seq)

    def open_data(self, net, fname):
        # the dataset at fname, checked whole against the net the first time a session
        # opens it, and again whenever its size changed (data are only ever appended, and
        # nothing but this server writes the board's files while it runs)
        d = self.data
        if d is not None and d.fname == fname and d.size == _size(fname):
            return d
        self.data = None
        gc.collect()
        from edgebp import dataset

        ce = net.loss_kind == SOFTMAX_CE
        d = dataset.Data(fname, net.sizes[0], self.n_t, net.sizes[net.L] if ce else 0)
        self.data = d
        self.data_state = 0
        return d

    def dataset(self, seq, n):
        # DATASET [flags u8][state u32][start u32][count u32][len u8][name]: records
        # start..start+count-1 of the file's order drawn from `state`, learned (as TRAIN
        # frames holding them would be) or evaluated (D_EVAL)
        net = self.net
        if net is None:
            return self.fail(seq, E_NONET, b"no net loaded")
        f = self.dec.frame
        if n < 14 or n != 14 + f[HEADER + 13]:
            return self.fail(seq, E_LEN, b"DATASET takes flags, state, start, count, name")
        flags = f[HEADER]
        state = _get32(f, HEADER + 1)
        start = _get32(f, HEADER + 5)
        count = _get32(f, HEADER + 9)
        if state < 0 or start < 0 or count < 0:
            return self.fail(seq, E_RANGE, b"state, start or count beyond 2**30")
        if flags & ~(F_UPDATE | D_EVAL):
            return self.fail(seq, E_VALUE, b"unknown DATASET flags")
        # imported at the first request that needs it: a server that streams holds none of it
        from edgebp import dataset

        name = ""
        for i in range(HEADER + 14, HEADER + n):
            name += chr(f[i])
        if not dataset.check_name(name):
            return self.fail(seq, E_VALUE, b"a dataset name is 1-32 letters, digits, _-.")
        learn = not flags & D_EVAL
        if learn and self.unsaved:
            return self.fail(seq, E_CKPT, b"held: an automatic checkpoint failed")
        if learn and net.lr_m == 0 and (count or (flags & F_UPDATE and net.count)):
            return self.fail(seq, E_STATE, b"no learning rate: send SET_HYPER first")
        fname = dataset.path(self.root, name)
        try:
            d = self.open_data(net, fname)
        except dataset.DataError as e:
            return self.fail(seq, E_DATA, _text("%s: %s" % (name, e)))
        except OSError:
            return self.fail(seq, E_DATA, _text("no dataset %s on the board" % name))
        if count > d.n - start:
            return self.fail(seq, E_RANGE, _text("records %d..%d of %d" % (
                start, start + count - 1, d.n)))
        if state != self.data_state:
            d.order(state)
            self.data_state = state
        fh = open(fname, "rb")
        try:
            if learn:
                if not self.learn_data(seq, net, fh, d, start, start + count):
                    return
            else:
                self.eval_data(net, fh, d, start, start + count)
        finally:
            fh.close()
        if learn and flags & F_UPDATE and net.count:
            net.update()
            self.updates += 1
            if self.every and self.updates - self.saved_updates >= self.every:
                if not self.save_or_fail(seq, 0):
                    return
        self.count_fields(0)
        out = self.out
        p = HEADER + 26
        _put32(out, p, d.n)
        tag = d.tag
        for i in range(4):
            out[p + 4 + i] = tag[i]
        self.send(seq, COUNTS, 34)

    def learn_data(self, seq, net, fh, d, k, end):
        # the training loop of DATASET: allocates nothing but for a checkpoint
        x = self.x
        t = self.t
        learned = self.samples_in
        updates = self.updates
        while k < end:
            d.read(fh, k, x, t)
            k += 1
            net.learn(x, t)
            if net.count == 0:  # learn() applied the batch
                updates += 1
                if self.every and updates - self.saved_updates >= self.every:
                    self.samples_in = learned + 1
                    self.updates = updates
                    if not self.save_or_fail(seq, end - k):
                        return False
            if learned < SMALL_MAX:
                learned += 1
        self.samples_in = learned
        self.updates = updates
        return True

    def eval_data(self, net, fh, d, k, end):
        x = self.x
        t = self.t
        while k < end:
            d.read(fh, k, x, t)
            k += 1
            net.forward(x)
            loss = net.score(t)
            self.e_seen += 1
            self.e_correct += net.good
            e = self.e_loss
            self.e_loss = e + loss if loss < SMALL_MAX - e else SMALL_MAX

    def get_tensor(self, seq, n, grads):
        # [layer u8][part u8][offset u32][count u16] -> DATA with the same header, then values
        net = self.net
        if net is None:
            return self.fail(seq, E_NONET, b"no net loaded")
        f = self.dec.frame
        if n != _DATA_HEAD:
            return self.fail(seq, E_LEN, b"tensor request is 8 bytes")
        layer = f[HEADER]
        part = f[HEADER + 1]
        off = _get32(f, HEADER + 2)
        count = f[HEADER + 6] | (f[HEADER + 7] << 8)
        if layer >= net.L or part > (1 if grads else 2):
            return self.fail(seq, E_RANGE, b"no such layer or part")
        if grads:
            arr = net.GB[layer] if part else net.GW[layer]
            size = 4
        else:
            # part 2: the weight format of every layer now (they move where they follow
            # the weights, edgebp/dynfmt.py)
            arr = net.shift_w if part == 2 else net.B[layer] if part else net.W[layer]
            size = 2
        if off < 0 or off + count > len(arr):
            return self.fail(seq, E_RANGE, b"values beyond the end of the tensor")
        if _DATA_HEAD + count * size > self.max_payload:
            return self.fail(seq, E_RANGE, b"more values than a frame holds")
        out = self.out
        for i in range(_DATA_HEAD):
            out[HEADER + i] = f[HEADER + i]
        p = HEADER + _DATA_HEAD
        for i in range(off, off + count):
            v = arr[i]
            out[p] = v & 0xFF
            out[p + 1] = (v >> 8) & 0xFF
            if size == 4:
                out[p + 2] = (v >> 16) & 0xFF
                out[p + 3] = (v >> 24) & 0xFF
            p += size
        self.send(seq, DATA, p - HEADER)

    def set_hyper(self, seq, n):
        net = self.net
        if net is None:
            return self.fail(seq, E_NONET, b"no net loaded")
        if n != ebp.HYPER_LEN:
            return self.fail(seq, E_LEN, b"SET_HYPER takes a 12-byte hyper block")
        try:
            ebp.apply_hyper(net, self.dec.frame, HEADER)
        except ValueError as e:
            return self.fail(seq, E_VALUE, _text(e))
        self.ack(seq)

    def save(self):
        net = self.net
        self.gen = ckpt.save(net, self.root, self.every, self.samples_in, self.updates)
        self.saved = self.samples_in
        self.saved_updates = self.updates

    def save_or_fail(self, seq, left):
        # An automatic checkpoint, due inside a TRAIN frame right after a weight update. If
        # it cannot be written the frame stops there: the answer says how many of its
        # samples were not learned (`left`), all before them were and the update applied.
        # Then TRAIN frames are refused, unlearned, until a CHECKPOINT saves one or sets the
        # period again: the frames the host sent ahead are not learned behind its back, and
        # what the net learned is the samples up to this one.
        try:
            self.save()
        except OSError as e:
            self.unsaved = True
            self.fail(seq, E_CKPT, _text("%d not learned, update applied; saving: %s"
                                         % (left, e)))
            return False
        return True

    def checkpoint(self, seq, n):
        # [flags u8][every u16]
        f = self.dec.frame
        if n != 3:
            return self.fail(seq, E_LEN, b"CHECKPOINT takes flags and a period")
        flags = f[HEADER]
        if flags & (CK_NOW | CK_EVERY):
            if self.net is None:
                return self.fail(seq, E_NONET, b"no net loaded")
            if flags & CK_EVERY:
                self.every = f[HEADER + 1] | (f[HEADER + 2] << 8)
            if flags & CK_NOW:
                try:
                    self.save()
                except OSError as e:
                    return self.fail(seq, E_CKPT, _text("saving: %s" % e))
            self.unsaved = False
        self.ckpt_state(seq)

    def resume(self, seq, n):
        if n != 0:
            return self.fail(seq, E_LEN, b"RESUME takes no payload")
        try:
            found = ckpt.find(self.root)
        except OSError as e:
            return self.fail(seq, E_CKPT, _text("reading: %s" % e))
        if found is None:
            return self.fail(seq, E_STATE, b"no valid checkpoint on the board")
        path, head = found
        # built beside the net in use, which stays if the checkpoint is refused
        try:
            net = ckpt.load(path, head, self.kernels, self._mem_free())
        except ebp.NoRoom as e:
            return self.refuse_room(seq, e)
        except (ValueError, OSError) as e:
            gc.collect()
            return self.fail(seq, E_CKPT, _text("restoring: %s" % e))
        try:
            self.install(net)
        except MemoryError:
            net = None
            gc.collect()
            return self.fail(seq, E_ROOM if self.net is not None else E_MEM,
                             b"out of memory for the sample buffers")
        self.gen = ckpt.generation(head)
        self.every = ckpt.every(head)
        self.samples_in = self.saved = ckpt.samples(head)
        self.updates = self.saved_updates = ckpt.updates(head)
        self.e_seen = self.e_correct = self.e_loss = 0
        self.unsaved = False
        self.ckpt_state(seq)

    def ckpt_state(self, seq):
        out = self.out
        p = HEADER
        _put32(out, p, self.gen)
        _put32(out, p + 4, self.saved)
        _put32(out, p + 8, self.samples_in)
        _put32(out, p + 12, self.updates)
        _put16(out, p + 16, self.every)
        _put16(out, p + 18, self.net.count if self.net is not None else 0)
        self.send(seq, CKPT, 20)

    def stats(self, seq, n):
        if n != 1:
            return self.fail(seq, E_LEN, b"STATS takes a reset flag")
        self.counts(seq, self.dec.frame[HEADER])

    def counts(self, seq, reset):
        self.count_fields(reset)
        self.send(seq, COUNTS, 26)

    def count_fields(self, reset):
        # the 26 bytes of a COUNTS answer into out
        net = self.net
        out = self.out
        p = HEADER
        if net is None:
            for i in range(26):
                out[p + i] = 0
        else:
            _put32(out, p, net.seen)
            _put32(out, p + 4, net.correct)
            _put32(out, p + 8, net.loss_sum)
            _put32(out, p + 12, self.e_seen)
            _put32(out, p + 16, self.e_correct)
            _put32(out, p + 20, self.e_loss)
            _put16(out, p + 24, net.count)
            if reset:
                net.reset_stats()
                self.e_seen = self.e_correct = self.e_loss = 0


# the kernel set a net runs, for the host's memory planner (the native one holds tables)
_KERNELS = {"edgebp.kernels": 0, "edgebp.kernels_viper": 1, "edgebp.kernels_native": 2}
# bytes per machine word of this heap, for the host's memory planner (0: not MicroPython)
_WORD = (8 if sys.maxsize > 0x7FFFFFFF else 4) if sys.implementation.name == "micropython" else 0


def _fits(n):
    # whether a block of n bytes can be had now (a failure collects first); the block is
    # garbage at once, its one reference overwritten
    try:
        b = bytearray(n)
    except MemoryError:
        return False
    b = None  # type: ignore[assignment]  # noqa: F841
    return True


def _largest(hi):
    # the largest bytearray the heap can make now, to within a block
    lo = 0
    while hi - lo > 16:
        m = (lo + hi) >> 1
        if _fits(m):
            lo = m
        else:
            hi = m
    return lo


def _holes(most=8, least=256):
    # The largest free blocks of the heap (each held while the next is sought): a net's big
    # tensors need contiguous blocks, and a heap fragmented by imported modules may hold far
    # less in one piece than gc.mem_free() says. Only for a heap of fixed size: where a
    # failed allocation grows the heap instead (esp32, webassembly), probing would grow it.
    # Returns (sizes, by_address): lowest address first where uctypes tells the addresses
    # (the gc takes the lowest free blocks that fit, so the order decides where a net's
    # tensors go), else largest first.
    sizes = []  # type: list[int]
    if not hasattr(gc, "mem_free"):
        return sizes, False  # not MicroPython: the host's memory is not a board's
    gc.collect()
    # made before the probing, which leaves no room for lists to grow
    held = [None] * most  # type: list
    found = [0] * most
    spare = bytearray(512)  # let go once every block is held: room to order them
    k = 0
    hi = gc.mem_free()
    while k < most:
        n = _largest(hi)
        if n < least:
            break
        try:
            held[k] = bytearray(n)
        except MemoryError:
            # a stale reference (a conservative gc) kept the search's last block: search
            # again below this size
            gc.collect()
            hi = n
            continue
        found[k] = n
        k += 1
        hi = gc.mem_free()
    spare = None  # type: ignore[assignment]  # noqa: F841
    gc.collect()
    sizes = found[:k]
    by_address = False
    try:
        from uctypes import addressof

        where = [addressof(held[i]) for i in range(k)]
        sizes = [sizes[i] for i in sorted(range(k), key=lambda i: where[i])]
        by_address = True
    except (ImportError, MemoryError):
        # each is found to within the search's 16 bytes: two holes of nearly one size may
        # come out in either order
        sizes.sort(reverse=True)
    held = found = where = None  # type: ignore[assignment]
    gc.collect()
    return sizes, by_address


def _size(fname):
    # the file's size, -1 if there is none
    import os

    try:
        return os.stat(fname)[6]
    except OSError:
        return -1


def _int16s(n):
    return zeros("h", n)


def _put16(b, o, v):
    b[o] = v & 0xFF
    b[o + 1] = (v >> 8) & 0xFF


def _put32(b, o, v):
    b[o] = v & 0xFF
    b[o + 1] = (v >> 8) & 0xFF
    b[o + 2] = (v >> 16) & 0xFF
    b[o + 3] = (v >> 24) & 0xFF


def _get32(b, o):
    # -1 for values of 2**30 and above, which would not be small ints on a board
    if b[o + 3] >= 0x40:
        return -1
    return b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24)
