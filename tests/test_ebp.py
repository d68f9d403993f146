"""The .ebp net file: host writer and reader, the board's parser, and every way a file is bad."""

import io
import struct
from array import array

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from edgebp import ebp, fixed
from edgebp.ebp import EbpError
from edgebp.host.nets import ebpfile
from edgebp.host.nets.qnet import Hyper, QuantNet, adam_q, sdlm_q
from edgebp.wire import crc16


def make_qnet(kind="ce", sizes=(4, 8, 3), seed=0, momentum=False, batch_max=4):
    """A small random net of one of the three loss kinds, with its formats."""
    rng = np.random.default_rng(seed)
    L = len(sizes) - 1
    if kind == "ce":
        acts = [fixed.RELU] * (L - 1) + [fixed.SOFTMAX]
        loss, shift_a, shift_d = fixed.SOFTMAX_CE, [12] * L + [14], [12] * (L - 1) + [14]
    elif kind == "bce":
        acts = [fixed.TANH] * (L - 1) + [fixed.SIGMOID]
        loss, shift_a, shift_d = fixed.BCE, [12] + [14] * L, [12] * (L - 1) + [14]
    else:
        acts = [fixed.LEAKY] * (L - 1) + [fixed.IDENTITY]
        loss, shift_a, shift_d = fixed.MSE, [12] * (L + 1), [12] * L
    W = [rng.integers(-2500, 2501, (sizes[l + 1], sizes[l])).astype(np.int16) for l in range(L)]
    B = [rng.integers(-300, 301, sizes[l + 1]).astype(np.int16) for l in range(L)]
    return QuantNet(sizes=list(sizes), acts=acts, shift_a=shift_a, shift_w=[12] * L,
                    shift_d=shift_d, loss=loss, W=W, B=B, batch_max=batch_max,
                    momentum=momentum)


def make_data(qnet, n, seed=1):
    """Quantised inputs and targets in the formats the net takes."""
    rng = np.random.default_rng(seed)
    X = rng.integers(-4096, 4097, (n, qnet.sizes[0])).astype(np.int16)
    n_out = qnet.sizes[-1]
    if qnet.loss == fixed.SOFTMAX_CE:
        T = rng.integers(0, n_out, (n, 1))
    elif qnet.loss == fixed.BCE:
        T = rng.integers(0, 2, (n, n_out)) * 16384
    else:
        T = rng.integers(-4096, 4097, (n, n_out))
    return X, T.astype(np.int16)


def reference_train(qnet, hyper, X, T, order=None):
    """The core Net under CPython, trained sample by sample: what a board must reproduce."""
    net = qnet.build(hyper)
    for i in range(len(X)) if order is None else order:
        net.learn(array("h", X[i].tolist()), array("h", T[i].tolist()))
    return net


HYPER = Hyper(lr=0.05, batch=2, rounding="stochastic", seed=7)


def same_weights(net, qnet):
    return all(list(net.W[l]) == qnet.W[l].ravel().tolist()
               and list(net.B[l]) == qnet.B[l].tolist() for l in range(net.L))


@pytest.mark.parametrize("kind", ["ce", "bce", "mse"])
def test_round_trip_keeps_net_hyper_and_host_section(kind):
    q = make_qnet(kind, sizes=(5, 7, 6, 3), momentum=True, batch_max=8)
    q.in_offset = np.linspace(-1, 1, 5)
    q.in_scale = np.full(5, 0.3)
    q.classes = ["a", "b", "c"]
    h = Hyper(lr=0.03, momentum=0.5, weight_decay=1e-3, batch=4, rounding="stochastic",
              seed=123456789)
    q2, h2 = ebpfile.from_bytes(ebpfile.to_bytes(q, h))
    assert h2 == h
    for name in ("sizes", "acts", "shift_a", "shift_w", "shift_d", "loss", "batch_max",
                 "momentum", "alpha_q", "classes"):
        assert getattr(q2, name) == getattr(q, name), name
    assert all(np.array_equal(a, b) for a, b in zip(q.W + q.B, q2.W + q2.B, strict=True))
    np.testing.assert_array_equal(q2.in_offset, q.in_offset)
    np.testing.assert_array_equal(q2.in_scale, q.in_scale)


