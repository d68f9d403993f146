"""Weight formats that follow the weights (edgebp/dynfmt.py): the rule, its file, checkpoint,
spec and pulled-net plumbing and its refusals.

Its bit-exactness on every runtime and emulated board is tested with the other cases
(tests/combos.py edge_cases "-dyn-edge": tests/test_core_runtimes.py, test_viper.py,
test_native.py); here the twin and the pure core are compared over many updates with moves
both ways, and the rule is checked against its statement."""

from __future__ import annotations

import numpy as np
import pytest

from edgebp import ckpt, dynfmt, ebp, kernels
from edgebp.host.boards.session import Session
from edgebp.host.nets import ebpfile, train
from edgebp.host.nets.quantize import DYN_ROOM, quantize
from edgebp.host.nets.ranges import MAX_COMBINATIONS, RangeError, check_ranges, window_formats
from edgebp.host.nets.spec import SpecError, init_float_weights, make_spec
from edgebp.host.nets.twin import TwinNet


def _problem(momentum=0.9):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 6))
    y = (X[:, 0] * 3 + X[:, 1] ** 2 > 1).astype(int) + (X[:, 2] > 0.5)
    spec = make_spec(sizes=[6, 12, 3], activations=["relu", "softmax"], loss="softmax_ce",
                     input_range={"min": -4, "max": 4},
                     optimizer={"lr": 0.5, "momentum": momentum, "batch": 4,
                                "rounding": "stochastic", "seed": 3},
                     batch_max=4, weight_formats="dynamic")
    W, B = init_float_weights(spec)
    q = quantize(spec, W, B, X, y)
    _, _, Xq, Tq = train.prepare(q, X, y)
    return spec, q, Xq, Tq


def _learn(net, Xq, Tq, order):
    for i in order:
        net.learn([int(v) for v in Xq[i]], [int(v) for v in Tq[i]])


def test_the_quantiser_sets_windows_the_range_proof_covers():
    spec, q, _, _ = _problem()
    lo, hi = q.dyn
    assert list(hi) == q.shift_w
    # each window DYN_ROOM wide, or narrowed because one step wider is refused
    for l in range(q.L):
        assert 0 < hi[l] - lo[l] <= DYN_ROOM
        if hi[l] - lo[l] < DYN_ROOM:
            wider = list(lo)
            wider[l] -= 1
            with pytest.raises(ValueError):  # RangeError or the core's check
                dynfmt.check(q.build(), wider, hi)
                check_ranges(q.__class__(**{**q.__dict__, "dyn": (tuple(wider), hi)}),
                             spec.hyper())
    # every combination is a net the core accepts, and its requant shifts are the ones the
    # rule keeps: every backward shift, and the forward shift of the relu layer
    start = q.build()
    combos = list(window_formats(q))
    assert len(combos) == np.prod([h - w + 1 for w, h in zip(lo, hi, strict=True)])
    for c in combos:
        net = c.build()
        assert net.s_b == start.s_b and net.s_f[0] == start.s_f[0]
        # the softmax layer takes both steps: its input's and its weights'
        moved = sum(c.shift_w[j] - q.shift_w[j] for j in range(2))
        assert net.s_f[1] == start.s_f[1] + moved
    # a format outside its window is refused
    sw = list(q.shift_w)
    sw[0] = lo[0] - 1
    with pytest.raises(RangeError, match="outside its window"):
        check_ranges(q.__class__(**{**q.__dict__, "shift_w": sw}), spec.hyper())


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_twin_and_core_move_alike_both_ways(momentum):
    spec, q, Xq, Tq = _problem(momentum)
    tw = TwinNet.from_qnet(q, spec.hyper())
    core = q.build(spec.hyper(), kernels)
    formats = set()
    for ep in range(30):
        order = train.epoch_order(len(Xq), 1, ep)
        tw.train_epoch(Xq, Tq, order)
        tw.update()
        _learn(core, Xq, Tq, order)
        core.update()
        formats.add(tuple(core.shift_w))
        assert core.shift_w == tw.shift_w, ep
        assert (core.shift_a, core.shift_d, core.s_f, core.s_b, core.one) == (
            tw.shift_a, tw.shift_d, tw.s_f, tw.s_b, tw.one), ep
        for l in range(core.L):
            assert list(core.W[l]) == tw.W[l].ravel().tolist(), (ep, l)
            assert list(core.B[l]) == tw.B[l].tolist(), (ep, l)
            if momentum:
                assert list(core.VW[l]) == tw.VW[l].ravel().tolist(), (ep, l)
    assert core.dyn.moves == tw.moves >= 4
    assert len(formats) >= 3
    # no weight at the int16 limit while its layer could still go down
    for l in range(core.L):
        assert max(abs(v) for v in core.W[l]) < 32767 or core.shift_w[l] == core.dyn.lo[l]


