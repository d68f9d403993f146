"""Drive the core over a list of cases: in this process, or on any runtime.

On a runtime, a small driver (DRIVER) reads the cases from a file beside it
(pack(): each net's layer tables, hyper-parameters, weights, samples and targets), trains
each case sample by sample (learn, then update() for a partial last batch), every step
under heap_lock on MicroPython, and prints one line of state per case, so that runs on
different runtimes can be compared line for line. The data stays out of the source: a
source with every case inline is half a megabyte, more than a 192 KiB board can import.
"""

from __future__ import annotations

import base64
import zlib
from pathlib import Path

import numpy as np

from combos import Case
from edgebp.host.boards import mprun
from edgebp.net import Net

STATE_PREFIX = "STATE "
CASES_FILE = "cases.z"


def state_line(name: str, net) -> str:
    parts = [name]
    for l in range(net.L):
        parts.append(" ".join(str(int(v)) for v in np.ravel(net.W[l])))
        parts.append(" ".join(str(int(v)) for v in np.ravel(net.B[l])))
        if net.VW[l] is not None:
            parts.append(" ".join(str(int(v)) for v in np.ravel(net.VW[l])))
            parts.append(" ".join(str(int(v)) for v in np.ravel(net.VB[l])))
    if net.opt is not None:
        o = net.opt
        adam = hasattr(o, "MW")
        for l in range(net.L):
            for a in ((o.MW[l], o.MB[l], o.VW[l], o.VB[l]) if adam
                      else (o.C[l], o.HW[l], o.HB[l])):
                parts.append(" ".join(str(int(v)) for v in np.ravel(a)))
        parts.append(f"{o.t} {o.p1} {o.p2}" if adam else f"{o.n}")
    parts.append(f"{int(net.rng[0])} {net.loss_sum} {net.correct} {net.seen} "
                 + " ".join(str(int(v)) for v in [*net.shift_w, *net.shift_a, *net.shift_d]))
    return STATE_PREFIX + "|".join(parts)


def run_here(case: Case, kernels=None) -> Net:
    from array import array

    net = case.qnet.build(case.hyper, kernels)
    for x, t in zip(case.Xq, case.Tq, strict=True):
        net.learn(array("h", x.astype("<i2").tobytes()), array("h", t.astype("<i2").tobytes()))
    net.update()
    return net


_expected: dict[str, str] = {}


def expected_states(cases: list[Case]) -> dict[str, str]:
    """Case name -> its state after run_here with the pure kernels under CPython, the
    reference every runtime and kernel set is compared with (computed once per process:
    names are unique and a case is made from its name's seed)."""
    from edgebp import kernels

    for c in cases:
        if c.name not in _expected:
            _expected[c.name] = state_line(c.name, run_here(c, kernels))[len(STATE_PREFIX):]
    return {c.name: _expected[c.name] for c in cases}


# -- the cases as a file, and the driver that reads it --

def _record(c: Case) -> bytes:
    """One case: its header length, the header (layer tables, hyper-parameters, counts),
    the name, then W[l] and B[l] per layer, the samples and the targets; int16 little-endian
    (both boards and x64 are)."""
    q, h = c.qnet, c.hyper.fixed()
    X = np.ascontiguousarray(c.Xq, "<i2")
    T = np.ascontiguousarray(c.Tq, "<i2")
    name = c.name.encode()
    head = [q.L, *q.sizes, *q.acts, *q.shift_a, *q.shift_w, *q.shift_d, q.loss, q.batch_max,
            int(q.momentum), q.alpha_q, h["lr_m"], h["lr_e"], h["batch"], h["mu"], h["c_m"],
            h["c_e"], h["mode"], h["seed"], X.shape[0], T.shape[1], len(name),
            *(q.adam if q.adam is not None else (0, 0)),
            *((1, *q.sdlm[:3], *q.sdlm[3], *q.sdlm[4]) if q.sdlm is not None
              else (0, 0, 0, 0, *[0] * (2 * q.L)))]
    if q.adam is not None:  # 1 - beta in Q15 up to 32768: its int16 is read back as uint16
        i = len(head) - 2 - (4 + 2 * q.L)  # the pair after len(name)
        head[i:i + 2] = [v - 65536 if v >= 32768 else v for v in head[i:i + 2]]
    head += (1, *q.dyn[0], *q.dyn[1]) if q.dyn is not None else (0, *[0] * (2 * q.L))
    head.append(q.logit_k)
    if not all(-32768 <= v < 32768 for v in head):
        raise ValueError(f"{c.name}: a header value does not fit in int16: {head}")
    out = [np.array([len(head), *head], "<i2").tobytes(), name]
    for l in range(q.L):
        out.append(np.asarray(q.W[l], "<i2").tobytes())
        out.append(np.asarray(q.B[l], "<i2").tobytes())
    out += [X.tobytes(), T.tobytes()]
    return b"".join(out)