def test_board_part_alone_gives_hyper_from_the_fixed_values():
    q = make_qnet(momentum=True)
    h = Hyper(lr=0.05, momentum=0.25, weight_decay=0.01, batch=3, rounding="nearest", seed=9)
    _, h2 = ebpfile.from_bytes(ebpfile.to_bytes(q, h, trailer=False))
    # floats rebuilt from the mantissas and exponents give the same fixed-point settings
    assert h2.fixed() == h.fixed()
    _, none = ebpfile.from_bytes(ebpfile.to_bytes(q, None))
    assert none is None


def test_file_write_and_read(tmp_path):
    q = make_qnet("mse")
    ebpfile.write(tmp_path / "n.ebp", q, HYPER)
    q2, h2 = ebpfile.read(tmp_path / "n.ebp")
    assert h2 == HYPER and all(np.array_equal(a, b) for a, b in zip(q.W, q2.W, strict=True))


def test_board_parser_builds_the_same_net_as_quantnet():
    q = make_qnet("bce", momentum=True)
    h = Hyper(lr=0.05, momentum=0.5, weight_decay=1e-3, batch=3, rounding="stochastic", seed=5)
    net = ebp.load(ebpfile.to_bytes(q, h))
    ref = q.build(h)
    for name in ("sizes", "acts", "shift_a", "shift_w", "shift_d", "loss_kind", "batch_max",
                 "alpha", "lr_m", "lr_e", "batch", "mu", "c_m", "c_s", "mode"):
        assert getattr(net, name) == getattr(ref, name), name
    assert net.rng[0] == ref.rng[0]
    assert [list(w) for w in net.W] == [list(w) for w in ref.W]
    assert [list(b) for b in net.B] == [list(b) for b in ref.B]
    assert net.VW[0] is not None


@pytest.mark.parametrize("step", [1, 2, 3, 7, 64, 10_000])
def test_parser_takes_the_file_in_pieces_of_any_size(step):
    q = make_qnet(sizes=(6, 5, 4))
    data = ebpfile.to_bytes(q, HYPER)
    ld = ebp.Loader(len(data))
    for i in range(0, len(data), step):
        ld.feed(data, i, min(i + step, len(data)))
    assert same_weights(ld.finish(), q)


def test_parser_reads_a_stream():
    q = make_qnet()
    assert same_weights(ebp.load(io.BytesIO(ebpfile.to_bytes(q, HYPER))), q)


# -- malformed files --

def good():
    return bytearray(ebpfile.to_bytes(make_qnet(sizes=(4, 8, 3)), HYPER, trailer=False))


def refresh_head_crc(b):
    L = b[5]
    n = ebp.FIXED + 6 * L
    b[n:n + 2] = struct.pack("<H", crc16(b, 0, n))
    return b


def expect(data, *words):
    with pytest.raises(EbpError) as err:
        ebp.load(bytes(data))
    for w in words:
        assert w in str(err.value), str(err.value)
    # the host reader refuses it with the same message
    with pytest.raises(EbpError) as err2:
        ebpfile.from_bytes(bytes(data))
    assert str(err2.value) == str(err.value)


def test_bad_magic():
    b = good()
    b[0:4] = b"PK\x03\x04"
    expect(b, "bad magic")
    expect(b"EB", "truncated in the header")


def test_unsupported_version():
    b = good()
    b[4] = 9
    expect(b, "unsupported format version 9")


@pytest.mark.parametrize("L", [0, 9])
def test_layer_count_out_of_range(L):
    b = good()
    b[5] = L
    expect(b, f"{L} layers")