def test_the_rule_as_stated():
    # weights at the limit halve (rounded half up), momentum too; tiny ones double, momentum
    # saturating at V_MAX; what the weights produce follows: the relu layer's z and the
    # softmax layer's input, and the hidden delta below the output layer
    spec, q, _, _ = _problem()
    # layer 2 one format below the top of its window, so that it can go up
    q = q.__class__(**{**q.__dict__, "shift_w": [q.shift_w[0], q.shift_w[1] - 1],
                       "W": [q.W[0], q.W[1] // 32], "B": [q.B[0], q.B[1] // 32]})
    net = q.build(spec.hyper(), kernels)
    net.set_lr(128, 12)  # room below the update's shifts for both moves
    s_f, s_b, one = list(net.s_f), list(net.s_b), list(net.one)
    sw, sa, sd = list(net.shift_w), list(net.shift_a), list(net.shift_d)
    net.W[0][0] = 16384
    net.W[0][1] = -3
    net.VW[0][0] = -5
    w1 = list(net.W[1])
    assert max(abs(v) for v in w1 + list(net.B[1])) < 4096
    net.VW[1][0] = 0x3FFFFF
    net.VW[1][1] = -7
    net.dyn.follow(net)
    assert net.W[0][0] == 8192 and net.W[0][1] == -1 and net.VW[0][0] == -2
    assert list(net.W[1]) == [2 * v for v in w1]
    assert net.VW[1][0] == 0x3FFFFF and net.VW[1][1] == -14  # doubled, saturated at V_MAX
    assert net.shift_w == [sw[0] - 1, sw[1] + 1] and sw[1] + 1 == net.dyn.hi[1]
    # layer 1 down: its z and layer 2's input one bit coarser (layer 2's forward shift takes
    # it); layer 2 up: layer 1's delta one bit finer (and layer 2's forward shift)
    assert net.shift_a == [sa[0], sa[1] - 1, sa[2]] and net.shift_d == [sd[0] + 1, sd[1]]
    assert net.shift_z[0] == sa[1] - 1 and net.one == [one[0], one[1] // 2]
    assert net.s_f == s_f and net.s_b == s_b
    assert net.dyn.moves == 2
    # in the gap between the thresholds nothing moves
    net.dyn.follow(net)
    assert net.dyn.moves == 2
    # a move that would take an update's shift below zero at the learning rate is not made:
    # at the largest rate the formats now allow, a layer's shift is 0; moving the other
    # layer down would lower it (layer 1 down: layer 2's input; layer 2 down: layer 1's
    # delta)
    f = [net.shift_d[l] + net.shift_a[l] - net.shift_w[l] for l in range(net.L)]
    e = max(net.kg + 16 - v for v in f)
    net.set_lr(128, e)
    bound = [l for l in range(net.L) if e + f[l] - net.kg - 16 == 0][0]
    mover = 1 - bound
    assert net.shift_w[mover] > net.dyn.lo[mover]
    for l in range(net.L):
        for i in range(len(net.W[l])):
            net.W[l][i] = 8192  # in the gap: no move of its own
        for i in range(len(net.B[l])):
            net.B[l][i] = 8192
    net.W[mover][0] = 16384
    net.dyn.follow(net)
    assert net.dyn.moves == 2 and net.W[mover][0] == 16384
    # at half the rate it is made
    net.set_lr(128, e + 1)
    net.dyn.follow(net)
    assert net.dyn.moves == 3 and net.W[mover][0] == 8192


def test_the_file_and_checkpoints_keep_the_formats_of_now(tmp_path):
    spec, q, Xq, Tq = _problem()
    q2, _ = ebpfile.from_bytes(ebpfile.to_bytes(q, spec.hyper()))
    assert q2.dyn == q.dyn and q2.shift_w == q.shift_w
    net = ebp.load(ebpfile.board_part(q, spec.hyper()), kernels)
    for _ in range(20):
        _learn(net, Xq, Tq, range(len(Xq)))
    assert net.shift_w != q.shift_w
    _learn(net, Xq, Tq, [0])  # a pending sum in the checkpoint
    ckpt.save(net, str(tmp_path))
    path, head = ckpt.find(str(tmp_path))
    back = ckpt.load(path, head, kernels)
    assert back.shift_w == net.shift_w and back.dyn.lo == net.dyn.lo
    assert (back.shift_a, back.shift_d) == (net.shift_a, net.shift_d) != (q.shift_a, q.shift_d)
    _learn(net, Xq, Tq, range(150))
    _learn(back, Xq, Tq, range(150))
    assert back.shift_w == net.shift_w
    assert all(list(back.W[l]) == list(net.W[l]) for l in range(net.L))
    # a pulled net: the host's copy with the core's formats and weights
    pulled = q.with_weights(net)
    assert (pulled.shift_w, pulled.shift_a, pulled.shift_d) == (net.shift_w, net.shift_a,
                                                                 net.shift_d)
    back = ebpfile.from_bytes(ebpfile.to_bytes(pulled))[0]
    assert (back.shift_w, back.shift_a, back.shift_d) == (net.shift_w, net.shift_a, net.shift_d)


def test_a_session_pulls_the_boards_formats():
    spec, q, Xq, Tq = _problem()
    with Session("sim://", timeout=0.5) as s:
        s.load(q, spec.hyper())
        for _ in range(20):
            s.train(Xq, Tq)
        pulled = s.pull()
    ref = q.build(spec.hyper(), kernels)
    for _ in range(20):
        _learn(ref, Xq, Tq, range(len(Xq)))
    assert pulled.shift_w == ref.shift_w != q.shift_w
    assert (pulled.shift_a, pulled.shift_d) == (ref.shift_a, ref.shift_d)


def test_refusals_are_one_line():
    spec, q, _, _ = _problem()
    with pytest.raises(SpecError, match="weight_growth: is for fixed weight formats"):
        make_spec(sizes=[2, 2, 1], activations=["tanh", "sigmoid"], loss="bce",
                  input_range={"min": -1, "max": 1}, weight_formats="dynamic", weight_growth=8)
    with pytest.raises(SpecError, match="dynamic formats are for SGD, not adam"):
        make_spec(sizes=[2, 2, 1], activations=["tanh", "sigmoid"], loss="bce",
                  input_range={"min": -1, "max": 1}, weight_formats="dynamic", optimizer="adam")
    with pytest.raises(SpecError, match="weight_formats"):
        make_spec(sizes=[2, 2, 1], activations=["tanh", "sigmoid"], loss="bce",
                  input_range={"min": -1, "max": 1}, weight_formats="floating")
    # a format outside its window, in a file: refused by the loader, naming the layer
    bad = q.__class__(**{**q.__dict__, "dyn": ((0, 0), (1, 1))})
    with pytest.raises(ebp.EbpError, match="layer 1: weight format .* outside its window"):
        ebpfile.board_part(bad)
    with pytest.raises(ebpfile.EbpError, match="for SGD, not Adam"):
        ebpfile.board_part(q.__class__(**{**q.__dict__, "momentum": False, "adam": (3277, 33)}))
    net = q.build()
    with pytest.raises(ValueError, match="another optimiser"):
        from edgebp import adam

        n2 = q.__class__(**{**q.__dict__, "momentum": False, "dyn": None}).build()
        adam.attach(n2, 3277, 33)
        dynfmt.attach(n2, *q.dyn)
    assert net.dyn is not None


def test_deep_nets_get_windows_the_proof_can_visit():
    # five layers of nine formats each would be 59,049 combinations: the quantiser narrows
    # the widest windows until the proof's limit holds, and no further
    rng = np.random.default_rng(1)
    X = rng.normal(size=(64, 5))
    y = (X[:, 0] > 0).astype(int)
    spec = make_spec(sizes=[5, 8, 8, 8, 8, 2], activations=["relu"] * 4 + ["softmax"],
                     loss="softmax_ce", input_range={"min": -4, "max": 4},
                     optimizer={"lr": 0.05, "batch": 4}, batch_max=4, weight_formats="dynamic")
    W, B = init_float_weights(spec)
    q = quantize(spec, W, B, X, y)  # proved at every combination it reaches
    lo, hi = q.dyn
    count = int(np.prod([h - w + 1 for w, h in zip(lo, hi, strict=True)]))
    assert count <= MAX_COMBINATIONS
    for l in range(q.L):
        if hi[l] - lo[l] < DYN_ROOM:
            wider = list(lo)
            wider[l] -= 1
            over = count // (hi[l] - lo[l] + 1) * (hi[l] - lo[l] + 2) > MAX_COMBINATIONS
            if not over:
                with pytest.raises(ValueError):
                    dynfmt.check(q.build(), wider, hi)
                    check_ranges(q.__class__(**{**q.__dict__, "dyn": (tuple(wider), hi)}),
                                 spec.hyper())
    # more combinations than that are refused by the proof, in one line
    wide = q.__class__(**{**q.__dict__, "dyn": (tuple(max(0, h - DYN_ROOM) for h in hi), hi)})
    with pytest.raises(RangeError, match="combinations, more than the 4096"):
        check_ranges(wide, spec.hyper())