# zlib with a 4 KiB window: what the board allocates to inflate it
WBITS = 12


def pack(cases: list[Case]) -> bytes:
    """The cases file: every record, zlib-compressed. A board's flash is written at a few KB/s
    (mpremote sends 256-byte chunks as Python bytes literals, most binary bytes as 4-character
    escapes), so its size is most of what a first run on a board costs: 130 KB raw, 34 KB
    compressed (the edge-of-range values are all +-32767), 5-6 s on the cortex-m3. (As 45 KB
    of base64 text it goes in half the time, but decoding it takes one 34 KB block, which a
    board's heap, fragmented by the file transfer just before, may not have.)"""
    z = zlib.compressobj(9, zlib.DEFLATED, WBITS)
    return z.compress(b"".join(_record(c) for c in cases)) + z.flush()


DRIVER = '''
import gc
import devtest
from array import array
import binascii
from edgebp.net import Net
%(kernels)s

def put(typecode, buf):
    # an array as its type code and its bytes in base64 or hex, at C speed: the states are
    # most of the output, and a board's output comes over a pty a byte at a time
    print("|" + typecode, end="")
    print(%(encode)s, end="")

def put_state(name, net):
    print("%(prefix)s" + name, end="")
    for l in range(net.L):
        put("h", net.W[l])
        put("h", net.B[l])
        if net.VW[l] is not None:
            put("i", net.VW[l])
            put("i", net.VB[l])
    o = net.opt
    if o is not None and not o.curv:
        for l in range(net.L):
            put("i", o.MW[l])
            put("i", o.MB[l])
            put("i", o.VW[l])
            put("i", o.VB[l])
        print("|%%d %%d %%d" %% (o.t, o.p1, o.p2), end="")
    elif o is not None:
        for l in range(net.L):
            put("h", o.C[l])
            put("h", o.HW[l])
            put("h", o.HB[l])
        print("|%%d" %% o.n, end="")
    print("|%%d %%d %%d %%d" %% (net.rng[0], net.loss_sum, net.correct, net.seen), end="")
    for f in (net.shift_w, net.shift_a, net.shift_d):
        for v in f:
            print(" %%d" %% v, end="")
    print()

def fill(f, buf):
    # int16 arrays only; a stream's readinto reads until the buffer is full or the data ends
    if f.readinto(buf) != 2 * len(buf):
        raise ValueError("%(file)s ends inside a case")

def int16s(n):
    return array("h", bytes(2 * n))

def case(f, n_head):
    h = int16s(n_head)
    fill(f, h)
    L = h[0]
    p = 1
    sizes = [h[p + i] for i in range(L + 1)]
    p += L + 1
    acts = [h[p + i] for i in range(L)]
    p += L
    shift_a = [h[p + i] for i in range(L + 1)]
    p += L + 1
    shift_w = [h[p + i] for i in range(L)]
    p += L
    shift_d = [h[p + i] for i in range(L)]
    p += L
    loss, batch_max, momentum, alpha_q = h[p], h[p + 1], h[p + 2], h[p + 3]
    lr_m, lr_e, batch, mu, c_m, c_e, mode, seed = [h[p + 4 + i] for i in range(8)]
    n, n_t, n_name = h[p + 12], h[p + 13], h[p + 14]
    c1, c2 = h[p + 15] & 0xFFFF, h[p + 16] & 0xFFFF  # 32768 comes as -32768
    name = f.read(n_name).decode()
    net = Net(sizes, acts, shift_a, shift_w, shift_d, loss, batch_max, momentum > 0, alpha_q,
              KERNELS, h[p + 22 + 4 * L])  # logit_k, after the dynfmt block
    for l in range(L):
        fill(f, net.W[l])
        fill(f, net.B[l])
    if c1:
        from edgebp import adam
        adam.attach(net, c1, c2)
    if h[p + 17]:
        from edgebp import sdlm
        fc = [h[p + 21 + l] for l in range(L)]
        fh = [h[p + 21 + L + l] for l in range(L)]
        sdlm.attach(net, h[p + 18], h[p + 19], h[p + 20], fc, fh)
    q = p + 21 + 2 * L
    if h[q]:
        from edgebp import dynfmt
        dynfmt.attach(net, [h[q + 1 + l] for l in range(L)],
                      [h[q + 1 + L + l] for l in range(L)])
    net.set_lr(lr_m, lr_e)
    net.set_batch(batch)
    net.set_momentum(mu)
    net.set_decay(c_m, c_e)
    net.set_rounding(mode, seed)
    n_in = sizes[0]
    X = int16s(n * n_in)
    T = int16s(n * n_t)
    fill(f, X)
    fill(f, T)
    x = int16s(n_in)
    t = int16s(n_t)
    for s in range(n):
        for i in range(n_in):
            x[i] = X[s * n_in + i]
        for i in range(n_t):
            t[i] = T[s * n_t + i]
        devtest.no_alloc(net.learn, x, t)
    devtest.no_alloc(net.update)
    put_state(name, net)

def cases():
    # the file beside this script: in the first directory on sys.path that holds it (the
    # working directory is not that directory on every runtime)
    import sys
    for d in sys.path:
        try:
            raw = open(d + "/%(file)s" if d else "%(file)s", "rb")
            break
        except OSError:
            pass
    else:
        raise OSError("%(file)s is not on sys.path")
    try:
        import deflate  # MicroPython: inflated as it is read, a few KB at a time
        # close=True: closing the stream closes the file. A board's littlefs keeps a list of
        # its open files and MicroPython runs no finaliser on one left to the collector: its
        # freed memory stays in that list, and the next write follows it.
        return deflate.DeflateIO(raw, deflate.ZLIB, %(wbits)d, True)
    except ImportError:  # CPython
        import io
        import zlib
        with raw:
            return io.BytesIO(zlib.decompress(raw.read()))

def main():
    f = cases()
    n_head = int16s(1)
    while f.readinto(n_head) == 2:
        case(f, n_head[0])
        gc.collect()  # each net's buffers go before the next is made: no fragments
    f.close()
    print("DONE")

main()
'''