def test_truncation_names_the_place():
    b = bytes(good())
    head = ebp.head_len(2)
    w0 = head + 2 * 8 * 4
    b0 = w0 + 2 * 8
    w1 = b0 + 2 * 3 * 8
    # the board, not knowing the length in advance, sees the stream end at each place
    for cut, words in [(20, "truncated in the header"),
                       (head + 3, "weights of layer 1"),
                       (w0 + 1, "biases of layer 1"),
                       (b0 + 5, "weights of layer 2"),
                       (w1 + 2, "biases of layer 2"),
                       (len(b) - 1, "final CRC")]:
        with pytest.raises(EbpError, match=words):
            ebp.load(io.BytesIO(b[:cut]))
    # knowing the length, it refuses before allocating the net
    expect(b[:head + 10], "truncated", f"of {len(b)}")


def test_crc_mismatch_in_the_parameters():
    b = good()
    b[ebp.head_len(2) + 5] ^= 0x10
    expect(b, "CRC mismatch")


def test_header_crc_mismatch():
    b = good()
    b[30] ^= 1  # shift_a[0]
    expect(b, "header CRC mismatch")


@pytest.mark.parametrize("width,where", [(0, 32), (4097, 32), (5000, 28)])
def test_width_out_of_range(width, where):
    b = good()
    b[where:where + 2] = struct.pack("<H", width)
    expect(refresh_head_crc(b), f"width {width} out of range 1..4096")


def test_byte_count_disagrees_with_sizes():
    b = good()
    b[24:28] = struct.pack("<I", len(b) + 2)
    expect(refresh_head_crc(b), "header says", "layer sizes need")


def test_unknown_flags_and_logit_k_out_of_place():
    b = good()
    b[7] |= 0x80
    expect(refresh_head_crc(b), "unknown flags")
    b = bytearray(ebpfile.to_bytes(make_qnet("bce"), HYPER, trailer=False))
    assert b[31] == 0
    b[31] = 1
    expect(refresh_head_crc(b), "net: logit_k is for a softmax output")


def test_logit_k_is_written_read_and_checked():
    q = make_qnet("ce")
    q.logit_k = 2
    b = good()
    assert b[31] == 0
    b = bytearray(ebpfile.to_bytes(q, HYPER, trailer=False))
    assert b[31] == 2
    assert ebp.load(bytes(b)).logit_k == 2
    assert ebpfile.from_bytes(bytes(b))[0].logit_k == 2
    assert ebp.load(bytes(b)).s_f[-1] == q.build().s_f[-1] == good_net().s_f[-1] + 2
    b[31] = fixed.LOGIT_K_MAX + 1
    expect(refresh_head_crc(b), "net: logit_k 4 outside 0..3")


def good_net():
    return ebp.load(bytes(good()))


def test_bad_formats_are_refused_with_the_net_s_message():
    b = good()
    b[ebp.FIXED + 2] = 17  # activation of layer 1
    expect(refresh_head_crc(b), "net: layer 1: unknown activation 17")


def test_bad_hyper_parameters_are_refused():
    b = good()
    b[ebp.HYPER_AT + 1] = 1  # learning rate m * 2**-1: far too large for the formats
    expect(refresh_head_crc(b), "hyper-parameters: learning rate too large")


def test_minus_32768_is_refused():
    b = good()
    i = ebp.head_len(2)
    b[i:i + 2] = struct.pack("<h", -32768)
    b[-2:] = struct.pack("<H", crc16(b, 0, len(b) - 2))
    expect(b, "layer 1 weight: -32768")


def test_memory_check_before_allocation():
    ld = ebp.Loader(-1, mem_free=lambda: 100)
    with pytest.raises(EbpError, match="bytes of RAM, 100 free"):
        ld.feed(good(), 0, 100)


def test_host_section_damage():
    data = bytearray(ebpfile.to_bytes(make_qnet(), HYPER))
    data[-6] ^= 1
    with pytest.raises(EbpError, match="host section CRC mismatch"):
        ebpfile.from_bytes(bytes(data))
    with pytest.raises(EbpError, match="not a host section"):
        ebpfile.from_bytes(bytes(good()) + b"junk")
    # the board ignores what follows its part
    assert ebp.load(bytes(data)).L == 2


