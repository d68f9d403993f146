"""The numpy twin against the core: bit-identical state after every training step.

The core (edgebp.net.Net with the pure-Python kernels) is the definition. Every test drives a
core net and a TwinNet through the same samples and compares all state: weights, biases,
gradient sums, momentum, Adam's moments and t, beta**t, SDLM's curvatures C, HW, HB and its
sample count, the Z/A/D buffers, the rng, counts, correct and loss sums.

The edge-of-range nets run on a copy of the core whose every arithmetic expression is wrapped in
a check (an AST rewrite of edgebp/fixed.py, kernels.py, net.py, adam.py and sdlm.py), so the
same runs also show that the core's intermediates stay inside MicroPython's small-int range
[-2**30, 2**30).
"""

from __future__ import annotations

import ast
import copy
import itertools
from array import array
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from edgebp import adam, fixed, kernels, luts, luts_act, net, sdlm
from edgebp.fixed import (
    BCE,
    IDENTITY,
    LEAKY,
    MISH,
    MSE,
    RELU,
    SIGMOID,
    SOFTMAX,
    SOFTMAX_CE,
    SWISH,
    TANH,
    V_MAX,
)
from edgebp.host.nets import twin
from edgebp.host.nets.qnet import Hyper, QuantNet, adam_q, sdlm_q
from edgebp.host.nets.twin import TwinNet, Xorshift30Jumps

CORE = Path(fixed.__file__).resolve().parent
HIDDEN = [IDENTITY, RELU, LEAKY, SIGMOID, TANH, SWISH, MISH]
SQUASH = (SIGMOID, TANH, SOFTMAX)
GATED = (SWISH, MISH)  # z and output in Q12


# -- an instrumented copy of the core --

SMALL = 1 << 30


def _in_range(v):
    if type(v) is int and not -SMALL <= v < SMALL:
        raise AssertionError(f"core intermediate {v} outside [-2**30, 2**30)")
    return v


class _Guard(ast.NodeTransformer):
    """Wraps every arithmetic expression in _in_range; edgebp imports read from _core."""

    @staticmethod
    def _check(node):
        return ast.Call(ast.Name("_in_range", ast.Load()), [node], [])

    def visit_BinOp(self, node):
        self.generic_visit(node)
        return self._check(node)

    def visit_UnaryOp(self, node):
        self.generic_visit(node)
        return self._check(node) if isinstance(node.op, (ast.USub, ast.Invert)) else node

    def visit_AugAssign(self, node):
        self.generic_visit(node)
        load = copy.deepcopy(node.target)
        load.ctx = ast.Load()
        return ast.Assign([node.target], self._check(ast.BinOp(load, node.op, node.value)))

    def visit_ImportFrom(self, node):
        if node.module != "edgebp" and not (node.module or "").startswith("edgebp."):
            return node
        out = []
        for alias in node.names:
            if node.module == "edgebp":
                value = ast.Subscript(ast.Name("_core", ast.Load()), ast.Constant(alias.name),
                                      ast.Load())
            else:
                mod = ast.Subscript(ast.Name("_core", ast.Load()),
                                    ast.Constant(node.module.split(".")[1]), ast.Load())
                value = ast.Attribute(mod, alias.name, ast.Load())
            out.append(ast.Assign([ast.Name(alias.asname or alias.name, ast.Store())], value))
        return out


def checked_core() -> dict[str, ModuleType]:
    core: dict[str, ModuleType] = {"luts": luts, "luts_act": luts_act}
    for name in ("fixed", "kernels", "net", "adam", "sdlm"):
        path = CORE / f"{name}.py"
        tree = ast.fix_missing_locations(_Guard().visit(ast.parse(path.read_text())))
        mod = ModuleType(f"checked_{name}")
        mod.__dict__.update(_in_range=_in_range, _core=core)
        exec(compile(tree, str(path), "exec"), mod.__dict__)
        core[name] = mod
    return core


CHECKED = checked_core()


def test_guard_sees_overflowing_product():
    W, x, z = array("h", [-32768]), array("h", [-32768]), array("h", [0])
    kernels.matvec(W, array("h", [0]), x, 1, 1, 1, 0, 0, z)  # the plain core cannot tell
    with pytest.raises(AssertionError, match="outside"):
        CHECKED["kernels"].matvec(W, array("h", [0]), x, 1, 1, 1, 0, 0, z)


# -- comparing state --


def core_state(n) -> dict:
    s = {}
    for l in range(n.L):
        for name in ("W", "B", "GW", "GB", "VW", "VB", "Z", "D"):
            buf = getattr(n, name)[l]
            s[f"{name}[{l}]"] = None if buf is None else [int(v) for v in buf]
    for l in range(n.L + 1):
        s[f"A[{l}]"] = [int(v) for v in n.A[l]]
    for name in ("count", "grad_count", "seen", "correct", "loss_sum"):
        s[name] = getattr(n, name)
    s["rng"] = int(n.rng[0])
    s.update(opt_state(n.opt, n.L))
    return s


def opt_state(o, L) -> dict:
    # Adam's or SDLM's state, core's or twin's (None: neither)
    if o is None:
        return {"opt": None}
    if not hasattr(o, "MW"):
        s = {f"{name}[{l}]": [int(v) for v in np.ravel(getattr(o, name)[l])]
             for l in range(L) for name in ("C", "HW", "HB")}
        s["opt"] = (o.n, o.mu_m, o.mu_e, o.gamma, list(o.fc), list(o.fh), list(o.mu))
        return s
    s = {f"{name}[{l}]": [int(v) for v in np.ravel(getattr(o, name)[l])]
         for l in range(L) for name in ("MW", "MB", "VW", "VB")}
    s["opt"] = (o.t, o.p1, o.p2, o.c1, o.c2)
    return s


def twin_state(t: TwinNet) -> dict:
    s = {}
    for l in range(t.L):
        for name in ("W", "B", "GW", "GB", "VW", "VB", "Z", "D"):
            buf = getattr(t, name)[l]
            s[f"{name}[{l}]"] = None if buf is None else buf.ravel().tolist()
    for l in range(t.L + 1):
        s[f"A[{l}]"] = t.A[l].tolist()
    for name in ("count", "grad_count", "seen", "correct", "loss_sum"):
        s[name] = getattr(t, name)
    s["rng"] = int(t.rng[0])
    s.update(opt_state(t.opt, t.L))
    return s


def assert_same(core, tw, where=""):
    a, b = core_state(core), twin_state(tw)
    assert a.keys() == b.keys(), f"{where}: core and twin hold different state"
    bad = [k for k in a if a[k] != b[k]]
    assert not bad, f"{where}: {bad[0]} core {a[bad[0]]} twin {b[bad[0]]}"


