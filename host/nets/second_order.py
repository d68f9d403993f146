"""Second-order methods of the float64 reference: Jacobians, Gauss-Newton, Levenberg-Marquardt
and the diagonal of the Hessian, all by backpropagation (numpy, float only; the board has none
of them).

Parameters are flattened layer by layer, W^l row-major then b^l (`flat_params`). Samples are
columns, as in edgebp.host.nets.reference.

Jacobian. `jacobian(net, X)` is d(output)/d(theta) per sample, (N, n_L, P): one backward pass
per output unit k, batched over the samples, seeded with delta^L = d a^L_k / d z^L (f'(z_k) e_k
for an elementwise output, p_k (e_k - p) for softmax) or with e_k for of="logits"; each pass
gives the per-sample gradients delta^l (a^l-1)^T as backward() does, without the mean.

Gauss-Newton matrix, per loss (`gauss_newton`), G = mean_n J_n^T H_n J_n with J_n = dz^L/dtheta
and H_n the Hessian of the sample's loss with respect to the output layer's z^L, dropping the
term that needs the second derivative of the net:
    mse          H = diag(f'(z^L)^2): G = J_r^T J_r / N for the residuals r = a^L - t, the
                 Gauss-Newton matrix of least squares
    softmax_ce   H = diag(p) - p p^T    (the loss is convex in the logits z^L)
    bce          H = diag(p (1 - p))
For the two cross-entropies, whose outputs are the canonical link of their distribution, this
generalised Gauss-Newton matrix is also the Fisher information: it is positive semidefinite.
The gradient is g = mean_n J_n^T delta^L_n, the backpropagated one.

Levenberg-Marquardt (`levenberg_marquardt`): each iteration forms G and g over the whole
training set and solves (G + mu I) step = -g. A step that lowers the mean training loss is
taken and mu is divided by mu_down (10); one that does not is rejected, mu is multiplied by
mu_up (10) and the step is solved again, until one is taken or mu passes mu_max (then the loss
is at a minimum to rounding and the run stops); mu never goes below mu_min (1e-20), and a
system singular to rounding counts as a rejected step. mu starts at 1e-3. The factors are
Marquardt's (1963) 10; start, factors and mu_max are the defaults of MATLAB's trainlm (after
Hagan & Menhaj 1994). Gauss-Newton is the undamped limit mu -> 0: (G + mu I)^-1 g -> G^+ g
(G's pseudo-inverse, as g lies in G's range), taken every iteration without a check, which
`gauss_newton_only=True` does.

Hessian diagonal (`hessian_diagonal`). A weight w_ij of layer l reaches the loss only through
z^l_i, so d^2 C / dw_ij^2 = (a^l-1_j)^2 d^2 C / (dz^l_i)^2 exactly, and d^2 C / db_i^2 =
d^2 C / (dz^l_i)^2: the diagonal of the Hessian over the weights needs the diagonal of
H^l = d^2 C / dz^l dz^l, per sample. H^l is propagated backwards as delta is:
    H^L         the output Hessian above, plus for mse diag(f''(z^L) (a^L - t))
    H^l-1 = diag(f'(z^l-1)) (W^l)^T H^l W^l diag(f'(z^l-1)) + diag(f''(z^l-1) o (W^l)^T delta^l)
recursion="full" propagates the whole n_l x n_l matrix per sample (exact: this is the chain
rule, nothing dropped). recursion="diagonal" is Becker & LeCun's (1988) classic recursion,
which keeps only the diagonal of each H^l:
    h^l-1_i = f'(z_i)^2 sum_k (W^l_ki)^2 h^l_k + f''(z_i) ((W^l)^T delta^l)_i
It drops the off-diagonal terms sum_{k != m} W_ki W_mi H^l_km. So it is exact for the output
layer, and for the layer below it too when H^L is diagonal (mse, bce: not softmax_ce, whose
H^L = diag(p) - p p^T is full); deeper down it is an approximation. kind="gauss_newton"
drops the f'' terms (and the mse output's f''(a - t)): the diagonal of the Gauss-Newton
matrix G above, exact with "full" (= diag(J^T H J)), and with "diagonal" the non-negative
estimate that LeCun et al.'s stochastic diagonal Levenberg-Marquardt ("Efficient BackProp",
1998) divides its steps by.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from edgebp import fixed
from edgebp.host.nets.reference import FloatNet, act_second_derivative

MAX_LM_PARAMS = 1000  # LM solves a P x P system each trial step: P^3 / 3 flops, P^2 memory
CHUNK = 256  # samples per Jacobian block when forming G (memory: CHUNK * n_L * P floats)
KINDS = ("exact", "gauss_newton")
RECURSIONS = ("full", "diagonal")


# -- flat parameter vectors --


def param_count(net: FloatNet) -> int:
    return sum(w.size + b.size for w, b in zip(net.W, net.B, strict=True))


def flat_params(net: FloatNet) -> np.ndarray:
    """theta: per layer W^l row-major, then b^l."""
    return np.concatenate([p for w, b in zip(net.W, net.B, strict=True)
                           for p in (w.ravel(), b)])


def set_params(net: FloatNet, theta: np.ndarray) -> None:
    theta = np.asarray(theta, np.float64)
    if theta.shape != (param_count(net),):
        raise ValueError(f"theta must have {param_count(net)} values, not {theta.shape}")
    i = 0
    for l in range(net.L):
        for p in (net.W[l], net.B[l]):
            p[...] = theta[i : i + p.size].reshape(p.shape)
            i += p.size


def flatten(dW, dB) -> np.ndarray:
    """Per-layer arrays shaped as W and B (as backward() returns them) as one vector."""
    return np.concatenate([p for w, b in zip(dW, dB, strict=True) for p in (w.ravel(), b)])


def unflatten(net: FloatNet, v: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    dW, dB, i = [], [], 0
    for w, b in zip(net.W, net.B, strict=True):
        dW.append(v[i : i + w.size].reshape(w.shape))
        i += w.size
        dB.append(v[i : i + b.size])
        i += b.size
    return dW, dB


# -- Jacobians --


def _fprimes(net: FloatNet) -> list[np.ndarray]:
    # f'(z^l) per layer of the last forward pass; a softmax output has none (it is only
    # differentiated through its loss), and is never asked for one here
    return [np.empty(0) if d is None else d for d in net.derivatives()]


def _output_seed(net: FloatNet, k: int, of: str) -> np.ndarray:
    # d(output_k)/dz^L for every sample, (n_L, N), from the last forward pass
    zL, aL = net.z[-1], net.a[-1]
    seed = np.zeros_like(zL)
    if of == "logits":
        seed[k] = 1.0
    elif net.acts[-1] == fixed.SOFTMAX:
        seed[:] = -aL[k] * aL  # dp_k/dz_j = p_k (delta_kj - p_j)
        seed[k] += aL[k]
    else:
        seed[k] = _fprimes(net)[-1][k]
    return seed


def jacobian(net: FloatNet, X, of: str = "output") -> np.ndarray:
    """d(output)/d(theta) for each sample of X, (N, n_L, P): of="output" differentiates a^L
    (for mse the residuals a^L - t), of="logits" z^L. One backward pass per output unit."""
    if of not in ("output", "logits"):
        raise ValueError(f"jacobian of 'output' or 'logits', not {of!r}")
    net.forward(X)
    fprime = _fprimes(net)
    N = net.a[0].shape[1]
    nL = net.sizes[-1]
    J = np.empty((N, nL, param_count(net)))
    offsets = np.cumsum([0] + [n for w, b in zip(net.W, net.B, strict=True)
                               for n in (w.size, b.size)])
    for k in range(nL):
        delta = _output_seed(net, k, of)
        for l in range(net.L - 1, -1, -1):
            o = offsets[2 * l]
            J[:, k, o : o + net.W[l].size] = np.einsum("in,jn->nij", delta,
                                                       net.a[l]).reshape(N, -1)
            J[:, k, offsets[2 * l + 1] : offsets[2 * l + 2]] = delta.T
            if l > 0:
                delta = fprime[l - 1] * (net.W[l].T @ delta)
    return J


def output_hessian(net: FloatNet, T, kind: str = "gauss_newton") -> np.ndarray:
    """d^2 loss / dz^L dz^L per sample of the last forward pass, (N, n_L, n_L): the Gauss-
    Newton form (see the module's docstring) or, kind="exact", with mse's f''(z) (a - t)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    z, a = net.z[-1], net.a[-1]
    N, n = a.shape[1], a.shape[0]
    t = net.targets(T, N)
    if net.loss_kind == fixed.SOFTMAX_CE:
        p = a.T
        return np.einsum("nk,km->nkm", p, np.eye(n)) - p[:, :, None] * p[:, None, :]
    if net.loss_kind == fixed.BCE:
        d = a * (1.0 - a)
    else:
        f1 = _fprimes(net)[-1]
        d = f1 * f1
        if kind == "exact":
            d = d + act_second_derivative(net.acts[-1], z, a, net.alpha) * (a - t)
    return np.einsum("kn,km->nkm", d, np.eye(n))


def gauss_newton(net: FloatNet, X, T, chunk: int = CHUNK
                 ) -> tuple[np.ndarray, np.ndarray, float]:
    """(G, g, C) over the batch: the Gauss-Newton matrix mean_n J_n^T H_n J_n (P, P), the mean
    gradient (P,) and the mean loss, at the net's current weights."""
    X = np.asarray(X, np.float64).reshape(-1, net.sizes[0])
    T = np.asarray(T)
    N, P = len(X), param_count(net)
    G = np.zeros((P, P))
    g = np.zeros(P)
    total = 0.0
    for i in range(0, N, chunk):
        Xc, Tc = X[i : i + chunk], T[i : i + chunk]
        J = jacobian(net, Xc, of="logits")  # leaves the chunk's forward pass cached
        total += float(net.losses(Xc, Tc).sum())
        # output_hessian's H in factored form, so that G grows by large matrix products:
        # H = diag(d) (mse, bce), or diag(p) - p p^T (softmax_ce) with d = p
        a = net.a[-1].T  # (N, n_L)
        if net.loss_kind == fixed.SOFTMAX_CE:
            d = a
        elif net.loss_kind == fixed.BCE:
            d = a * (1.0 - a)
        else:
            d = _fprimes(net)[-1].T ** 2
        A = (np.sqrt(d)[:, :, None] * J).reshape(-1, P)
        G += A.T @ A
        if net.loss_kind == fixed.SOFTMAX_CE:
            u = np.einsum("nk,nkp->np", a, J)  # p^T J per sample
            G -= u.T @ u
        g += net.output_delta(Tc).T.reshape(-1) @ J.reshape(-1, P)
    return G / N, g / N, total / N


# -- Levenberg-Marquardt --


def damped_step(G: np.ndarray, g: np.ndarray, mu: float) -> np.ndarray:
    """The step -(G + mu I)^-1 g; for mu = 0 the Gauss-Newton step -G^+ g, the minimum-norm
    least-squares solution, which is the limit of the damped step as mu -> 0."""
    if mu == 0:
        return -np.linalg.lstsq(G, g, rcond=None)[0]
    try:
        return -np.linalg.solve(G + mu * np.eye(len(g)), g)
    except np.linalg.LinAlgError:  # singular to rounding: mu below G's rounding, no step
        return np.full(len(g), np.nan)


@dataclass
class LMRun:
    """What a Levenberg-Marquardt (or Gauss-Newton) run did, per iteration: the mean training
    loss after it, mu after it, and the samples it passed forward (N for the Jacobian pass,
    which also runs n_L backward passes, plus N per trial step whose system could be
    solved)."""

    loss: list[float] = field(default_factory=list)
    mu: list[float] = field(default_factory=list)
    samples: list[int] = field(default_factory=list)
    rejected: int = 0
    stopped: str = ""  # why it ended early, if it did


def _check_lm(net: FloatNet) -> int:
    P = param_count(net)
    if P > MAX_LM_PARAMS:
        raise ValueError(f"Levenberg-Marquardt solves a P x P system each step: this net has "
                         f"{P} parameters, more than the {MAX_LM_PARAMS} it is meant for")
    return P


def levenberg_marquardt(net: FloatNet, X, T, iterations: int, mu: float = 1e-3,
                        mu_up: float = 10.0, mu_down: float = 10.0, mu_max: float = 1e10,
                        mu_min: float = 1e-20, gauss_newton_only: bool = False,
                        callback=None) -> LMRun:
    """Train `net` in place by Levenberg-Marquardt on the whole batch (X, T) for up to
    `iterations` iterations (see the module's docstring), or by undamped Gauss-Newton with
    gauss_newton_only=True. callback(iteration, net), if given, may return True to stop."""
    _check_lm(net)
    if not (0 < mu_min <= mu < mu_max and mu_up > 1 and mu_down > 1):
        raise ValueError("need 0 < mu_min <= mu < mu_max, mu_up > 1 and mu_down > 1")
    X = np.asarray(X, np.float64).reshape(-1, net.sizes[0])
    T = np.asarray(T)
    N = len(X)
    run = LMRun()
    seen = 0
    for it in range(iterations):
        G, g, C = gauss_newton(net, X, T)
        seen += N
        theta = flat_params(net)
        if gauss_newton_only:
            step = damped_step(G, g, 0.0)
            set_params(net, theta + step)
            C_new = net.loss(X, T)
            seen += N
        else:
            while True:
                step = damped_step(G, g, mu)
                C_new = math.inf  # a step that could not be solved is rejected unseen
                if np.isfinite(step).all():
                    set_params(net, theta + step)
                    C_new = net.loss(X, T)
                    seen += N
                if C_new < C:
                    mu = max(mu / mu_down, mu_min)
                    break
                run.rejected += 1
                mu *= mu_up
                if mu > mu_max:
                    set_params(net, theta)
                    C_new = C
                    run.stopped = f"no step lowers the loss (mu above {mu_max:g})"
                    break
        run.loss.append(C_new)
        run.mu.append(mu)
        run.samples.append(seen)
        if run.stopped or (callback is not None and callback(it, net)):
            break
    return run


# -- the Hessian diagonal --


def hessian_diagonal(net: FloatNet, X, T, kind: str = "exact", recursion: str = "full"
                     ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The diagonal of the Hessian of the mean loss over (X, T) with respect to every weight
    and bias, shaped as W and B: kind "exact" or "gauss_newton", recursion "full" (exact for
    its kind) or "diagonal" (Becker & LeCun's; see the module's docstring)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    if recursion not in RECURSIONS:
        raise ValueError(f"recursion must be one of {RECURSIONS}, not {recursion!r}")
    net.forward(X)
    fprime = _fprimes(net)
    N = net.a[0].shape[1]
    H = output_hessian(net, T, kind)  # (N, n, n)
    h = np.diagonal(H, axis1=1, axis2=2).copy()  # (N, n), the diagonal recursion's
    delta = net.output_delta(T, net.derivatives())
    dW: list[np.ndarray] = [np.empty(0)] * net.L
    dB: list[np.ndarray] = [np.empty(0)] * net.L
    for l in range(net.L - 1, -1, -1):
        d = np.diagonal(H, axis1=1, axis2=2) if recursion == "full" else h  # (N, n_l+1)
        dW[l] = d.T @ (net.a[l] ** 2).T / N
        dB[l] = d.mean(axis=0)
        if l == 0:
            break
        W = net.W[l]
        e = W.T @ delta  # (n_l, N): dC/da^l
        fp = fprime[l - 1].T  # (N, n_l)
        if recursion == "full":
            H = fp[:, :, None] * (W.T @ H @ W) * fp[:, None, :]
        else:
            h = fp * fp * (h @ (W * W))
        if kind == "exact":
            curv = (act_second_derivative(net.acts[l - 1], net.z[l - 1], net.a[l],
                                          net.alpha) * e).T
            if recursion == "full":
                H = H + np.einsum("ni,ij->nij", curv, np.eye(curv.shape[1]))
            else:
                h = h + curv
        delta = fprime[l - 1] * e
    return dW, dB


def curvature_maxima(net: FloatNet, X, T) -> tuple[list[float], list[float]]:
    """The largest values, over the samples of (X, T), of what the board's stochastic
    diagonal Levenberg-Marquardt (edgebp/sdlm.py) holds per layer: (units, params). units[l]
    is the largest of a unit's Gauss-Newton curvature h^l (by the diagonal recursion) and of
    the sum (W^l+1 * W^l+1)^T h^l+1 it is formed from (the board holds both in one format);
    params[l] the largest curvature of one sample's weight (h^l a^l-1 squared) or bias
    (h^l). These choose its fixed-point formats (qnet.sdlm_formats)."""
    net.forward(X)
    fprime = _fprimes(net)
    H = output_hessian(net, T, "gauss_newton")
    h = np.diagonal(H, axis1=1, axis2=2)  # (N, n_L)
    units = [0.0] * net.L
    params = [0.0] * net.L
    for l in range(net.L - 1, -1, -1):
        a2 = (net.a[l] ** 2).T  # (N, n_l)
        units[l] = max(units[l], float(h.max(initial=0.0)))
        params[l] = float(max(h.max(initial=0.0),
                              (h.max(axis=1) * a2.max(axis=1, initial=0.0)).max(initial=0.0)))
        if l == 0:
            break
        e = h @ (net.W[l] * net.W[l])  # (N, n_l)
        fp = fprime[l - 1].T
        h = fp * fp * e
        units[l - 1] = float(max(e.max(initial=0.0), h.max(initial=0.0)))
    return units, params