def test_writer_refuses_what_a_board_cannot_load():
    q = make_qnet()
    q.W[0][0, 0] = -32768
    with pytest.raises(EbpError, match=r"layer 1 weights outside \[-32767, 32767\]"):
        ebpfile.to_bytes(q)
    q = make_qnet()
    q.W[1] = q.W[1][:, :3]
    with pytest.raises(EbpError, match="layer 2: W is"):
        ebpfile.to_bytes(q)
    with pytest.raises(EbpError, match="learning-rate exponent"):
        ebpfile.to_bytes(make_qnet(), Hyper(lr=1e-80))
    with pytest.raises(EbpError, match="without momentum buffers"):
        ebpfile.to_bytes(make_qnet(momentum=False), Hyper(momentum=0.5))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_damaged_files_raise_only_ebp_errors(data):
    b = good()
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(b) - 1))
        b[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()) and ebp.head_len(b[5]) <= len(b):
        b = refresh_head_crc(b)  # get past the header check, into the field checks
    cut = data.draw(st.integers(0, len(b)))
    try:
        ebp.load(bytes(b[:cut]))
    except EbpError:
        pass


# -- Adam: flag bit 3 and its block of c1, c2 --

ADAM_HYPER = Hyper(lr=0.01, batch=2, weight_decay=1e-3, rounding="stochastic", seed=11)


def adam_qnet(kind="ce", sizes=(4, 8, 3), betas=(0.9, 0.999)):
    q = make_qnet(kind, sizes)
    q.adam = adam_q(*betas)
    return q


def adam_good():
    return bytearray(ebpfile.to_bytes(adam_qnet(), ADAM_HYPER, trailer=False))


def refresh_adam_crc(b):
    n = ebp.FIXED + 6 * b[5] + ebp.ADAM_LEN
    b[n:n + 2] = struct.pack("<H", crc16(b, 0, n))
    return b


@pytest.mark.parametrize("kind", ["ce", "bce", "mse"])
@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.0, 0.0), (0.999, 0.99999)])
def test_adam_round_trip(kind, betas):
    q = adam_qnet(kind, (5, 7, 3), betas)
    data = ebpfile.to_bytes(q, ADAM_HYPER)
    L = 2
    # the block sits after the layer records, under the header CRC
    assert data[7] & ebp.FLAG_ADAM and not data[7] & ebp.FLAG_MOMENTUM
    at = ebp.FIXED + 6 * L
    assert struct.unpack_from("<HH", data, at) == q.adam
    assert struct.unpack_from("<H", data, at + 4)[0] == crc16(data, 0, at + 4)
    assert struct.unpack_from("<I", data, 24)[0] == ebp.file_len(q.sizes, adam=True)
    q2, h2 = ebpfile.from_bytes(data)
    assert q2.adam == q.adam and h2 == ADAM_HYPER and not q2.momentum
    assert all(np.array_equal(a, b) for a, b in zip(q.W + q.B, q2.W + q2.B, strict=True))
    # and a file without the flag reads back without Adam
    assert ebpfile.from_bytes(ebpfile.to_bytes(make_qnet(kind, (5, 7, 3)), HYPER))[0].adam is None


def test_adam_board_parser_attaches_adam_before_the_hyper_parameters():
    q = adam_qnet("bce")
    # a learning rate SGD's update could not apply in these formats: Adam's can, and the
    # loader takes it because Adam is attached before the hyper block is applied
    big = Hyper(lr=8.0, batch=2)
    with pytest.raises(EbpError, match="learning rate too large"):
        ebpfile.to_bytes(make_qnet("bce"), big)
    net = ebp.load(ebpfile.to_bytes(q, big))
    assert (net.opt.c1, net.opt.c2) == q.adam and net.VW[0] is None
    ref = q.build(big)
    assert (net.lr_m, net.lr_e) == (ref.lr_m, ref.lr_e)
    X, T = make_data(q, 12)
    for x, t in zip(X, T, strict=True):
        net.learn(array("h", x.tolist()), array("h", t.tolist()))
        ref.learn(array("h", x.tolist()), array("h", t.tolist()))
    assert [list(w) for w in net.W] == [list(w) for w in ref.W]
    assert net.opt.t == ref.opt.t == 6