# how the driver writes an array's bytes: base64 (the least output), or hex on the wasm port,
# whose base64 is slow (30 ms for 2 KB) and, on an array, encodes len(buf) bytes only
ENCODINGS = {
    "base64": ("STATE64 ", "binascii.b2a_base64(bytes(buf)).decode().strip()"),
    "hex": ("STATEHEX ", "binascii.hexlify(buf).decode()"),
}


def driver(kernels: str | None = None, encoding: str = "base64") -> str:
    """The driver's source; `kernels` names the kernel module every net trains with (None:
    Net's default, kern.select())."""
    imp = f"import {kernels} as KERNELS" if kernels else "KERNELS = None"
    prefix, encode = ENCODINGS[encoding]
    return DRIVER % dict(kernels=imp, file=CASES_FILE, wbits=WBITS, prefix=prefix,
                         encode=encode)


def run_cases(runtime: str, cases: list[Case], kernels: str | None = None,
              timeout: float = 600) -> tuple[mprun.RunResult, dict[str, str]]:
    """Train `cases` on `runtime` with the kernel module named `kernels`: (the run, case
    name -> state as state_line gives it without its prefix)."""
    files: dict[str, str | bytes] = dict(mprun.core_files())
    files["devtest.py"] = (Path(__file__).with_name("device") / "devtest.py").read_text()
    files[CASES_FILE] = pack(cases)
    encoding = "hex" if runtime == "wasm" else "base64"
    result = mprun.run(runtime, driver(kernels, encoding), files, timeout=timeout)
    return result, parse_states(result.stdout)


_SCRIPT_DRIVER = '''
import devtest
from array import array

def state_line(name, net):
    parts = [name]
    for l in range(net.L):
        parts.append(" ".join(str(v) for v in net.W[l]))
        parts.append(" ".join(str(v) for v in net.B[l]))
        if net.VW[l] is not None:
            parts.append(" ".join(str(v) for v in net.VW[l]))
            parts.append(" ".join(str(v) for v in net.VB[l]))
    o = net.opt
    if o is not None:
        for l in range(net.L):
            for a in ((o.C[l], o.HW[l], o.HB[l]) if o.curv
                      else (o.MW[l], o.MB[l], o.VW[l], o.VB[l])):
                parts.append(" ".join(str(v) for v in a))
        parts.append(("%d" % o.n) if o.curv else ("%d %d %d" % (o.t, o.p1, o.p2)))
    parts.append("%d %d %d %d" % (net.rng[0], net.loss_sum, net.correct, net.seen) + "".join(
        " %d" % v for f in (net.shift_w, net.shift_a, net.shift_d) for v in f))
    return "STATE " + "|".join(parts)

def drive(name, make, X, T, n_in, n_t, n):
    net = make()
    x = array("h", bytes(2 * n_in))
    t = array("h", bytes(2 * n_t))
    for s in range(n):
        for i in range(n_in):
            x[i] = X[s * n_in + i]
        for i in range(n_t):
            t[i] = T[s * n_t + i]
        devtest.no_alloc(net.learn, x, t)
    devtest.no_alloc(net.update)
    print(state_line(name, net))
'''


