"""The float64 reference's second-order side: swish and mish, the Jacobian, Gauss-Newton,
Levenberg-Marquardt, the Hessian diagonal (exact, Gauss-Newton, Becker & LeCun's recursion)
and Adam, each against something computed independently of it (finite differences, a full
Hessian, J^T J, a hand derivation)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgebp.host.cli import parser as cli
from edgebp.host.nets import second_order as so
from edgebp.host.nets.qnet import Hyper
from edgebp.host.nets.quantize import RangeError, quantize
from edgebp.host.nets.reference import (
    ACT_CODES,
    Adam,
    FloatNet,
    act_derivative,
    act_forward,
    act_second_derivative,
)
from edgebp.host.nets.spec import init_float_weights, make_spec

HIDDEN = ["identity", "relu", "leaky_relu", "sigmoid", "tanh", "swish", "mish"]
OUTPUTS = [("identity", "mse"), ("tanh", "mse"), ("swish", "mse"), ("mish", "mse"),
           ("softmax", "softmax_ce"), ("sigmoid", "bce")]

# Central differences with step H. Of a function (Jacobian, activations): truncation
# h^2/6 |f'''| ~ 1e-11 plus round-off eps |f| / h ~ 1e-11. Of the gradient (the Hessian):
# the same for |g| ~ 1, so ~1e-10 per entry; measured at most 8e-10 on these nets, whose
# Hessian entries are of order 0.1 to 1. A wrong term (a missing f'', a dropped off-diagonal
# sum) is of the order of the entries themselves.
H = 1e-5
FD_TOL = 1e-7


def _net(hidden, out, loss, rng, sizes=(3, 4, 3, 2)):
    L = len(sizes) - 1
    Ws = [rng.normal(0, 1 / np.sqrt(sizes[l]), (sizes[l + 1], sizes[l])) for l in range(L)]
    Bs = [rng.normal(0, 0.3, sizes[l + 1]) for l in range(L)]
    return FloatNet(sizes, [hidden] * (L - 1) + [out], loss, Ws, Bs, alpha=0.1)


def _data(loss, rng, N, sizes):
    X = rng.normal(0, 1, (N, sizes[0]))
    if loss == "softmax_ce":
        return X, rng.integers(0, sizes[-1], N)
    if loss == "bce":
        return X, rng.uniform(0, 1, (N, sizes[-1]))
    return X, rng.uniform(-1, 1, (N, sizes[-1]))


def _fd_hessian(net, X, T):
    """The full Hessian of the mean loss, column p by central differences of the
    backpropagated gradient along parameter p."""
    theta = so.flat_params(net)
    P = theta.size
    Hs = np.zeros((P, P))
    for p in range(P):
        for sign in (1, -1):
            t = theta.copy()
            t[p] += sign * H
            so.set_params(net, t)
            Hs[:, p] += sign * so.flatten(*net.gradients(X, T)) / (2 * H)
    so.set_params(net, theta)
    return Hs


def _layer_slices(net):
    # parameter indices of each layer (W and b) in the flat order
    out, i = [], 0
    for w, b in zip(net.W, net.B, strict=True):
        out.append(slice(i, i + w.size + b.size))
        i += w.size + b.size
    return out


# -- swish and mish --


@pytest.mark.parametrize("name", ["sigmoid", "tanh", "swish", "mish"])
def test_activation_derivatives_match_finite_differences(name):
    kind = ACT_CODES[name]
    z = np.concatenate([np.linspace(-12, 12, 97), [-40.0, -0.3, 0.0, 0.3, 40.0]])

    def f(x):
        return act_forward(kind, x, 0.0)

    def d1(x):
        return act_derivative(kind, x, f(x), 0.0)

    fd1 = (f(z + H) - f(z - H)) / (2 * H)
    fd2 = (d1(z + H) - d1(z - H)) / (2 * H)
    assert np.abs(d1(z) - fd1).max() < 1e-9
    assert np.abs(act_second_derivative(kind, z, f(z), 0.0) - fd2).max() < 1e-9


def test_swish_and_mish_values():
    # independent closed forms at a few points
    z = np.array([-3.0, -0.5, 0.0, 1.0, 2.5])
    swish = z / (1 + np.exp(-z))
    mish = z * np.tanh(np.log1p(np.exp(z)))
    assert np.allclose(act_forward(ACT_CODES["swish"], z, 0.0), swish, rtol=1e-14, atol=0)
    assert np.allclose(act_forward(ACT_CODES["mish"], z, 0.0), mish, rtol=1e-14, atol=0)
    # no overflow far out: swish -> relu, mish -> relu
    big = np.array([-800.0, 800.0])
    for name in ("swish", "mish"):
        k = ACT_CODES[name]
        a = act_forward(k, big, 0.0)
        assert np.allclose(a, [0.0, 800.0], atol=1e-300)
        assert np.allclose(act_derivative(k, big, a, 0.0), [0.0, 1.0])
        assert np.allclose(act_second_derivative(k, big, a, 0.0), [0.0, 0.0])


def test_spec_takes_swish_and_mish_and_the_quantiser_refuses_them_as_outputs(tmp_path, capsys):
    spec = make_spec(sizes=[2, 3, 3, 1], activations=["tanh", "mish", "sigmoid"], loss="bce",
                     input_range={"min": 0, "max": 1})
    assert spec.acts == [ACT_CODES["tanh"], ACT_CODES["mish"], ACT_CODES["sigmoid"]]
    Ws, Bs = init_float_weights(spec)
    FloatNet(spec.sizes, spec.acts, spec.loss, Ws, Bs).forward(np.zeros((1, 2)))
    assert quantize(spec, Ws, Bs).acts == spec.acts  # hidden: the board has them
    out_spec = make_spec(sizes=[2, 3, 1], activations=["tanh", "swish"], loss="mse",
                         input_range={"min": 0, "max": 1})
    FloatNet(out_spec.sizes, out_spec.acts, out_spec.loss,
             *init_float_weights(out_spec)).forward(np.zeros((1, 2)))
    with pytest.raises(RangeError, match=r"^layer 2: swish is for hidden layers only"):
        quantize(out_spec, *init_float_weights(out_spec))
    path = tmp_path / "spec.json"
    path.write_text('{"sizes": [2, 3, 1], "activations": ["sigmoid", "mish"], "loss": "mse",'
                    ' "input_range": {"min": 0, "max": 1}}')
    out = tmp_path / "net.ebp"
    assert cli.main(["quantize", str(path), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "layer 2: mish" in err and "Traceback" not in err
    assert not out.exists()


# -- the Jacobian and the Gauss-Newton system --


@pytest.mark.parametrize("hidden,out,loss", [("tanh", o, lo) for o, lo in OUTPUTS]
                         + [(h, "identity", "mse") for h in ("swish", "mish", "leaky_relu")])
def test_jacobian_matches_finite_differences(hidden, out, loss):
    rng = np.random.default_rng(1)
    net = _net(hidden, out, loss, rng)
    X, T = _data(loss, rng, 5, net.sizes)
    theta = so.flat_params(net)
    for of in ("output", "logits"):
        J = so.jacobian(net, X, of)
        fd = np.zeros_like(J)
        for p in range(theta.size):
            for sign in (1, -1):
                t = theta.copy()
                t[p] += sign * H
                so.set_params(net, t)
                y = net.forward(X)
                if of == "logits":
                    y = net.z[-1].T
                fd[:, :, p] += sign * y / (2 * H)
        so.set_params(net, theta)
        assert np.abs(J - fd).max() < 1e-8, of


@pytest.mark.parametrize("out,loss", OUTPUTS)
def test_gauss_newton_system(out, loss):
    rng = np.random.default_rng(2)
    net = _net("swish", out, loss, rng)
    X, T = _data(loss, rng, 7, net.sizes)
    G, g, C = so.gauss_newton(net, X, T, chunk=3)  # chunks of 3, 3 and 1 samples
    assert np.allclose(g, so.flatten(*net.gradients(X, T)), rtol=0, atol=1e-15)
    assert C == pytest.approx(net.loss(X, T), rel=1e-15)
    if loss == "mse":  # least squares: G = J^T J / N for the residuals a - t
        J = so.jacobian(net, X).reshape(-1, g.size)
        ref = J.T @ J / len(X)
    else:  # the cross-entropies: the Fisher, mean J_z^T (diag p - p p^T) J_z, p computed here
        Jz = so.jacobian(net, X, "logits")
        p = net.forward(X)
        if loss == "bce":
            Hz = [np.diag(q * (1 - q)) for q in p]
        else:
            Hz = [np.diag(q) - np.outer(q, q) for q in p]
        ref = sum(j.T @ h @ j for j, h in zip(Jz, Hz, strict=True)) / len(X)
    assert np.abs(G - ref).max() < 1e-14 * max(1.0, np.abs(ref).max())
    assert np.linalg.eigvalsh(G).min() > -1e-12  # positive semidefinite


# -- the Hessian diagonal --


@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("out,loss", OUTPUTS)
def test_exact_hessian_diagonal_against_finite_difference_hessian(hidden, out, loss):
    rng = np.random.default_rng(3)
    net = _net(hidden, out, loss, rng)
    X, T = _data(loss, rng, 5, net.sizes)
    Hfd = _fd_hessian(net, X, T)
    assert np.abs(Hfd - Hfd.T).max() < FD_TOL  # (a check of the finite differences)
    exact = so.flatten(*so.hessian_diagonal(net, X, T))
    assert np.abs(exact - np.diag(Hfd)).max() < FD_TOL
    # Becker & LeCun's recursion: exact on the output layer, and on the one below it when
    # the output Hessian is diagonal (mse, bce); not on layer 1 (nor on layer 2 under
    # softmax_ce), where it drops the off-diagonal terms the exact diagonal needs
    classic = so.flatten(*so.hessian_diagonal(net, X, T, recursion="diagonal"))
    s1, s2, s3 = _layer_slices(net)
    exact_down_to = s3.start if loss == "softmax_ce" else s2.start
    assert np.abs(classic[exact_down_to:] - exact[exact_down_to:]).max() < 1e-14
    if hidden != "relu":  # (random relu nets can have one live unit per layer per sample)
        off = np.abs(classic[:exact_down_to] - exact[:exact_down_to]).max()
        # measured: 2% (tanh hidden, mish output) to 450% (identity, softmax) of the layers'
        # largest diagonal entry; rounding would be 1e-16
        assert off > 1e-3 * np.abs(exact[:exact_down_to]).max()


@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("out,loss", [("identity", "mse"), ("mish", "mse"),
                                      ("softmax", "softmax_ce"), ("sigmoid", "bce")])
def test_gauss_newton_diagonal_is_the_diagonal_of_jtj(hidden, out, loss):
    rng = np.random.default_rng(4)
    net = _net(hidden, out, loss, rng)
    X, T = _data(loss, rng, 6, net.sizes)
    P = so.param_count(net)
    if loss == "mse":
        J = so.jacobian(net, X).reshape(-1, P)
        ref = (J * J).sum(axis=0) / len(X)
    else:
        ref = np.diag(so.gauss_newton(net, X, T)[0])
    gn = so.flatten(*so.hessian_diagonal(net, X, T, kind="gauss_newton"))
    assert np.abs(gn - ref).max() < 1e-14 * max(1.0, np.abs(ref).max())
    # the stochastic diagonal LM's estimate, by the diagonal recursion: never negative
    sdlm = so.flatten(*so.hessian_diagonal(net, X, T, kind="gauss_newton",
                                           recursion="diagonal"))
    assert sdlm.min() >= 0.0


def test_identity_net_hessian_is_gauss_newton():
    # a linear net under mse: C is quadratic in the last layer's W and the Hessian there
    # is exactly J^T J; the diagonals of both kinds agree on it
    rng = np.random.default_rng(5)
    net = _net("tanh", "identity", "mse", rng)
    X, T = _data("mse", rng, 6, net.sizes)
    s3 = _layer_slices(net)[2]
    exact = so.flatten(*so.hessian_diagonal(net, X, T))
    gn = so.flatten(*so.hessian_diagonal(net, X, T, kind="gauss_newton"))
    assert np.allclose(exact[s3], gn[s3], rtol=1e-14, atol=0)
    assert not np.allclose(exact[: s3.start], gn[: s3.start], rtol=1e-3)


def test_hessian_diagonal_rejects_unknown_kinds():
    net = _net("tanh", "identity", "mse", np.random.default_rng(0))
    X, T = _data("mse", np.random.default_rng(0), 2, net.sizes)
    with pytest.raises(ValueError, match="kind"):
        so.hessian_diagonal(net, X, T, kind="fisher")
    with pytest.raises(ValueError, match="recursion"):
        so.hessian_diagonal(net, X, T, recursion="block")


# -- Levenberg-Marquardt --


def _sin_net(seed, width=5):
    rng = np.random.default_rng(seed)
    lim = math.sqrt(6 / (1 + width))
    return FloatNet([1, width, 1], ["tanh", "identity"], "mse",
                    [rng.uniform(-lim, lim, (width, 1)), rng.uniform(-lim, lim, (1, width))],
                    [np.zeros(width), np.zeros(1)])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lm_fits_sin_far_below_the_best_gradient_descent(seed):
    X = np.linspace(-1, 1, 30)[:, None]
    T = np.sin(3 * X)
    net = _sin_net(seed)
    run = so.levenberg_marquardt(net.copy(), X, T, 30)
    assert np.all(np.diff(run.loss) < 0)  # only steps that lower the loss are taken
    # full-batch gradient descent for the same 30 epochs, at its best of four rates
    gd = []
    for lr in (0.1, 0.3, 1.0, 3.0):
        g = net.copy()
        g.train(X, T, Hyper(lr=lr, batch=len(X)), 30)
        gd.append(g.loss(X, T))
    # measured: LM 1.8e-4 to 2.5e-4 (RMSE 0.02), GD's best 0.041 to 0.059, 160x to 240x
    assert run.loss[-1] < 3e-4
    assert 100 * run.loss[-1] < min(gd)


def test_gauss_newton_is_the_limit_of_vanishing_damping():
    # XOR: 4 residuals, 9 parameters, so G has rank 4 and no inverse; the damped step
    # -(G + mu I)^-1 g tends to the minimum-norm step -G^+ g, the error shrinking with mu
    rng = np.random.default_rng(0)
    net = FloatNet([2, 2, 1], ["tanh", "sigmoid"], "mse",
                   [rng.uniform(-1, 1, (2, 2)), rng.uniform(-1, 1, (1, 2))],
                   [np.zeros(2), np.zeros(1)])
    X = np.array([[-1, -1], [-1, 1], [1, -1], [1, 1]], np.float64)
    T = np.array([[0], [1], [1], [0]], np.float64)
    G, g, _ = so.gauss_newton(net, X, T)
    assert np.linalg.matrix_rank(G) == 4
    gn = so.damped_step(G, g, 0.0)
    J = so.jacobian(net, X).reshape(4, -1)
    r = net.forward(X) - T
    # the minimum-norm least-squares step of the linearised residuals, by J's pseudo-inverse
    assert np.allclose(gn, -np.linalg.pinv(J) @ r[:, 0], rtol=1e-8, atol=1e-10)
    errors = [np.abs(so.damped_step(G, g, mu) - gn).max() for mu in (1e-2, 1e-4, 1e-6)]
    assert errors[0] > 10 * errors[1] > 100 * errors[2] and errors[2] < 1e-3 * np.abs(gn).max()


def test_gauss_newton_only_takes_every_step():
    X = np.linspace(-1, 1, 30)[:, None]
    T = np.sin(3 * X)
    run = so.levenberg_marquardt(_sin_net(0), X, T, 5, gauss_newton_only=True)
    assert run.rejected == 0 and run.samples == [60, 120, 180, 240, 300]


def test_lm_rejected_steps_raise_mu_and_accepted_lower_it():
    X = np.linspace(-1, 1, 30)[:, None]
    T = np.sin(3 * X)
    run = so.levenberg_marquardt(_sin_net(1), X, T, 20, mu=1e3)
    # from a large mu the first steps are accepted and each divides mu by 10
    assert run.mu[:3] == pytest.approx([1e2, 1e1, 1e0])
    # each iteration passes the samples forward once for G and once per trial step
    trials = np.diff([0] + run.samples) // len(X) - 1
    assert trials.min() >= 1 and trials.sum() == len(run.loss) + run.rejected


def test_lm_with_cross_entropy_uses_the_fisher_and_converges():
    d = np.loadtxt("examples/data/iris_train.csv", delimiter=",", skiprows=1)
    X = (d[:, :4] - d[:, :4].mean(axis=0)) / d[:, :4].std(axis=0)
    T = d[:, 4].astype(np.int64)
    rng = np.random.default_rng(0)
    net = FloatNet([4, 5, 3], ["tanh", "softmax"], "softmax_ce",
                   [rng.uniform(-0.8, 0.8, (5, 4)), rng.uniform(-0.9, 0.9, (3, 5))],
                   [np.zeros(5), np.zeros(3)])
    run = so.levenberg_marquardt(net, X, T, 15)
    assert np.all(np.diff(run.loss) < 0)
    assert run.loss[-1] < 5e-3 and (net.predict(X) == T).all()  # measured 1.8e-3, 100%


def test_lm_refuses_a_large_net_and_leaves_it_alone():
    rng = np.random.default_rng(0)
    net = FloatNet([64, 16, 10], ["tanh", "softmax"], "softmax_ce",
                   [rng.normal(0, 0.1, (16, 64)), rng.normal(0, 0.1, (10, 16))],
                   [np.zeros(16), np.zeros(10)])
    before = so.flat_params(net)
    with pytest.raises(ValueError, match="1210 parameters, more than the 1000"):
        so.levenberg_marquardt(net, np.zeros((3, 64)), [0, 1, 2], 5)
    assert (so.flat_params(net) == before).all()


# -- Adam --


def test_adam_two_steps_by_hand():
    # a 1-1 identity net under mse on one sample: C = (w x + b - t)^2 / 2, so
    # dC/dw = e x and dC/db = e with e = w x + b - t
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-8
    x, t, w, b = 2.0, 3.0, 0.5, 0.0
    net = FloatNet([1, 1], ["identity"], "mse", [[[w]]], [[b]])
    opt = Adam(lr=lr, beta1=b1, beta2=b2, eps=eps)
    # step 1: m = (1 - b1) g, v = (1 - b2) g^2; corrected, m^ = g and v^ = g^2, so each
    # parameter moves by -lr g / (|g| + eps): e = -2, g = (-4, -2)
    g1 = (-4.0, -2.0)
    net.adam_step(*net.gradients([[x]], [[t]]), opt)
    w1 = w + lr * 4 / (4 + eps)
    b1_ = b + lr * 2 / (2 + eps)
    assert net.W[0][0, 0] == pytest.approx(w1, rel=1e-15)
    assert net.B[0][0] == pytest.approx(b1_, rel=1e-15)
    # step 2: e = 0.6 * 2 + 0.1 - 3 = -1.7 (to rounding), g = (-3.4, -1.7);
    # m = b1 (1 - b1) g1 + (1 - b1) g2, corrected by 1 - b1^2 = (1 - b1)(1 + b1):
    # m^ = (b1 g1 + g2) / (1 + b1); likewise v^ = (b2 g1^2 + g2^2) / (1 + b2)
    e2 = w1 * x + b1_ - t
    net.adam_step(*net.gradients([[x]], [[t]]), opt)
    for g_1, g_2, before, after in ((g1[0], e2 * x, w1, net.W[0][0, 0]),
                                     (g1[1], e2, b1_, net.B[0][0])):
        m_hat = (b1 * g_1 + g_2) / (1 + b1)
        v_hat = (b2 * g_1**2 + g_2**2) / (1 + b2)
        assert after == pytest.approx(before - lr * m_hat / (math.sqrt(v_hat) + eps), rel=1e-14)
    assert e2 == pytest.approx(-1.7, abs=1e-8)


def test_adam_weight_decay_is_added_to_the_gradient():
    # w = 1, gradient 0.1, decay 0.3: g = 0.1 + 0.3 = 0.4 > 0, so the first step is -lr
    net = FloatNet([1, 1], ["identity"], "mse", [[[1.0]]], [[0.0]])
    net.adam_step([np.array([[0.1]])], [np.array([0.0])], Adam(lr=0.01, weight_decay=0.3))
    assert net.W[0][0, 0] == pytest.approx(1 - 0.01, rel=1e-9)
    assert net.B[0][0] == 0.0  # zero gradient, zero bias: no step (0 / (0 + eps))


def test_adam_trains_xor_through_train():
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float64) * 2 - 1
    T = np.array([[0], [1], [1], [0]], np.float64)
    rng = np.random.default_rng(0)
    net = FloatNet([2, 4, 1], ["tanh", "sigmoid"], "bce",
                   [rng.uniform(-1, 1, (4, 2)), rng.uniform(-1, 1, (1, 4))],
                   [np.zeros(4), np.zeros(1)])
    hist = net.train(X, T, Adam(lr=0.05, batch=4), 300)
    assert hist[-1] < 0.05 and (net.predict(X) == T[:, 0]).all()
    assert net.adam_t == 300
    copy = net.copy()
    assert copy.adam_t == 300 and np.array_equal(copy.SW[0], net.SW[0])


@pytest.mark.parametrize("field,value", [("lr", 0.0), ("beta1", 1.0), ("beta2", -0.1),
                                         ("eps", -1.0), ("batch", 0)])
def test_adam_refuses_bad_settings(field, value):
    with pytest.raises(ValueError, match=field):
        Adam(**{field: value})


# -- the benchmark runs (tiny budgets; no figure is asserted) --


def test_optimiser_bench_prints_its_tables():
    from edgebp.host.bench import optim

    lines: list[str] = []
    text = optim.run(seeds=1, sweep_seeds=1, budget=0.01, only=["XOR", "sin"], max_width=2,
                     out=lines.append)
    assert lines == [text]
    for column in optim.COLUMNS + optim.SWEEP_COLUMNS:
        assert column in text
    rows = {tuple(line.split()[:1] + line.split()[3:4]) for line in text.splitlines()}
    for problem in ("XOR", "sin"):
        for method in optim.METHODS:
            assert (problem, method) in rows
    assert {("XOR", "smallest"), ("sin", "smallest")} <= {tuple(line.split()[:2])
                                                         for line in text.splitlines()}