@pytest.mark.parametrize("step", [1, 5, 7, 41])
def test_adam_file_in_pieces_of_any_size(step):
    data = ebpfile.to_bytes(adam_qnet(), ADAM_HYPER)
    ld = ebp.Loader(len(data))
    for i in range(0, len(data), step):
        ld.feed(data, i, min(i + step, len(data)))
    net = ld.finish()
    assert net.opt is not None and same_weights(net, adam_qnet())
    net = ebp.load(io.BytesIO(data))
    assert (net.opt.c1, net.opt.c2) == adam_q()


@pytest.mark.parametrize("c1,c2,words", [
    (31, 33, "Adam beta1 outside"), (0, 33, "Adam beta1 outside"),
    (32769, 33, "Adam beta1 outside"), (3277, 0, "Adam beta2 outside"),
    (3277, 32769, "Adam beta2 outside"), (65535, 65535, "Adam beta1 outside")])
def test_adam_settings_out_of_range_are_refused_in_one_line(c1, c2, words):
    b = adam_good()
    at = ebp.FIXED + 6 * 2
    b[at:at + 4] = struct.pack("<HH", c1, c2)
    expect(refresh_adam_crc(b), words)
    with pytest.raises(EbpError) as err:
        ebp.load(bytes(b))
    assert "\n" not in str(err.value)
    # the writer refuses the same, with the board's words
    q = adam_qnet()
    q.adam = (c1, c2)
    with pytest.raises(EbpError, match=words):
        ebpfile.to_bytes(q, ADAM_HYPER)


def test_adam_edges_are_accepted():
    for c1, c2 in ((32, 1), (32768, 32768)):
        q = adam_qnet()
        q.adam = (c1, c2)
        assert ebpfile.from_bytes(ebpfile.to_bytes(q, ADAM_HYPER))[0].adam == (c1, c2)


def test_adam_block_is_under_the_header_crc():
    b = adam_good()
    b[ebp.FIXED + 6 * 2] ^= 1  # c1
    expect(b, "header CRC mismatch")
    # a file without the flag but with the block: the header CRC falls elsewhere
    b = adam_good()
    b[7] &= ~ebp.FLAG_ADAM
    expect(refresh_head_crc(b), "header says")


def test_adam_with_momentum_is_refused():
    b = adam_good()
    b[7] |= ebp.FLAG_MOMENTUM
    expect(refresh_adam_crc(b), "Adam and momentum")
    q = adam_qnet()
    q.momentum = True
    with pytest.raises(EbpError, match="Adam and momentum"):
        ebpfile.to_bytes(q, ADAM_HYPER)
    # nor does an Adam net take a momentum setting
    with pytest.raises(EbpError, match="without momentum buffers"):
        ebpfile.to_bytes(adam_qnet(), Hyper(lr=0.01, momentum=0.5))


def test_adam_memory_check_counts_its_moments():
    sizes = [4, 8, 3]
    params = 8 * 5 + 3 * 9
    # M and V, int32 each, per parameter
    assert ebp.ram_need(sizes, False, True) - ebp.ram_need(sizes, False) == 8 * params
    need = ebp.ram_need(sizes, False, True)
    data = adam_good()
    with pytest.raises(ebp.NoRoom, match=f"about {need} bytes of RAM, {need - 1} free"):
        ebp.Loader(len(data), mem_free=lambda: need - 1).feed(data, 0, len(data))
    ld = ebp.Loader(len(data), mem_free=lambda: need)
    ld.feed(data, 0, len(data))
    assert ld.finish().opt is not None


def test_an_sgd_net_does_not_import_adam():
    import subprocess
    import sys

    code = ("import sys; from edgebp import ebp; from edgebp.host.nets import ebpfile; "
            "import test_ebp; ebp.load(ebpfile.to_bytes(test_ebp.make_qnet(), test_ebp.HYPER)); "
            "print('edgebp.adam' in sys.modules)")
    import os
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=os.path.dirname(__file__), check=True)
    assert done.stdout.split()[-1] == "False"