def h(row) -> array:
    return array("h", [int(v) for v in row])


def lockstep(core, tw, Xq, Tq, name=""):
    """learn() sample by sample on both, comparing every step, then the pending update()."""
    for i, (x, t) in enumerate(zip(Xq, Tq, strict=True)):
        assert core.learn(h(x), h(t)) == tw.learn(x, t), f"{name}: loss at step {i}"
        assert_same(core, tw, f"{name} step {i}")
    core.update()
    tw.update()
    assert_same(core, tw, f"{name} final update")


# -- nets --


def formats(acts: list[int], loss: int, sw: int = 12) -> dict:
    L = len(acts)
    shift_a = [12] + [14 if a in SQUASH else 12 for a in acts]
    shift_d = [13] * (L - 1) + [shift_a[-1] if loss == MSE else 14]
    return dict(acts=acts, loss=loss, shift_a=shift_a, shift_w=[sw] * L, shift_d=shift_d)


def accepted(out: int, loss: int) -> bool:
    f = formats([out], loss)
    try:
        net.Net([2, 2], f["acts"], f["shift_a"], f["shift_w"], f["shift_d"], loss)
    except ValueError:
        return False
    return True


OUTPUTS = [(o, s) for o, s in itertools.product(range(6), range(3)) if accepted(o, s)]


def test_output_combinations_are_the_documented_ones():
    rule = {(o, MSE) for o in range(6) if o != SOFTMAX} | {(SOFTMAX, SOFTMAX_CE), (SIGMOID, BCE)}
    assert set(OUTPUTS) == rule


def targets(rng, loss: int, n: int, n_out: int, sa_out: int) -> np.ndarray:
    if loss == SOFTMAX_CE:
        return rng.integers(0, n_out, (n, 1)).astype(np.int16)
    if loss == BCE:
        # outside [0, 16384] too: the core clamps BCE targets
        return rng.integers(-2000, 18000, (n, n_out)).astype(np.int16)
    return rng.integers(-(1 << sa_out), (1 << sa_out) + 1, (n, n_out)).clip(-32767, 32767) \
        .astype(np.int16)


