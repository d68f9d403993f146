# Checkpoints on the device: training resumed from a checkpoint ends bit-identical to the
# host's uninterrupted reference, and a torn new file is never taken. ckpt_fixture (made by
# tests/test_checkpoint.py) holds a net file with momentum or with Adam, and stochastic
# rounding, samples, where to cut, and the weights the reference reached.
import os

import ckpt_fixture as fx

from edgebp import ckpt, ebp

ROOT = "ckpt_dev"


def _fresh(name):
    try:
        os.mkdir(name)
    except OSError:
        pass
    for f in ckpt.paths(name):
        try:
            os.remove(f)
        except OSError:
            pass
    return name


def _learn(net, a, b):
    from array import array

    x = array("h", bytes(2 * fx.N_IN))
    t = array("h", bytes(2 * fx.N_T))
    for s in range(a, b):
        for i in range(fx.N_IN):
            x[i] = fx.X[s * fx.N_IN + i]
        for i in range(fx.N_T):
            t[i] = fx.T[s * fx.N_T + i]
        net.learn(x, t)


def _weights(net):
    out = []
    for l in range(net.L):
        out += list(net.W[l]) + list(net.B[l])
    return out


def test_resume_is_bit_identical():
    root = _fresh(ROOT)
    net = ebp.load(fx.NET)
    _learn(net, 0, fx.CUT)
    assert net.count > 0, "the cut should fall inside a batch"
    ckpt.save(net, root, 3, fx.CUT, 0)
    net = None
    path, head = ckpt.find(root)
    assert ckpt.samples(head) == fx.CUT and ckpt.every(head) == 3
    net = ckpt.load(path, head)
    _learn(net, fx.CUT, fx.N)
    assert _weights(net) == list(fx.FINAL), "weights differ from the uninterrupted run"
    assert net.rng[0] == fx.RNG


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def test_torn_new_file_is_not_taken():
    root = _fresh(ROOT)
    cur, new = ckpt.paths(root)
    net = ebp.load(fx.NET)
    _learn(net, 0, fx.CUT)
    ckpt.save(net, root, 0, fx.CUT, 0)
    older = _read(cur)
    _learn(net, fx.CUT, fx.N)
    ckpt.save(net, root, 0, fx.N, 0)
    newer = _read(cur)
    for cut in (0, 1, 43, 44, len(newer) // 2, len(newer) - 2, len(newer) - 1):
        # the power went while the new file was being written
        _write(cur, older)
        _write(new, newer[:cut])
        path, head = ckpt.find(root)
        assert ckpt.samples(head) == fx.CUT, "took a torn file (cut at %d)" % cut
    # complete but not renamed yet: the newer one is taken
    _write(cur, older)
    _write(new, newer)
    path, head = ckpt.find(root)
    assert ckpt.samples(head) == fx.N
    assert _weights(ckpt.load(path, head)) == list(fx.FINAL)


def _mutated(raw, at, values):
    # raw with little-endian `values` ((value, bytes), ...) written from `at`, CRC recomputed
    from edgebp.wire import crc16

    b = bytearray(raw)
    for v, n in values:
        for i in range(n):
            b[at] = (v >> (8 * i)) & 0xFF
            at += 1
    c = crc16(b, 0, len(b) - 2)
    b[len(b) - 2] = c & 0xFF
    b[len(b) - 1] = c >> 8
    return b


def test_fields_beyond_the_contract_are_refused():
    root = _fresh(ROOT)
    cur = ckpt.paths(root)[0]
    net = ebp.load(fx.NET)
    _learn(net, 0, fx.CUT)
    ckpt.save(net, root, 0, fx.CUT, 0)
    raw = _read(cur)
    sdlm = net.opt is not None and net.opt.curv
    v_at = ckpt.HEAD + ebp.file_len(net.sizes, adam=net.opt is not None and not sdlm,
                                    sdlm=sdlm, dyn=net.dyn is not None)
    cases = (
        (32, ((65535, 2), (65535, 2)), "batch_max"),
        (5, ((0xFF, 1),), "flags"),
        (20, ((0, 3), (0x80, 1)), "2**30"),  # seen = 2**31
    )
    if net.opt is None:
        cases += (
            (v_at, ((0x3FFFFFFF, 4),), "momentum"),
            (v_at, ((0x400000, 4),), "momentum"),  # V_MAX + 1
        )
    elif sdlm:
        params = 0
        for l in range(net.L):
            params += net.sizes[l + 1] * (net.sizes[l] + 1)
        cases += (
            (v_at, ((0xFFFF, 2),), "SDLM curvature"),  # -1
            (v_at + 2 * params - 2, ((0x8000, 2),), "SDLM curvature"),
            (v_at + 2 * params, ((0, 3), (0x40, 1)), "sample count"),  # n = 2**30
        )
    else:
        params = 0
        for l in range(net.L):
            params += net.sizes[l + 1] * (net.sizes[l] + 1)
        cases += (
            (v_at, (((1 << 29) + 1, 4),), "first moment"),
            (v_at, ((0x3FFFFFFF, 4),), "first moment"),
            # V: the exponent field 30, beyond E = 18; a mantissa below 2**22 at E = 0
            (v_at + 4 * params, ((30 << 25, 4),), "second moment"),
            (v_at + 4 * params + 4, ((11 << 25 | 5, 4),), "second moment"),
            (v_at + 8 * params, ((0, 4),), "disagrees"),  # t = 0 after updates
        )
    for at, values, words in cases:
        _write(cur, _mutated(raw, at, values))
        path, head = ckpt.find(root)
        try:
            ckpt.load(path, head)
        except ValueError as e:
            assert words in str(e), "refused for another reason: %s" % e
        else:
            raise AssertionError("accepted a checkpoint with %s at %d" % (words, at))
    _write(cur, raw)
    path, head = ckpt.find(root)
    assert ckpt.load(path, head).count == net.count