def test_kernels_without_adam_refuse_an_adam_net_in_one_line(monkeypatch):
    # native kernels without Adam's module beside them (no edgebp/adam_native.mpy): the
    # loader says so, naming the kernels, rather than failing inside the net
    import sys
    import types

    from edgebp import kernels

    monkeypatch.setitem(sys.modules, "edgebp.adam_native", None)  # import fails
    old = types.ModuleType("edgebp.kernels_native")
    for name in dir(kernels):
        if not name.startswith("_"):
            setattr(old, name, getattr(kernels, name))
    with pytest.raises(EbpError, match="^no Adam kernel for the native kernels$"):
        ebp.Loader(-1, old).feed(adam_good(), 0, len(adam_good()))
    # an SGD net loads with them
    ld = ebp.Loader(-1, old)
    ld.feed(good(), 0, len(good()))
    net = ld.finish()
    assert net.opt is None and net.k is old


# -- SDLM: flag bit 4, its mu, gamma and curvature formats under the header CRC --

SDLM_HYPER = Hyper(lr=0.02, batch=2, weight_decay=1e-3, rounding="stochastic", seed=13)


def sdlm_qnet(kind="ce", sizes=(4, 8, 3), mu=0.1, gamma=0.05, fc=None, fh=None):
    q = make_qnet(kind, sizes)
    L = len(sizes) - 1
    q.sdlm = sdlm_q(mu, gamma, fc or [11 + l for l in range(L - 1)] + [14],
                    fh or [9 + l for l in range(L)])
    return q


def sdlm_good():
    return bytearray(ebpfile.to_bytes(sdlm_qnet(), SDLM_HYPER, trailer=False))


def refresh_sdlm_crc(b):
    n = ebp.FIXED + 6 * b[5] + ebp.SDLM_LEN + 2 * b[5]
    b[n:n + 2] = struct.pack("<H", crc16(b, 0, n))
    return b


@pytest.mark.parametrize("kind", ["ce", "bce", "mse"])
@pytest.mark.parametrize("sizes", [(5, 7, 3), (3, 2), (4, 6, 5, 2)])
def test_sdlm_round_trip(kind, sizes):
    q = sdlm_qnet(kind, sizes, mu=0.3, gamma=0.01)
    data = ebpfile.to_bytes(q, SDLM_HYPER)
    L = len(sizes) - 1
    assert data[7] & ebp.FLAG_SDLM and not data[7] & (ebp.FLAG_MOMENTUM | ebp.FLAG_ADAM)
    # the block sits after the layer records, under the header CRC: mu_m, mu_e, gamma, then
    # fc, fh of each layer
    at = ebp.FIXED + 6 * L
    mu_m, mu_e, gamma, fc, fh = q.sdlm
    assert struct.unpack_from("<BBH", data, at) == (mu_m, mu_e, gamma)
    assert mu_m * 2.0 ** -mu_e == pytest.approx(0.3, rel=1 / 256) and gamma == 164
    assert list(data[at + 4:at + 4 + 2 * L]) == [v for l in range(L) for v in (fc[l], fh[l])]
    end = at + 4 + 2 * L
    assert struct.unpack_from("<H", data, end)[0] == crc16(data, 0, end)
    assert struct.unpack_from("<I", data, 24)[0] == ebp.file_len(q.sizes, sdlm=True)
    assert ebp.head_len(L, sdlm=True) == end + 2
    q2, h2 = ebpfile.from_bytes(data)
    assert q2.sdlm == q.sdlm and q2.adam is None and h2 == SDLM_HYPER and not q2.momentum
    assert all(np.array_equal(a, b) for a, b in zip(q.W + q.B, q2.W + q2.B, strict=True))
    assert ebpfile.from_bytes(ebpfile.to_bytes(make_qnet(kind, sizes), HYPER))[0].sdlm is None