def random_qnet(rng, sizes, f, batch_max=1, momentum=False, adam=None, sdlm=None) -> QuantNet:
    W, B = [], []
    for l in range(len(sizes) - 1):
        lim = int(4096 * 1.5 / np.sqrt(sizes[l]))
        W.append(rng.integers(-lim, lim + 1, (sizes[l + 1], sizes[l])).astype(np.int16))
        B.append(rng.integers(-lim // 4, lim // 4 + 1, sizes[l + 1]).astype(np.int16))
    return QuantNet(list(sizes), f["acts"], f["shift_a"], f["shift_w"], f["shift_d"], f["loss"],
                    W, B, batch_max=batch_max, momentum=momentum, adam=adam, sdlm=sdlm)


OPTIMISERS = {
    "sgd": Hyper(lr=0.25),
    "sgd-stochastic": Hyper(lr=0.25, rounding="stochastic", seed=7),
    "momentum": Hyper(lr=0.125, momentum=0.9),
    "decay": Hyper(lr=0.25, weight_decay=0.05),
    "minibatch": Hyper(lr=0.5, batch=5, momentum=0.5, weight_decay=0.01, rounding="stochastic",
                       seed=11),
}
COMBOS = list(itertools.product(HIDDEN, OUTPUTS, OPTIMISERS))


@pytest.mark.parametrize(
    "hidden,output,opt", COMBOS,
    ids=[f"{fixed.ACT_NAMES[a]}-{fixed.ACT_NAMES[o]}-{fixed.LOSS_NAMES[s]}-{p}"
         for a, (o, s), p in COMBOS])
def test_twin_equals_core(hidden, output, opt):
    out, loss = output
    rng = np.random.default_rng(COMBOS.index((hidden, output, opt)))
    hyper = OPTIMISERS[opt]
    sizes = (4, 5, 3, 3)
    f = formats([hidden, hidden, out], loss)
    q = random_qnet(rng, sizes, f, batch_max=8 if hyper.batch > 1 else 3,
                    momentum=hyper.momentum > 0)
    if out == SOFTMAX:
        q.logit_k = COMBOS.index((hidden, output, opt)) % (fixed.LOGIT_K_MAX + 1)
    n = 24  # a multiple of no batch size above: the last batch is partial
    Xq = rng.integers(-16384, 16385, (n, sizes[0])).astype(np.int16)
    Tq = targets(rng, loss, n, sizes[-1], f["shift_a"][-1])
    core, tw = q.build(hyper), TwinNet.from_qnet(q, hyper)
    lockstep(core, tw, Xq, Tq)
    # the batched epoch path reaches the same state
    epoch = TwinNet.from_qnet(q, hyper)
    epoch.train_epoch(Xq, Tq)
    epoch.update()
    assert_same(core, epoch, "train_epoch")


@pytest.mark.parametrize("output", [o for o in OUTPUTS if o[0] != SOFTMAX],
                         ids=lambda o: f"{fixed.ACT_NAMES[o[0]]}-{fixed.LOSS_NAMES[o[1]]}")
def test_single_output(output):
    # one output unit: MSE's `correct` compares against one half
    out, loss = output
    rng = np.random.default_rng(5)
    f = formats([TANH, out], loss)
    q = random_qnet(rng, (3, 4, 1), f)
    Xq = rng.integers(-16384, 16385, (20, 3)).astype(np.int16)
    Tq = targets(rng, loss, 20, 1, f["shift_a"][-1])
    lockstep(q.build(Hyper(lr=0.5)), TwinNet.from_qnet(q, Hyper(lr=0.5)), Xq, Tq)


# -- whole-set paths --


def digits_case(hidden: int, n: int):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(hidden)
    f = formats([hidden, SOFTMAX], SOFTMAX_CE)
    q = random_qnet(rng, (64, 32, 10), f)
    q.in_scale = np.full(64, 1 / 16)
    return q, q.quantize_inputs(X[:n]), q.quantize_targets(y[:n])


@pytest.mark.parametrize("hidden", [RELU, TANH], ids=["relu", "tanh"])
def test_digits_epoch_equals_core(hidden):
    q, Xq, Tq = digits_case(hidden, 30)
    hyper = Hyper(lr=0.03, rounding="stochastic", seed=3)
    core, tw = q.build(hyper), TwinNet.from_qnet(q, hyper)
    order = np.random.default_rng(0).permutation(len(Xq))
    for i in order:
        core.learn(h(Xq[i]), h(Tq[i]))
    losses = tw.train_epoch(Xq, Tq, order)
    assert_same(core, tw, "digits")
    assert int(losses.sum()) == tw.loss_sum
    rebuilt = core_state(tw.to_qnet(q).build())
    mine = core_state(core)
    assert all(rebuilt[k] == mine[k] for k in ("W[0]", "B[0]", "W[1]", "B[1]"))


def test_evaluate_and_predict_equal_core():
    q, Xq, Tq = digits_case(TANH, 25)
    core, tw = q.build(Hyper()), TwinNet.from_qnet(q, Hyper())
    before = twin_state(tw)
    ev = tw.evaluate(Xq, Tq)
    assert twin_state(tw) == before
    out = array("h", bytes(20))
    for i in range(len(Xq)):
        best = core.predict(h(Xq[i]), out)
        assert list(out) == ev.output[i].tolist()
        assert core.score(h(Tq[i])) == ev.loss[i]
        assert core.good == ev.correct[i]
        assert best == tw.predict(Xq[i])
    assert np.array_equal(tw.outputs(Xq), ev.output)


def test_train_epoch_continues_a_pending_batch():
    rng = np.random.default_rng(9)
    f = formats([RELU, SIGMOID], BCE)
    q = random_qnet(rng, (3, 4, 2), f, batch_max=4, momentum=True)
    hyper = Hyper(lr=0.5, momentum=0.75, batch=4, rounding="stochastic")
    Xq = rng.integers(-16384, 16385, (13, 3)).astype(np.int16)
    Tq = targets(rng, BCE, 13, 2, 14)
    core, tw = q.build(hyper), TwinNet.from_qnet(q, hyper)
    for x, t in zip(Xq[:2], Tq[:2], strict=True):
        core.learn(h(x), h(t))
        tw.learn(x, t)
    order = rng.permutation(13)
    for i in order:
        core.learn(h(Xq[i]), h(Tq[i]))
    tw.train_epoch(Xq, Tq, order)
    assert_same(core, tw, "epoch after a partial batch")


def test_from_net_copies_mid_training_state():
    rng = np.random.default_rng(4)
    f = formats([LEAKY, IDENTITY], MSE)
    q = random_qnet(rng, (3, 5, 2), f, batch_max=4, momentum=True)
    hyper = Hyper(lr=0.25, momentum=0.5, weight_decay=0.1, batch=3, rounding="stochastic")
    Xq = rng.integers(-16384, 16385, (12, 3)).astype(np.int16)
    Tq = targets(rng, MSE, 12, 2, 11)
    core = q.build(hyper)
    for x, t in zip(Xq[:7], Tq[:7], strict=True):
        core.learn(h(x), h(t))
    tw = TwinNet.from_net(core)
    assert_same(core, tw, "copied")
    lockstep(core, tw, Xq[7:], Tq[7:])


def test_knobsare_validated_like_the_core():
    args = ([2, 3, 1], [TANH, IDENTITY], [12, 12, 8], [12, 12], [12, 8], MSE)
    with pytest.raises(ValueError, match="Q14"):
        TwinNet(*args)
    tw = TwinNet([2, 3, 1], [TANH, IDENTITY], [12, 14, 8], [12, 12], [12, 8], MSE)
    for setter, value in ((tw.set_lr, (100, 10)), (tw.set_lr, (255, 1)), (tw.set_batch, (2,)),
                          (tw.set_momentum, (64,)), (tw.set_decay, (3, 2))):
        with pytest.raises(ValueError):
            setter(*value)


# -- primitives, exhaustively over their int16 domain --


def test_luts_match_core_over_all_int16():
    z = np.arange(-32768, 32768)
    t = twin.tables()
    assert t.sigmoid.tolist() == [kernels._lut(luts.SIGMOID, v) for v in z.tolist()]
    assert t.tanh.tolist() == [kernels._lut(luts.TANH, v) for v in z.tolist()]
    assert t.nlog.tolist() == [net.nlog_q14(v) for v in z.tolist()]
    assert t.exp_neg.tolist() == [kernels.exp_neg(v) for v in range(65536)]


@pytest.mark.parametrize("kind", [SWISH, MISH], ids=["swish", "mish"])
def test_gated_match_core_over_all_int16(kind):
    # forward and derivative at every z, the derivative through the largest e of either sign
    # (where the product saturates) and through a spread of e
    z = np.arange(-32768, 32768)
    n = len(z)
    a = array("h", bytes(2 * n))
    kernels.act_fwd(kind, array("h", z.tolist()), a, n, 0)
    assert twin.act_fwd_v(kind, z, 0).tolist() == list(a)
    spread = np.random.default_rng(kind).integers(-32768, 32768, n)
    for e in (np.full(n, 32767), np.full(n, -32768), spread):
        d = array("h", bytes(2 * n))
        kernels.act_bwd(kind, array("h", e.tolist()), array("h", z.tolist()), a, d, n, 0)
        assert twin.act_bwd_v(kind, e, z, np.array(a), 0).tolist() == list(d)


@pytest.mark.parametrize("kind", range(8), ids=fixed.ACT_NAMES)
@pytest.mark.parametrize("alpha", [0, 41, 4096])
def test_act_fwd_bwd_match_core(kind, alpha):
    if kind == SOFTMAX:
        alpha = {0: 0, 41: 1, 4096: 3}[alpha]  # act_fwd's parameter there is logit_k
    rng = np.random.default_rng(kind)
    n = 4000 if kind != SOFTMAX else 7
    for _ in range(1 if kind != SOFTMAX else 300):
        z = rng.integers(-32767, 32768, n)
        z[: n // 8] = rng.choice([-32767, -1, 0, 1, 32767], n // 8)
        e = rng.integers(-32767, 32768, n)
        a = twin.act_fwd_v(kind, z, alpha)
        ac = array("h", bytes(2 * n))
        kernels.act_fwd(kind, z.tolist(), ac, n, alpha)
        assert a.tolist() == list(ac)
        d = [0] * n
        kernels.act_bwd(kind, e.tolist(), z.tolist(), list(ac), d, n, alpha)
        assert twin.act_bwd_v(kind, e, z, a, alpha).tolist() == d


ACC = st.integers(-SMALL, SMALL - 1)


@given(acc=st.lists(ACC | st.integers(-70000, 70000), min_size=1, max_size=50),
       s=st.integers(-40, 70))
def test_requant_and_rounding_match_core(acc, s):
    v = np.array(acc, np.int64)
    assert twin.requant_v(v, s).tolist() == [fixed.requant(x, s) for x in acc]
    assert twin.rshift_round_v(v, s).tolist() == [fixed.rshift_round(x, s) for x in acc]


def test_requant_negative_shift_boundaries():
    for s in range(-20, 0):
        lim = 32768 >> -s
        acc = [0, 1, -1, lim - 1, lim, lim + 1, -lim + 1, -lim, -lim - 1, SMALL - 1, -SMALL]
        assert twin.requant_v(np.array(acc), s).tolist() == [fixed.requant(x, s) for x in acc]


def test_xorshift_jumps_match_core():
    jumps = Xorshift30Jumps(97)  # a short span: runs cross it several times
    for seed in (1, 12345, fixed.SMALL_MAX):
        s = fixed.seed30(seed)
        want = []
        for _ in range(3 * 97 + 5):
            s = fixed.xorshift30(s)
            want.append(s)
        assert jumps.states(fixed.seed30(seed), len(want)).tolist() == want


def test_stochastic_rounding_beyond_one_jump_table():
    # more parameters than Xorshift30Jumps tabulates at once (2**13): runs restart mid-update
    rng = np.random.default_rng(8)
    f = formats([RELU, SOFTMAX], SOFTMAX_CE)
    q = random_qnet(rng, (100, 90, 2), f)
    hyper = Hyper(lr=0.25, rounding="stochastic", seed=5)
    core, tw = q.build(hyper), TwinNet.from_qnet(q, hyper)
    assert tw.n_params > 1 << 13
    Xq = rng.integers(-16384, 16385, (3, 100)).astype(np.int16)
    lockstep(core, tw, Xq, rng.integers(0, 2, (3, 1)).astype(np.int16))


# -- edge of the range, on the instrumented core --


def checked_net(q: QuantNet):
    n = CHECKED["net"].Net(list(q.sizes), list(q.acts), list(q.shift_a), list(q.shift_w),
                           list(q.shift_d), q.loss, q.batch_max, q.momentum, q.alpha_q,
                           CHECKED["kernels"])
    for l in range(q.L):
        n.W[l][:] = h(np.ravel(q.W[l]))
        n.B[l][:] = h(q.B[l])
    if q.adam is not None:
        CHECKED["adam"].attach(n, *q.adam)
        assert n.opt.k is CHECKED["adam"].adam
    if q.sdlm is not None:
        CHECKED["sdlm"].attach(n, *q.sdlm)
        n.opt.k = CHECKED["sdlm"]  # _kernels imports the plain module for the pure kernels
    return n


def apply(n, lr_m, lr_e, batch=1, mu=0, c_m=0, c_e=0, mode=0, seed=1):
    n.set_lr(lr_m, lr_e)
    n.set_batch(batch)
    n.set_momentum(mu)
    n.set_decay(c_m, c_e)
    n.set_rounding(mode, seed)


def min_lr_exponent(q: QuantNet) -> int:
    # the largest learning rate set_lr accepts is 255 * 2**-e with this e
    kg = fixed.ceil_log2(q.batch_max)
    return max(16 + q.shift_w[l] + kg - q.shift_d[l] - q.shift_a[l] for l in range(q.L))


def extreme_qnet(rng, sizes, f, batch_max, momentum=True, alpha_q=41) -> QuantNet:
    W = [(rng.choice([-1, 1], (sizes[l + 1], sizes[l])) * 32767).astype(np.int16)
         for l in range(len(sizes) - 1)]
    B = [(rng.choice([-1, 1], sizes[l + 1]) * 32767).astype(np.int16)
         for l in range(len(sizes) - 1)]
    return QuantNet(list(sizes), f["acts"], f["shift_a"], f["shift_w"], f["shift_d"], f["loss"],
                    W, B, batch_max=batch_max, momentum=momentum, alpha_q=alpha_q)


def extreme_targets(rng, loss, n, n_out):
    if loss == SOFTMAX_CE:
        return rng.integers(0, n_out, (n, 1)).astype(np.int16)
    lo = 0 if loss == BCE else -32767
    return rng.choice([lo, 32767], (n, n_out)).astype(np.int16)


def run_edge(q, knobs, Xq, Tq, name):
    core, tw = checked_net(q), TwinNet.from_qnet(q)
    apply(core, **knobs)
    apply(tw, **knobs)
    zs, vs = [], []
    for i, (x, t) in enumerate(zip(Xq, Tq, strict=True)):
        assert core.learn(h(x), h(t)) == tw.learn(x, t), f"{name}: loss at step {i}"
        assert_same(core, tw, f"{name} step {i}")
        zs += [z.copy() for z in tw.Z]
        if tw.vel is not None:
            vs.append(tw.vel.copy())
    core.update()
    tw.update()
    assert_same(core, tw, f"{name} final")
    return tw, np.concatenate(zs), np.concatenate(vs) if vs else np.zeros(1)


EDGE_OUTPUTS = [(IDENTITY, MSE), (TANH, MSE), (SOFTMAX, SOFTMAX_CE), (SIGMOID, BCE)]


@pytest.mark.parametrize("hidden", HIDDEN, ids=[fixed.ACT_NAMES[a] for a in HIDDEN])
@pytest.mark.parametrize("output", EDGE_OUTPUTS,
                         ids=lambda o: f"{fixed.ACT_NAMES[o[0]]}-{fixed.LOSS_NAMES[o[1]]}")
def test_edge_full_scale_wide_fan_in(hidden, output):
    # weights, biases, inputs and MSE targets at full int16 scale, 300 inputs, the largest
    # accepted learning rate, heavy momentum and decay: requant saturates both ways and the
    # update steps hit V_MAX.
    rng = np.random.default_rng(hidden * 10 + output[0])
    f = formats([hidden, output[0]], output[1])
    q = extreme_qnet(rng, (300, 6, 3), f, batch_max=3, alpha_q=4096)
    Xq = rng.choice([-32768, -32767, 32767], (20, 300)).astype(np.int16)
    Tq = extreme_targets(rng, output[1], 20, 3)
    s = dict(lr_m=255, lr_e=min_lr_exponent(q), batch=3, mu=255, c_m=255, c_e=8, mode=1)
    tw, zs, vs = run_edge(q, s, Xq, Tq, "full-scale")
    assert zs.max() == 32767 and zs.min() == -32767
    assert np.abs(vs).max() == V_MAX


@pytest.mark.parametrize("sa_out,sd_hidden", [(6, 7), (9, 16), (15, 24), (16, 24), (20, 24),
                                               (6, 20), (6, 24)])
def test_edge_negative_requant_shifts(sa_out, sd_hidden):
    # forward and backward requant shifts below zero, down to where 32768 >> -s is 0
    rng = np.random.default_rng(sa_out * 100 + sd_hidden)
    sizes = (7, 5, 3)  # guards: forward 3 and 3, backward 2
    f = dict(acts=[RELU, IDENTITY], loss=MSE, shift_a=[2, 3, sa_out], shift_w=[0, 0],
             shift_d=[sd_hidden, sa_out])
    q = extreme_qnet(rng, sizes, f, batch_max=1, momentum=False)
    for l in range(2):
        q.W[l] = rng.integers(-20, 21, q.W[l].shape).astype(np.int16)
        q.B[l] = rng.integers(-20, 21, q.B[l].shape).astype(np.int16)
    tw = TwinNet.from_qnet(q)
    assert tw.s_f == [0 + 2 - 3 - 3, 0 + 3 - 3 - sa_out]
    assert tw.s_b[1] == 0 + sa_out - 2 - sd_hidden
    Xq = rng.integers(-100, 101, (20, 7)).astype(np.int16)
    Tq = rng.integers(-200, 201, (20, 3)).astype(np.int16)
    run_edge(q, dict(lr_m=200, lr_e=min_lr_exponent(q) + 4), Xq, Tq, f"{sa_out},{sd_hidden}")


def test_edge_wide_output_softmax():
    # many softmax units: the exp sum and its rounding half stay in range
    rng = np.random.default_rng(3)
    f = formats([SIGMOID, SOFTMAX], SOFTMAX_CE)
    q = extreme_qnet(rng, (20, 8, 300), f, batch_max=2)
    Xq = rng.choice([-32767, 32767], (20, 20)).astype(np.int16)
    Tq = rng.integers(0, 300, (20, 1)).astype(np.int16)
    run_edge(q, dict(lr_m=255, lr_e=min_lr_exponent(q), batch=2, mu=200), Xq, Tq, "softmax300")


# -- random nets, formats and settings --


@st.composite
def random_nets(draw):
    L = draw(st.integers(1, 3))
    sizes = [draw(st.integers(1, 6)) for _ in range(L + 1)]
    out, loss = draw(st.sampled_from(OUTPUTS))
    if out == SOFTMAX:
        sizes[-1] = max(sizes[-1], 2)
    acts = [draw(st.sampled_from(HIDDEN)) for _ in range(L - 1)] + [out]
    shift_a = [draw(st.integers(0, 14))]
    shift_a += [14 if a in SQUASH else 12 if a in GATED else draw(st.integers(0, 14))
                for a in acts[:-1]]
    shift_a.append(14 if out in SQUASH else draw(st.integers(6, 24)))
    shift_w = [draw(st.integers(0, 24)) for _ in range(L)]
    shift_d = [draw(st.integers(0, 24)) for _ in range(L - 1)]
    shift_d.append(shift_a[-1] if loss == MSE else 14)
    batch_max = draw(st.integers(1, 8))
    momentum = draw(st.booleans())
    f = dict(acts=acts, loss=loss, shift_a=shift_a, shift_w=shift_w, shift_d=shift_d)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    wbits, xbits = draw(st.integers(1, 15)), draw(st.integers(1, 15))
    q = extreme_qnet(rng, sizes, f, batch_max, momentum, alpha_q=draw(st.integers(0, 4096)))
    for l in range(L):
        lim = (1 << wbits) - 1
        q.W[l] = rng.integers(-lim, lim + 1, q.W[l].shape).astype(np.int16)
        q.B[l] = rng.integers(-lim, lim + 1, q.B[l].shape).astype(np.int16)
    n = draw(st.integers(1, 10))
    Xq = rng.integers(-(1 << xbits) + 1, 1 << xbits, (n, sizes[0])).astype(np.int16)
    if loss == SOFTMAX_CE:
        Tq = rng.integers(0, sizes[-1], (n, 1)).astype(np.int16)
    else:
        Tq = rng.integers(-32767, 32768, (n, sizes[-1])).astype(np.int16)
    s = dict(lr_m=draw(st.integers(128, 255)),
             lr_e=min_lr_exponent(q) + draw(st.integers(0, 20)),
             batch=draw(st.integers(1, batch_max)),
             mu=draw(st.integers(0, 255)) if momentum else 0,
             c_m=draw(st.integers(0, 255)), c_e=draw(st.integers(8, 40)),
             mode=draw(st.integers(0, 1)), seed=draw(st.integers(0, 2**30)))
    return q, s, Xq, Tq


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=random_nets())
def test_random_nets(case):
    q, s, Xq, Tq = case
    run_edge(q, s, Xq, Tq, "random")


# -- Adam (edgebp/adam.py) --

ADAM = {
    "adam": Hyper(lr=0.01),
    "adam-stochastic": Hyper(lr=0.02, rounding="stochastic", seed=9),
    # sums of 5 samples in sums of up to 8 (kg = 3, a count that is not a power of two and a
    # partial last batch of 4), decoupled decay, stochastic rounding
    "adam-minibatch": Hyper(lr=0.05, batch=5, weight_decay=0.02, rounding="stochastic", seed=4),
}
ADAM_COMBOS = list(itertools.product(HIDDEN, OUTPUTS, ADAM))


@pytest.mark.parametrize(
    "hidden,output,opt", ADAM_COMBOS,
    ids=[f"{fixed.ACT_NAMES[a]}-{fixed.ACT_NAMES[o]}-{fixed.LOSS_NAMES[s]}-{p}"
         for a, (o, s), p in ADAM_COMBOS])
def test_adam_twin_equals_core(hidden, output, opt):
    out, loss = output
    rng = np.random.default_rng(1000 + ADAM_COMBOS.index((hidden, output, opt)))
    hyper = ADAM[opt]
    sizes = (4, 5, 3, 3)
    f = formats([hidden, hidden, out], loss)
    betas = [(0.9, 0.999), (0.5, 0.99), (0.0, 0.9)][ADAM_COMBOS.index((hidden, output, opt)) % 3]
    q = random_qnet(rng, sizes, f, batch_max=8 if hyper.batch > 1 else 1,
                    adam=adam_q(*betas))
    n = 24
    Xq = rng.integers(-16384, 16385, (n, sizes[0])).astype(np.int16)
    Tq = targets(rng, loss, n, sizes[-1], f["shift_a"][-1])
    core, tw = q.build(hyper), TwinNet.from_qnet(q, hyper)
    assert core.opt.k is adam.adam  # the pure kernel, the definition
    lockstep(core, tw, Xq, Tq)
    assert tw.opt.t == (n + hyper.batch - 1) // hyper.batch
    epoch = TwinNet.from_qnet(q, hyper)
    epoch.train_epoch(Xq, Tq)
    epoch.update()
    assert_same(core, epoch, "train_epoch")


def test_adam_digits_epochs_equal_core():
    # a 64-32-10 net over several epochs: the moments' exponents rise and fall, beta**t decays
    q, Xq, Tq = digits_case(RELU, 60)
    q.adam = adam_q()
    q.batch_max = 8
    hyper = Hyper(lr=0.004, batch=6, rounding="stochastic", seed=2)
    core, tw = q.build(hyper), TwinNet.from_qnet(q, hyper)
    for epoch in range(3):
        order = np.random.default_rng(epoch).permutation(len(Xq))
        for i in order:
            core.learn(h(Xq[i]), h(Tq[i]))
        tw.train_epoch(Xq, Tq, order)
        assert_same(core, tw, f"digits epoch {epoch}")
    assert tw.opt.t == 30 and 0 < tw.opt.p2 < adam.ONE28


def test_adam_frozen_layers_equal_core():
    rng = np.random.default_rng(21)
    f = formats([TANH, RELU, SOFTMAX], SOFTMAX_CE)
    q = random_qnet(rng, (5, 6, 4, 3), f, batch_max=4, adam=adam_q(0.8, 0.99))
    hyper = Hyper(lr=0.03, batch=3, rounding="stochastic", seed=6)
    Xq = rng.integers(-16384, 16385, (30, 5)).astype(np.int16)
    Tq = targets(rng, SOFTMAX_CE, 30, 3, 14)
    core, tw = q.build(hyper), TwinNet.from_qnet(q, hyper)
    lockstep(core, tw, Xq[:7], Tq[:7])
    for n in (2, 1, 0):
        core.learn(h(Xq[7]), h(Tq[7]))  # a pending sum that freezing drops
        tw.learn(Xq[7], Tq[7])
        core.freeze(n)
        tw.freeze(n)
        assert_same(core, tw, f"frozen {n}")
        lockstep(core, tw, Xq[8:19], Tq[8:19], f"frozen {n}")
    # the moments of frozen layers stay where they were
    assert np.any(tw.opt.MW[0] != 0)


def test_adam_from_net_copies_mid_training_state():
    rng = np.random.default_rng(14)
    f = formats([SWISH, IDENTITY], MSE)
    q = random_qnet(rng, (3, 5, 2), f, batch_max=4, adam=adam_q(0.9, 0.99))
    hyper = Hyper(lr=0.05, weight_decay=0.1, batch=3, rounding="stochastic")
    Xq = rng.integers(-16384, 16385, (14, 3)).astype(np.int16)
    Tq = targets(rng, MSE, 14, 2, 12)
    core = q.build(hyper)
    for x, t in zip(Xq[:8], Tq[:8], strict=True):
        core.learn(h(x), h(t))
    tw = TwinNet.from_net(core)
    assert tw.opt is not None and tw.opt.t == 2
    assert_same(core, tw, "copied")
    lockstep(core, tw, Xq[8:], Tq[8:])


def test_adam_settings_validated_like_the_core():
    f = formats([TANH, IDENTITY], MSE)
    args = ([2, 3, 1], f["acts"], f["shift_a"], f["shift_w"], f["shift_d"], MSE)
    for c1, c2 in ((31, 10), (32769, 10), (100, 0), (100, 32769)):
        with pytest.raises(ValueError, match="Adam"):
            TwinNet(*args).attach_adam(c1, c2)
    with pytest.raises(ValueError, match="momentum"):
        TwinNet(*args, 1, True).attach_adam(3277, 33)
    # a learning rate SGD refuses for these formats: Adam's shift saturates instead
    tw = TwinNet(*args)
    with pytest.raises(ValueError):
        tw.set_lr(255, 0)
    tw.attach_adam(3277, 33)
    tw.set_lr(255, 0)


ADAM_BETAS = [(32, 1), (32, 32768), (32768, 1), (32768, 32768), (3277, 33)]
ADAM_EDGE = [IDENTITY, RELU, TANH, MISH]


@pytest.mark.parametrize("hidden", ADAM_EDGE, ids=[fixed.ACT_NAMES[a] for a in ADAM_EDGE])
@pytest.mark.parametrize("output", EDGE_OUTPUTS,
                         ids=lambda o: f"{fixed.ACT_NAMES[o[0]]}-{fixed.LOSS_NAMES[o[1]]}")
def test_adam_edge_full_scale(hidden, output, monkeypatch):
    # full-scale weights, inputs and targets over 300 inputs: gradient sums near their
    # bound, means of sums of 3 in sums of up to 3 (kg = 2), the betas at their limits, the
    # largest decay, learning rates up to where the layer multiplier saturates (u below 0),
    # both roundings; on the instrumented core (every intermediate a small int)
    k = 4 * ADAM_EDGE.index(hidden) + EDGE_OUTPUTS.index(output)
    rng = np.random.default_rng(k)
    f = formats([hidden, output[0]], output[1])
    q = extreme_qnet(rng, (300, 6, 3), f, batch_max=3, momentum=False, alpha_q=4096)
    q.adam = c1, c2 = ADAM_BETAS[k % len(ADAM_BETAS)]
    Xq = rng.choice([-32768, -32767, 32767], (20, 300)).astype(np.int16)
    Tq = extreme_targets(rng, output[1], 20, 3)
    lr_e = [-20, 0, 8, 20][k % 4]
    s = dict(lr_m=255, lr_e=lr_e, batch=3, c_m=255, c_e=8, mode=k % 2)
    seen = []  # per update: max |G| before, max |M|, max exponent of V and max |step| after
    step = twin.TwinAdam.step

    def watched(self, net, p0):
        g = int(np.abs(net.grad[p0:]).max())
        v = step(self, net, p0)
        seen.append((g, int(np.abs(self.m).max()), int((self.v >> 25).max()),
                     int(np.abs(v).max())))
        return v

    monkeypatch.setattr(twin.TwinAdam, "step", watched)
    tw, _, _ = run_edge(q, s, Xq, Tq, "adam full-scale")
    g, m, e, v = np.array(seen).max(axis=0)
    assert len(seen) == 7 and g > 1 << 27  # sums near their bound
    if c1 == 32768:
        assert m > 1 << 27  # m is the mean gradient itself (x = 2 G / 3 here)
    if c2 == 32768:
        assert e >= 15  # v = x*x, far above 2**25
    if lr_e <= 0:
        assert v == V_MAX  # steps saturate
    V = tw.opt.v
    assert ((V & 0x1FFFFFF) >= 1 << 22)[V >> 25 > 0].all()  # v stays normalised


@st.composite
def random_adam_nets(draw):
    q, s, Xq, Tq = draw(random_nets())
    q.momentum = False
    s["mu"] = 0
    q.adam = (draw(st.sampled_from([32, 33, 1000, 3277, 32767, 32768])),
              draw(st.sampled_from([1, 2, 33, 327, 32767, 32768])))
    s["lr_e"] = draw(st.integers(-20, 40))
    return q, s, Xq, Tq


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=random_adam_nets())
def test_adam_random_nets(case):
    q, s, Xq, Tq = case
    run_edge(q, s, Xq, Tq, "random adam")


def test_adam_primitives_match_core():
    n = np.concatenate([np.arange(1 << 16), np.arange(1 << 25, (1 << 25) + 1000)])
    sq = np.arange(1, 1 << 15, dtype=np.int64) ** 2
    n = np.concatenate([n, sq - 1, sq, sq + 1, np.arange((1 << 30) - 1000, 1 << 30)])
    assert twin.isqrt_v(n).tolist() == [adam.isqrt(v) for v in n.tolist()]
    assert twin.bit_length_v(n).tolist() == [v.bit_length() for v in n.tolist()]
    a = np.random.default_rng(0).integers(-(1 << 30), 1 << 30, 20000)
    for c in (0, 1, 32, 3277, 32767, 32768):
        assert twin.mul_q15_v(a, c).tolist() == [adam.mul_q15(v, c) for v in a.tolist()]


# -- SDLM (edgebp/sdlm.py) --

SDLM = {
    "sdlm": Hyper(lr=0.02),
    "sdlm-stochastic": Hyper(lr=0.05, rounding="stochastic", seed=9),
    # sums of 5 samples in sums of up to 8 (curvature from the first of each, a partial last
    # sum of 4), decay, stochastic rounding
    "sdlm-minibatch": Hyper(lr=0.1, batch=5, weight_decay=0.02, rounding="stochastic", seed=4),
}
SDLM_COMBOS = list(itertools.product(HIDDEN, OUTPUTS, SDLM))
# (mu, gamma, fc of the hidden layers, fh per layer)
SDLM_SETTINGS = [(0.1, 0.05, [18, 16], [14, 14, 14]), (0.01, 1.0, [12, 20], [10, 12, 8]),
                 (1.0, 2.0**-14, [24, 0], [0, 14, 4])]


def sdlm_settings(k: int):
    mu, gamma, fc, fh = SDLM_SETTINGS[k % len(SDLM_SETTINGS)]
    return sdlm_q(mu, gamma, fc + [14], fh)


@pytest.mark.parametrize(
    "hidden,output,opt", SDLM_COMBOS,
    ids=[f"{fixed.ACT_NAMES[a]}-{fixed.ACT_NAMES[o]}-{fixed.LOSS_NAMES[s]}-{p}"
         for a, (o, s), p in SDLM_COMBOS])
def test_sdlm_twin_equals_core(hidden, output, opt):
    out, loss = output
    k = SDLM_COMBOS.index((hidden, output, opt))
    rng = np.random.default_rng(2000 + k)
    hyper = SDLM[opt]
    sizes = (4, 5, 3, 3)
    f = formats([hidden, hidden, out], loss)
    q = random_qnet(rng, sizes, f, batch_max=8 if hyper.batch > 1 else 1,
                    sdlm=sdlm_settings(k))
    n = 24
    Xq = rng.integers(-16384, 16385, (n, sizes[0])).astype(np.int16)
    Tq = targets(rng, loss, n, sizes[-1], f["shift_a"][-1])
    core, tw = q.build(hyper), TwinNet.from_qnet(q, hyper)
    assert core.opt.k is sdlm  # the pure kernels, the definition
    lockstep(core, tw, Xq, Tq)
    assert tw.opt.n == (n + hyper.batch - 1) // hyper.batch  # one curvature per sum
    epoch = TwinNet.from_qnet(q, hyper)
    epoch.train_epoch(Xq, Tq)
    epoch.update()
    assert_same(core, epoch, "train_epoch")


def test_sdlm_curvature_from_the_first_sample_of_each_sum():
    # a sum of 3 started by backward() alone, continued by train_epoch (whose first batch
    # then has no curvature sample), and a full sum applied by backward() before it adds
    rng = np.random.default_rng(17)
    f = formats([TANH, SIGMOID], BCE)
    q = random_qnet(rng, (3, 4, 2), f, batch_max=3, sdlm=sdlm_q(0.05, 0.1, [16, 14], [12, 12]))
    hyper = Hyper(lr=0.1, batch=3)
    Xq = rng.integers(-16384, 16385, (14, 3)).astype(np.int16)
    Tq = targets(rng, BCE, 14, 2, 14)
    core, tw = q.build(hyper), TwinNet.from_qnet(q, hyper)
    for i in range(4):  # forward + backward: the fourth applies the full sum first
        core.forward(h(Xq[i]))
        tw.forward(Xq[i])
        assert core.backward(h(Tq[i])) == tw.backward(Tq[i])
        assert_same(core, tw, f"backward {i}")
    assert tw.opt.n == 2
    order = rng.permutation(14)
    for i in order:
        core.learn(h(Xq[i]), h(Tq[i]))
    tw.train_epoch(Xq, Tq, order)
    assert_same(core, tw, "epoch after a pending sum")
    # a curvature drawn from another sample of the sum would differ
    other = TwinNet.from_qnet(q, hyper)
    other.train_epoch(Xq[[1, 0, 2]], Tq[[1, 0, 2]])
    first = TwinNet.from_qnet(q, hyper)
    first.train_epoch(Xq[:3], Tq[:3])
    assert not np.array_equal(other.opt.h, first.opt.h)


def test_sdlm_digits_epochs_equal_core():
    q, Xq, Tq = digits_case(TANH, 40)
    q.sdlm = sdlm_q(0.02, 0.02, [16, 14], [8, 12])
    q.batch_max = 4
    hyper = Hyper(lr=0.01, batch=4, rounding="stochastic", seed=2)
    core, tw = q.build(hyper), TwinNet.from_qnet(q, hyper)
    for epoch in range(2):
        order = np.random.default_rng(epoch).permutation(len(Xq))
        for i in order:
            core.learn(h(Xq[i]), h(Tq[i]))
        tw.train_epoch(Xq, Tq, order)
        assert_same(core, tw, f"digits epoch {epoch}")
    assert tw.opt.n == 20
    assert all(np.any(hw != 0) for hw in tw.opt.HW)  # curvature in every layer


def test_sdlm_frozen_layers_equal_core():
    rng = np.random.default_rng(22)
    f = formats([TANH, RELU, SOFTMAX], SOFTMAX_CE)
    q = random_qnet(rng, (5, 6, 4, 3), f, batch_max=4,
                    sdlm=sdlm_q(0.05, 0.05, [18, 16, 14], [12, 12, 12]))
    hyper = Hyper(lr=0.05, batch=3, rounding="stochastic", seed=6)
    Xq = rng.integers(-16384, 16385, (30, 5)).astype(np.int16)
    Tq = targets(rng, SOFTMAX_CE, 30, 3, 14)
    core, tw = q.build(hyper), TwinNet.from_qnet(q, hyper)
    lockstep(core, tw, Xq[:7], Tq[:7])
    for n in (2, 1, 0):
        core.learn(h(Xq[7]), h(Tq[7]))  # a pending sum that freezing drops
        tw.learn(Xq[7], Tq[7])
        core.freeze(n)
        tw.freeze(n)
        assert_same(core, tw, f"frozen {n}")
        lockstep(core, tw, Xq[8:19], Tq[8:19], f"frozen {n}")
    assert np.any(tw.opt.HW[0] != 0)


def test_sdlm_from_net_copies_mid_training_state():
    rng = np.random.default_rng(15)
    f = formats([MISH, IDENTITY], MSE)
    q = random_qnet(rng, (3, 5, 2), f, batch_max=4, sdlm=sdlm_q(0.1, 0.05, [17, 14], [13, 11]))
    hyper = Hyper(lr=0.05, weight_decay=0.1, batch=3, rounding="stochastic")
    Xq = rng.integers(-16384, 16385, (14, 3)).astype(np.int16)
    Tq = targets(rng, MSE, 14, 2, 12)
    core = q.build(hyper)
    for x, t in zip(Xq[:8], Tq[:8], strict=True):
        core.learn(h(x), h(t))
    tw = TwinNet.from_net(core)
    assert tw.opt is not None and tw.opt.n == 3
    assert_same(core, tw, "copied")
    lockstep(core, tw, Xq[8:], Tq[8:])


def test_sdlm_settings_validated_like_the_core():
    f = formats([TANH, IDENTITY], MSE)
    args = ([2, 3, 1], f["acts"], f["shift_a"], f["shift_w"], f["shift_d"], MSE)
    for bad in ((0, 4, 100, [14, 14], [14, 14]), (1, 31, 100, [14, 14], [14, 14]),
                (1, 4, 0, [14, 14], [14, 14]), (1, 4, 16385, [14, 14], [14, 14]),
                (1, 4, 100, [25, 14], [14, 14]), (1, 4, 100, [14, 13], [14, 14]),
                (1, 4, 100, [14, 14], [15, 14]), (1, 4, 100, [14], [14]),
                (1, 30, 100, [14, 14], [0, 0]), (255, 0, 100, [14, 14], [14, 14])):
        with pytest.raises(ValueError, match="SDLM"):
            TwinNet(*args).attach_sdlm(*bad)
    with pytest.raises(ValueError, match="momentum"):
        TwinNet(*args, 1, True).attach_sdlm(1, 4, 100, [14, 14], [14, 14])
    tw = TwinNet(*args)
    tw.attach_adam(3277, 33)
    with pytest.raises(ValueError, match="one optimiser"):
        tw.attach_sdlm(1, 4, 100, [14, 14], [14, 14])
    # SDLM's learning rate is SGD's: the same check
    tw = TwinNet(*args)
    tw.attach_sdlm(1, 4, 100, [14, 14], [14, 14])
    with pytest.raises(ValueError):
        tw.set_lr(255, 0)


SDLM_EDGE = [IDENTITY, LEAKY, TANH, SWISH]
# mu (mantissa, exponent), gamma, fc hidden, fh per layer: mu at one LSB of h, the largest
# mu, gamma at both ends, curvature formats that saturate or round to 0
SDLM_EDGE_SETTINGS = [((1, 14), 1, 24, (14, 14)), ((255, 0), 16384, 0, (0, 0)),
                      ((1, 0), 16384, 24, (0, 14)), ((255, 14), 1, 12, (14, 8))]


@pytest.mark.parametrize("hidden", SDLM_EDGE, ids=[fixed.ACT_NAMES[a] for a in SDLM_EDGE])
@pytest.mark.parametrize("output", EDGE_OUTPUTS,
                         ids=lambda o: f"{fixed.ACT_NAMES[o[0]]}-{fixed.LOSS_NAMES[o[1]]}")
def test_sdlm_edge_full_scale(hidden, output, monkeypatch):
    # full-scale weights, inputs and targets over 300 inputs: sq_t's sums over wide layers,
    # curvatures that saturate, steps of the largest learning rate divided by mu alone
    # (saturating), sums of 3, the largest decay, both roundings; on the instrumented core
    k = 4 * SDLM_EDGE.index(hidden) + EDGE_OUTPUTS.index(output)
    rng = np.random.default_rng(50 + k)
    f = formats([hidden, output[0]], output[1])
    q = extreme_qnet(rng, (300, 6, 3), f, batch_max=3, momentum=False, alpha_q=4096)
    (mu_m, mu_e), gamma, fc, fh = SDLM_EDGE_SETTINGS[k % len(SDLM_EDGE_SETTINGS)]
    q.sdlm = (mu_m, mu_e, gamma, (fc, 14), fh)
    Xq = rng.choice([-32768, -32767, 32767], (20, 300)).astype(np.int16)
    Tq = extreme_targets(rng, output[1], 20, 3)
    s = dict(lr_m=255, lr_e=min_lr_exponent(q), batch=3, c_m=255, c_e=8, mode=k % 2)
    seen = []  # per update: max h, max |step|
    step = twin.TwinSdlm.step

    def watched(self, net, p0):
        v = step(self, net, p0)
        seen.append((int(self.h.max()), int(np.abs(v).max())))
        return v

    monkeypatch.setattr(twin.TwinSdlm, "step", watched)
    tw, _, _ = run_edge(q, s, Xq, Tq, "sdlm full-scale")
    hmax, v = np.array(seen).max(axis=0)
    assert len(seen) == 7 and tw.opt.n == 7
    if output == (IDENTITY, MSE) and hidden != TANH:
        # h = C a**2 with a at 8 (Q12) saturates (squashing outputs saturate to f' = 0,
        # tanh's a to 1)
        assert hmax == 32767
    if k % 4 != 1:
        assert v == V_MAX  # the largest learning rate over mu and h far below 1: saturates
    assert tw.opt.h.min() >= 0


@st.composite
def random_sdlm_nets(draw):
    q, s, Xq, Tq = draw(random_nets())
    q.momentum = False
    s["mu"] = 0
    L = q.L
    fh = [draw(st.integers(0, 14)) for _ in range(L)]
    mu_e = draw(st.integers(0, 30))
    # mu in Q(fh) between 1 and 32767 in every layer
    lo = max(1, max((1 << (mu_e - f)) // 2 + 1 if mu_e > f else 1 for f in fh))
    hi = min(255, min(32767 >> (f - mu_e) if f > mu_e else 255 for f in fh))
    if lo > hi:
        mu_e, lo, hi = min(fh), 1, 255
        hi = min(255, min(32767 >> (f - mu_e) for f in fh))
    q.sdlm = (draw(st.integers(lo, hi)), mu_e, draw(st.sampled_from([1, 2, 819, 16383, 16384])),
              [draw(st.integers(0, 24)) for _ in range(L - 1)] + [14], fh)
    return q, s, Xq, Tq


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=random_sdlm_nets())
def test_sdlm_random_nets(case):
    q, s, Xq, Tq = case
    run_edge(q, s, Xq, Tq, "random sdlm")