def script(cases: list[Case], kernels: str | None = None) -> str:
    """Source that runs every case on a runtime with the case data inline (needs devtest.py
    and the core files). Too big for a 192 KiB board beyond a few dozen cases: run_cases
    ships the data as a file instead."""
    out = [_SCRIPT_DRIVER]
    for i, c in enumerate(cases):
        src = c.qnet.device_source(c.hyper, kernels).replace("def make():", f"def make_{i}():")
        out.append(src)
        X = np.asarray(c.Xq, "<i2")
        T = np.asarray(c.Tq, "<i2")
        out.append(
            f"drive({c.name!r}, make_{i}, array('h', {X.tobytes()!r}), "
            f"array('h', {T.tobytes()!r}), {X.shape[1]}, {T.shape[1]}, {X.shape[0]})"
        )
    out.append('print("DONE")')
    return "\n".join(out) + "\n"


def _decoded(part: str, decode) -> str:
    # "h<bytes>" or "i<bytes>": a little-endian int16 or int32 array, as state_line writes it
    dtype = {"h": "<i2", "i": "<i4"}[part[0]]
    return " ".join(str(int(v)) for v in np.frombuffer(decode(part[1:]), dtype))


_DECODE = {"STATE64 ": base64.b64decode, "STATEHEX ": bytes.fromhex}


def parse_states(stdout: str) -> dict[str, str]:
    """Case name -> state, as state_line gives it without its prefix, from the STATE lines
    of script() or the STATE64 / STATEHEX lines of DRIVER (arrays in base64 or hex)."""
    states = {}
    for line in stdout.splitlines():
        if line.startswith(STATE_PREFIX):
            body = line[len(STATE_PREFIX):]
            states[body.split("|", 1)[0]] = body
            continue
        prefix = next((p for p in _DECODE if line.startswith(p)), None)
        if prefix is None:
            continue
        name, *parts = line[len(prefix):].split("|")
        try:
            arrays = [_decoded(a, _DECODE[prefix]) if a[:1] in ("h", "i") else a
                      for a in parts[:-1]]
        except (KeyError, IndexError, ValueError):  # cut short: kept as it came
            states[name] = line
        else:
            states[name] = "|".join([name, *arrays, *parts[-1:]])
    return states


def adam_lines(runtime: str, kernels: str) -> list[str]:
    """The ADAM lines of tests/device/test_adam_dev.py on `runtime` with the adam kernel of
    `kernels` ("python", "viper", "native"): every buffer after each case."""
    from conftest import run_device_module

    result = run_device_module(runtime, "tests/device/test_adam_dev.py",
                               {"adam_under.py": f"KERNELS = {kernels!r}\n"}, timeout=900)
    if kernels == "native":  # its argument checks ran too
        assert "SKIP" not in result.stdout, result.stdout[-2000:]
    return [ln for ln in result.stdout.splitlines() if ln.startswith("ADAM ")]


_ADAM_EXPECTED: list[str] = []


def check_adam_kernel(runtime: str, kernels: str) -> None:
    """The fast adam kernel of `kernels` on `runtime` gives the pure kernel's buffers under
    CPython on every case, bit for bit."""
    if not _ADAM_EXPECTED:
        _ADAM_EXPECTED.extend(adam_lines("cpython", "python"))
    expected = _ADAM_EXPECTED
    got = adam_lines(runtime, kernels)
    assert len(expected) > 100 and len(got) == len(expected), (len(got), len(expected))
    bad = [e.split("|")[0] for e, g in zip(expected, got, strict=True) if e != g]
    assert not bad, f"{len(bad)} cases differ from the pure kernel: {bad[:5]}"


def sdlm_lines(runtime: str, kernels: str) -> list[str]:
    """The SDLM lines of tests/device/test_sdlm_dev.py on `runtime` with the SDLM kernels of
    `kernels` ("python", "viper", "native"): every buffer after each case."""
    from conftest import run_device_module

    result = run_device_module(runtime, "tests/device/test_sdlm_dev.py",
                               {"sdlm_under.py": f"KERNELS = {kernels!r}\n"}, timeout=900)
    if kernels == "native":  # its argument checks ran too
        assert "SKIP" not in result.stdout, result.stdout[-2000:]
    return [ln for ln in result.stdout.splitlines() if ln.startswith("SDLM ")]


_SDLM_EXPECTED: list[str] = []


def check_sdlm_kernels(runtime: str, kernels: str) -> None:
    """The fast sq_t, curv_acc and sdlm of `kernels` on `runtime` give the pure kernels'
    buffers under CPython on every case, bit for bit."""
    if not _SDLM_EXPECTED:
        _SDLM_EXPECTED.extend(sdlm_lines("cpython", "python"))
    expected = _SDLM_EXPECTED
    got = sdlm_lines(runtime, kernels)
    assert len(expected) > 300 and len(got) == len(expected), (len(got), len(expected))
    bad = [e.split("|")[0] for e, g in zip(expected, got, strict=True) if e != g]
    assert not bad, f"{len(bad)} cases differ from the pure kernels: {bad[:5]}"