def test_sdlm_board_parser_attaches_sdlm_and_trains_as_the_core():
    q = sdlm_qnet("mse", (4, 6, 3))
    data = ebpfile.to_bytes(q, SDLM_HYPER)
    net = ebp.load(data)
    o = net.opt
    assert (o.mu_m, o.mu_e, o.gamma, tuple(o.fc), tuple(o.fh)) == q.sdlm and net.VW[0] is None
    ref = q.build(SDLM_HYPER)
    X, T = make_data(q, 12)
    for x, t in zip(X, T, strict=True):
        net.learn(array("h", x.tolist()), array("h", t.tolist()))
        ref.learn(array("h", x.tolist()), array("h", t.tolist()))
    assert [list(w) for w in net.W] == [list(w) for w in ref.W]
    assert [list(h) for h in net.opt.HW] == [list(h) for h in ref.opt.HW]
    assert net.opt.n == ref.opt.n == 6 and any(any(h) for h in net.opt.HW)


@pytest.mark.parametrize("step", [1, 5, 7, 41])
def test_sdlm_file_in_pieces_of_any_size(step):
    data = ebpfile.to_bytes(sdlm_qnet(), SDLM_HYPER)
    ld = ebp.Loader(len(data))
    for i in range(0, len(data), step):
        ld.feed(data, i, min(i + step, len(data)))
    net = ld.finish()
    assert net.opt is not None and net.opt.curv and same_weights(net, sdlm_qnet())
    assert ebp.load(io.BytesIO(data)).opt.gamma == sdlm_qnet().sdlm[2]


@pytest.mark.parametrize("field,value,words", [
    (0, 0, "SDLM mu mantissa 0"), (1, 31, "exponent 31 outside"),
    (2, 0, "SDLM gamma 0 outside 1..16384"), (2, 16385, "SDLM gamma 16385 outside"),
    (4, 25, "layer 1: SDLM curvature formats Q25"), (5, 15, "layer 1: SDLM curvature formats"),
    (6, 13, "the output layer's curvature is Q14"),
    # mu = 255 in Q14 does not fit int16; mu = 2**-30 in Q9 is below one LSB
    (1, 0, "layer 1: SDLM mu 205/2**0 is too large for the curvature format Q9"),
    (1, 30, "layer 1: SDLM mu 205/2**30 is too small for the curvature format Q9")])
def test_sdlm_settings_out_of_range_are_refused_in_one_line(field, value, words):
    b = sdlm_good()
    at = ebp.FIXED + 6 * 2
    if field == 2:
        b[at + 2:at + 4] = struct.pack("<H", value)
    else:
        b[at + field] = value
    expect(refresh_sdlm_crc(b), words)
    with pytest.raises(EbpError) as err:
        ebp.load(bytes(b))
    assert "\n" not in str(err.value)


def test_sdlm_edges_are_accepted():
    for mu, gamma, fc, fh in ((1.0, 1.0, [0, 14], [0, 0]), (2.0**-14, 2.0**-14, [24, 14],
                                                             [14, 14]), (255.0, 0.5, [5, 14],
                                                                         [6, 7])):
        q = sdlm_qnet(mu=mu, gamma=gamma, fc=fc, fh=fh)
        assert ebpfile.from_bytes(ebpfile.to_bytes(q, SDLM_HYPER))[0].sdlm == q.sdlm


def test_sdlm_block_is_under_the_header_crc():
    for at in (0, 2, 4, 7):
        b = sdlm_good()
        b[ebp.FIXED + 6 * 2 + at] ^= 1
        expect(b, "header CRC mismatch")
    b = sdlm_good()
    b[7] &= ~ebp.FLAG_SDLM
    expect(refresh_head_crc(b), "header says")


def test_sdlm_with_momentum_or_adam_is_refused():
    b = sdlm_good()
    b[7] |= ebp.FLAG_MOMENTUM
    expect(refresh_sdlm_crc(b), "SDLM and momentum together: a net has one optimiser")
    q = sdlm_qnet()
    q.momentum = True
    with pytest.raises(EbpError, match="SDLM and momentum"):
        ebpfile.to_bytes(q, SDLM_HYPER)
    with pytest.raises(EbpError, match="without momentum buffers"):
        ebpfile.to_bytes(sdlm_qnet(), Hyper(lr=0.01, momentum=0.5))
    q = sdlm_qnet()
    q.adam = adam_q()
    with pytest.raises(EbpError, match="Adam and SDLM together"):
        ebpfile.to_bytes(q, SDLM_HYPER)
    # both flags: the header holds both blocks, and the board refuses the pair
    b = sdlm_good()
    at = ebp.FIXED + 6 * 2
    b[7] |= ebp.FLAG_ADAM
    b[at:at] = struct.pack("<HH", *adam_q())
    b[24:28] = struct.pack("<I", len(b))
    n = ebp.head_len(2, True, True) - 2
    b[n:n + 2] = struct.pack("<H", crc16(b, 0, n))
    b[-2:] = struct.pack("<H", crc16(b, 0, len(b) - 2))
    expect(b, "Adam and SDLM together: a net has one optimiser")


def test_sdlm_memory_check_counts_its_curvatures():
    sizes = [4, 8, 3]
    params = 8 * 5 + 3 * 9
    units = 8 + 3
    L = 2
    # HW, HB int16 per parameter, C int16 per unit, its lists
    extra = ebp.ram_need(sizes, False, sdlm=True) - ebp.ram_need(sizes, False)
    assert extra == 2 * params + 2 * units + 10 * (16 + 4 * L)
    need = ebp.ram_need(sizes, False, sdlm=True)
    data = sdlm_good()
    with pytest.raises(ebp.NoRoom, match=f"about {need} bytes of RAM, {need - 1} free"):
        ebp.Loader(len(data), mem_free=lambda: need - 1).feed(data, 0, len(data))
    ld = ebp.Loader(len(data), mem_free=lambda: need)
    ld.feed(data, 0, len(data))
    net = ld.finish()
    assert net.opt.curv and ebp.net_need(net) == need


def test_an_sgd_net_does_not_import_sdlm():
    import os
    import subprocess
    import sys

    code = ("import sys; from edgebp import ebp; from edgebp.host.nets import ebpfile; "
            "import test_ebp; ebp.load(ebpfile.to_bytes(test_ebp.make_qnet(), test_ebp.HYPER)); "
            "a = 'edgebp.sdlm' in sys.modules; "
            "ebp.load(ebpfile.to_bytes(test_ebp.sdlm_qnet(), test_ebp.SDLM_HYPER)); "
            "print(a, 'edgebp.sdlm' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=os.path.dirname(__file__), check=True)
    assert done.stdout.split()[-2:] == ["False", "True"]


def test_kernels_without_sdlm_refuse_an_sdlm_net_in_one_line(monkeypatch):
    # native kernels without SDLM's module beside them (no edgebp/sdlm_native.mpy), and a
    # board without edgebp/sdlm_viper.py: the loader says so, naming the kernels
    import sys
    import types

    from edgebp import kernels, sdlm

    def like(name):
        m = types.ModuleType(name)
        for n in dir(kernels):
            if not n.startswith("_"):
                setattr(m, n, getattr(kernels, n))
        return m

    native = like("edgebp.kernels_native")
    monkeypatch.setitem(sys.modules, "edgebp.sdlm_native", None)  # an import that fails
    with pytest.raises(EbpError, match="^no SDLM kernel for the native kernels$"):
        ebp.Loader(-1, native).feed(sdlm_good(), 0, len(sdlm_good()))
    monkeypatch.setitem(sys.modules, "edgebp.sdlm_viper", None)
    with pytest.raises(EbpError, match="^no SDLM kernel for the viper kernels$"):
        ebp.Loader(-1, like("edgebp.kernels_viper")).feed(sdlm_good(), 0, len(sdlm_good()))
    # with the module there, the net takes its kernels from it
    mod = types.ModuleType("edgebp.sdlm_native")
    for name in ("sq_t", "curv_acc", "sdlm"):
        setattr(mod, name, getattr(sdlm, name))
    monkeypatch.setitem(sys.modules, "edgebp.sdlm_native", mod)
    ld = ebp.Loader(-1, native)
    ld.feed(sdlm_good(), 0, len(sdlm_good()))
    assert ld.finish().opt.k is mod
