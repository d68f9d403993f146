# The training engine: a fully connected feed-forward net in fixed point.
#
# Layer l (0-based) maps A[l] (n_in, format shift_a[l]) to A[l+1] (n_out, shift_a[l+1]):
#   Z[l] = requant(W[l] A[l] + B[l], s_f)     W, B in shift_w[l]; Z in shift_z[l]
#   A[l+1] = f(Z[l])
# Backward (classic matrix form): D[L-1] from the loss, then
#   D[l-1] = f'(Z[l-1]) o (W[l]^T D[l])        D[l] in shift_d[l]
#   GW[l] += D[l] A[l]^T >> kg, GB[l] += D[l] >> kg   (sums over at most 2**kg samples)
# update() applies the batch mean with SGD, momentum and weight decay.
# freeze(n) fine-tunes: layers 0..n-1 get no gradient and no update, and backward stops at
# D[n] (their deltas are never formed).
# Squashing units (sigmoid, tanh, softmax) have Z in Q12 and A in Q14 (a softmax output's Z
# may be wider: Q(12 - logit_k), range +-8 * 2**logit_k); the delta of a
# cross-entropy output is p - t in Q14; the delta of an MSE output has the output's format.
# All buffers are made here, each allocated once at its final size (zeros()); forward,
# backward, learn and update allocate nothing.

import sys
from array import array

from edgebp import fixed
from edgebp.fixed import (
    A_SHIFT_SQUASH,
    BCE,
    IDENTITY,
    LOGIT_K_MAX,
    MISH,
    MSE,
    NEAREST,
    SIGMOID,
    SMALL_MAX,
    SOFTMAX,
    SOFTMAX_CE,
    TANH,
    Z_SHIFT_SQUASH,
    ceil_log2,
    mean_lr_shift,
    rshift_round,
    seed30,
)
from edgebp.luts import LOG2

MAX_LAYERS = 8
MAX_WIDTH = 4096
MAX_BATCH = 1 << 15


def nlog_q14(p):
    # -ln(p / 16384) in Q12 for p in Q14 (p < 1 is read as 1: the loss is capped at 9.7)
    if p < 1:
        p = 1
    e = 0
    while (p >> (e + 1)) > 0:
        e += 1
    if e <= 12:
        m = p << (12 - e)
    else:
        m = p >> (e - 12)
    f = m - 4096
    i = f >> 6
    lo = LOG2[i]
    l2 = lo + rshift_round((LOG2[i + 1] - lo) * (f & 63), 6)
    return rshift_round((((14 - e) << 12) - l2) * 2839, 12)  # 2839 = round(ln 2 * 4096)


_MICROPYTHON = sys.implementation.name == "micropython"


def zeros(typecode, n):
    # An array of n zeros ('h' or 'i'), allocated once at its final size. array(tc, bytes(k*n))
    # would first make a bytes object as big as the array, so the board briefly holds every
    # buffer twice (and the garbage fragments the heap). On MicroPython array(tc, range(n))
    # sizes the array from len(range) and iterating a range allocates nothing per item; the
    # items (int16 ones wrap) are then cleared. CPython repeats a one-item array.
    if not _MICROPYTHON:
        return array(typecode, [0]) * n
    a = array(typecode, range(n))
    for i in range(n):
        a[i] = 0
    return a


def _tensors(typecode, sizes, count, first, square):
    # one array of zeros per layer l < count: of sizes[l + first] items, times sizes[l] if
    # square (a weight matrix); None for each with no typecode. A loop, not a comprehension
    # or [None] * count, which would leave garbage (a function object, a list) between the
    # tensors.
    out = []
    for l in range(count):
        n = sizes[l + first]
        out.append(None if typecode is None else zeros(typecode, sizes[l] * n if square else n))
    return out


def _bad(l, what):
    # the error of layer l (0-based), made only when there is one: a load allocates nothing
    # it does not keep
    return ValueError("layer %d: %s" % (l + 1, what))


def _squash(kind):
    return kind == SIGMOID or kind == TANH or kind == SOFTMAX


class Net:
    def __init__(self, sizes, acts, shift_a, shift_w, shift_d, loss,
                 batch_max=1, momentum=False, alpha_q=41, kernels=None, logit_k=0):
        L = len(sizes) - 1
        if L < 1 or L > MAX_LAYERS:
            raise ValueError("a net has 1 to %d layers, not %d" % (MAX_LAYERS, L))
        if len(acts) != L or len(shift_w) != L or len(shift_d) != L or len(shift_a) != L + 1:
            raise ValueError("layer tables disagree in length")
        for n in sizes:
            if n < 1 or n > MAX_WIDTH:
                raise ValueError("layer width %d outside 1..%d" % (n, MAX_WIDTH))
        if batch_max < 1 or batch_max > MAX_BATCH:
            raise ValueError("batch_max %d outside 1..%d" % (batch_max, MAX_BATCH))
        if alpha_q < 0 or alpha_q > 4096:
            raise ValueError("leaky-ReLU slope %d outside 0..4096 (Q12)" % alpha_q)
        if logit_k < 0 or logit_k > LOGIT_K_MAX:
            raise ValueError("logit_k %d outside 0..%d" % (logit_k, LOGIT_K_MAX))
        if logit_k and acts[L - 1] != SOFTMAX:
            raise ValueError("logit_k is for a softmax output")
        if kernels is None:
            from edgebp.kern import select
            kernels = select()
        self.k = kernels
        self.L = L
        self.sizes = sizes
        self.acts = acts
        self.loss_kind = loss
        self.shift_a = shift_a
        self.shift_w = shift_w
        self.shift_d = shift_d
        self.alpha = alpha_q
        self.logit_k = logit_k
        self.batch_max = batch_max
        self.kg = ceil_log2(batch_max)
        self.shift_z = []
        self.k_f = []  # forward guard
        self.s_f = []  # forward requant shift
        self.k_b = []  # backward guard (for D[l-1] from D[l])
        self.s_b = []
        self.one = []  # 1.0 in the layer input's format
        for l in range(L):
            act = acts[l]
            n_in = sizes[l]
            n_out = sizes[l + 1]
            if act < IDENTITY or act > MISH:
                raise _bad(l, "unknown activation %d" % act)
            if act == SOFTMAX and l != L - 1:
                raise _bad(l, "softmax is for the output layer only")
            if _squash(act):
                if shift_a[l + 1] != A_SHIFT_SQUASH:
                    raise _bad(l, "%s output must be Q14" % fixed.ACT_NAMES[act])
                sz = Z_SHIFT_SQUASH - (logit_k if act == SOFTMAX else 0)
            elif act > SOFTMAX:
                # swish and mish read the Q12 tables; their output z * gate keeps z's format
                if l == L - 1:
                    raise _bad(l, "%s is for hidden layers only" % fixed.ACT_NAMES[act])
                if shift_a[l + 1] != Z_SHIFT_SQUASH:
                    raise _bad(l, "%s output must be Q12" % fixed.ACT_NAMES[act])
                sz = Z_SHIFT_SQUASH
            else:
                sz = shift_a[l + 1]
            sa = shift_a[l]
            if sa < 0 or sa > 14:
                raise _bad(l, "input shift %d outside 0..14" % sa)
            if shift_w[l] < 0 or shift_w[l] > 24 or shift_d[l] < 0 or shift_d[l] > 24:
                raise _bad(l, "weight or delta shift outside 0..24")
            self.shift_z.append(sz)
            k = ceil_log2(n_in + 1)
            self.k_f.append(k)
            self.s_f.append(shift_w[l] + sa - k - sz)
            self.one.append(1 << sa)
            if l > 0:
                kb = ceil_log2(n_out)
                self.k_b.append(kb)
                self.s_b.append(shift_w[l] + shift_d[l] - kb - shift_d[l - 1])
            else:
                self.k_b.append(0)
                self.s_b.append(0)
        out = acts[L - 1]
        if loss == SOFTMAX_CE:
            if out != SOFTMAX:
                raise ValueError("softmax cross-entropy needs a softmax output layer")
            if shift_d[L - 1] != 14:
                raise ValueError("output delta of cross-entropy is Q14")
        elif loss == BCE:
            if out != SIGMOID:
                raise ValueError("binary cross-entropy needs a sigmoid output layer")
            if shift_d[L - 1] != 14:
                raise ValueError("output delta of cross-entropy is Q14")
        elif loss == MSE:
            if out == SOFTMAX:
                raise ValueError("a softmax output is trained with cross-entropy")
            if shift_d[L - 1] != shift_a[L]:
                raise ValueError("output delta of MSE has the output's format")
            if shift_a[L] < 6:
                raise ValueError("MSE output shift must be at least 6")
        else:
            raise ValueError("unknown loss %d" % loss)

        self.W = _tensors("h", sizes, L, 1, True)
        self.B = _tensors("h", sizes, L, 1, False)
        self.GW = _tensors("i", sizes, L, 1, True)
        self.GB = _tensors("i", sizes, L, 1, False)
        if momentum:
            self.VW = _tensors("i", sizes, L, 1, True)
            self.VB = _tensors("i", sizes, L, 1, False)
        else:
            self.VW = self.VB = _tensors(None, sizes, L, 1, False)
        self.Z = _tensors("h", sizes, L, 1, False)
        self.A = _tensors("h", sizes, L + 1, 0, False)
        self.D = _tensors("h", sizes, L, 1, False)
        self.rng = zeros("i", 1)
        self.rng[0] = seed30(1)
        self.count = 0  # samples in the pending gradient sum
        self.grad_count = 0  # samples behind the gradients last applied or pending
        self.batch = 1
        self.lr_m = 0
        self.lr_e = 0
        self.mu = 0
        self.c_m = 0
        self.c_s = 0
        self.mode = NEAREST
        self.good = 0
        self.frozen = 0  # layers 0..frozen-1 learn nothing (freeze)
        self.inmap = None  # the net file's input map (edgebp/ebp.py), set by its loader
        self.opt = None  # an optimiser in place of SGD (edgebp.adam, edgebp.sdlm), or None
        self.dyn = None  # weight formats that follow the weights (edgebp.dynfmt), or None
        self.reset_stats()
        self._fuse()

    # -- settings (not on the hot path: these may raise) --

    def set_lr(self, m, e):
        # learning rate m * 2**-e with m in 128..255
        if m < 128 or m > 255:
            raise ValueError("learning-rate mantissa %d outside 128..255" % m)
        for l in range(self.frozen, self.L if self.opt is None or self.opt.sgd_lr else 0):
            u = e + self.shift_d[l] + self.shift_a[l] - self.kg - self.shift_w[l] - 16
            if u < 0:
                raise ValueError("learning rate too large for the formats of layer %d" % (l + 1))
        self.lr_m = m
        self.lr_e = e

    def set_batch(self, n):
        if n < 1 or n > self.batch_max:
            raise ValueError("batch size %d outside 1..%d" % (n, self.batch_max))
        self.batch = n

    def set_momentum(self, mu_q8):
        if mu_q8 < 0 or mu_q8 > 255:
            raise ValueError("momentum %d outside 0..255 (Q8)" % mu_q8)
        if mu_q8 and self.VW[0] is None:
            raise ValueError("net was built without momentum buffers")
        self.mu = mu_q8

    def set_decay(self, c_m, c_e):
        # weight decay times learning rate: c_m * 2**-c_e, c_m in 0..255
        if c_m < 0 or c_m > 255 or (c_m and c_e < fixed.FV):
            raise ValueError("weight decay out of range")
        self.c_m = c_m
        self.c_s = c_e - fixed.FV if c_m else 0

    def set_rounding(self, mode, seed=1):
        self.mode = mode
        self.rng[0] = seed30(seed)

    def freeze(self, n):
        # Layers 0..n-1 keep their weights: no gradient, no update, no backward work below
        # layer n. The fused native step knows no freezing, so a frozen net runs backward,
        # learn and update through the kernels one by one (the same arithmetic).
        if n < 0 or n >= self.L:
            raise ValueError("freeze 0..%d of the %d layers, not %d (a net with every layer "
                             "frozen learns nothing)" % (self.L - 1, self.L, n))
        # the pending gradient sums of the layers frozen now are dropped (a frozen layer's
        # sums stay zero, so unfreezing it later applies nothing from before)
        for l in range(self.frozen, n):
            gw = self.GW[l]
            for i in range(len(gw)):
                gw[i] = 0
            gb = self.GB[l]
            for i in range(len(gb)):
                gb[i] = 0
        self.frozen = n

    def reset_stats(self):
        self.seen = 0
        self.correct = 0
        self.loss_sum = 0

    # -- the training step --

    def _fuse(self):
        # Kernels with whole-step functions (the native ones: forward_net, score_net,
        # backward_net, update_net, learn_net) run forward, score, backward, update and learn
        # below in one call each, with the same arithmetic, reading the net's own lists of
        # buffers and P, its small tables (layout in edgebp/native/kernels.c); learn_net also
        # keeps the counters as backward and learn do. Without them _fused is None and the
        # loops below, the definition, run.
        self._fused = None
        if not hasattr(self.k, "backward_net"):
            return
        P = [self.L, self.loss_kind, self.alpha, self.kg, self.shift_a[self.L]]
        for l in range(self.L):
            u0 = self.shift_d[l] + self.shift_a[l] - self.kg - self.shift_w[l] - 16
            P += [self.sizes[l], self.sizes[l + 1], self.one[l], self.k_f[l], self.s_f[l],
                  self.acts[l], self.k_b[l], self.s_b[l], u0]
        P += [self.logit_k]  # the tail
        self._fused = (self.A, self.Z, self.W, self.B, self.D, self.GW, self.GB, self.VW,
                       self.VB, array("i", P))

    def forward(self, x):
        if self._fused is not None:
            self.k.forward_net(self, x)
            return
        k = self.k
        sizes = self.sizes
        a0 = self.A[0]
        for i in range(sizes[0]):
            a0[i] = x[i]
        for l in range(self.L):
            z = self.Z[l]
            k.matvec(self.W[l], self.B[l], self.A[l], sizes[l], sizes[l + 1],
                     self.one[l], self.k_f[l], self.s_f[l], z)
            act = self.acts[l]
            # act_fwd's parameter: the leaky-ReLU slope, or a softmax's logit_k
            k.act_fwd(act, z, self.A[l + 1], sizes[l + 1],
                      self.logit_k if act == SOFTMAX else self.alpha)

    def score(self, t):
        # Output delta of the last forward pass against target t into D[L-1] (for MSE before
        # f'), the sample's loss in Q12 (returned) and self.good = 1 if the answer is right.
        # Gradient sums and counters are left alone: evaluation uses this alone.
        if self._fused is not None:
            return self.k.score_net(self, t)
        L = self.L
        n = self.sizes[L]
        a = self.A[L]
        d = self.D[L - 1]
        loss = 0
        good = 1
        kind = self.loss_kind
        if kind == SOFTMAX_CE:
            z = self.Z[L - 1]
            c = t[0]
            best = 0
            for j in range(n):
                v = a[j] - 16384 if j == c else a[j]
                # z saturated at the edge of Q12: the clamp has no gradient outwards
                if (v < 0 and z[j] >= 32767) or (v > 0 and z[j] <= -32767):
                    v = 0
                d[j] = v
                if a[j] > a[best]:
                    best = j
            loss = nlog_q14(a[c])
            good = 1 if best == c else 0
        elif kind == BCE:
            for j in range(n):
                v = a[j]
                tj = t[j]
                if tj < 0:
                    tj = 0
                elif tj > 16384:
                    tj = 16384
                d[j] = v - tj
                loss += rshift_round(tj * nlog_q14(v) + (16384 - tj) * nlog_q14(16384 - v), 14)
                if (v >= 8192) != (tj >= 8192):
                    good = 0
        else:
            sa = self.shift_a[L]
            best = 0
            tbest = 0
            for j in range(n):
                e = a[j] - t[j]
                if e > 32767:
                    e = 32767
                elif e < -32767:
                    e = -32767
                d[j] = e
                q = rshift_round(e * e, 2 * sa - 11)
                loss = loss + q if q < SMALL_MAX - loss else SMALL_MAX
                if a[j] > a[best]:
                    best = j
                if t[j] > t[tbest]:
                    tbest = j
            if n == 1:
                half = 1 << (sa - 1)
                good = 1 if (a[0] >= half) == (t[0] >= half) else 0
            else:
                good = 1 if best == tbest else 0
        self.good = good
        return loss

    def backward(self, t):
        # output delta from the loss, then D back through the layers, then gradient sums.
        # Returns the sample's loss in Q12. A gradient sum holds at most batch_max samples
        # (the range proof depends on it): a full sum is applied before another is added.
        # The caller checks targets: a class index must lie in 0..n_out-1.
        if self.count >= self.batch_max:
            self.update()
        f = self.frozen
        if self._fused is not None and f == 0:
            loss = self.k.backward_net(self, t)
        else:
            L = self.L
            k = self.k
            sizes = self.sizes
            loss = self.score(t)
            if self.loss_kind == MSE:
                d = self.D[L - 1]
                k.act_bwd(self.acts[L - 1], d, self.Z[L - 1], self.A[L], d, sizes[L], self.alpha)
            for l in range(L - 1, f, -1):
                e = self.D[l - 1]
                k.matvec_t(self.W[l], self.D[l], sizes[l], sizes[l + 1], self.k_b[l],
                           self.s_b[l], e)
                k.act_bwd(self.acts[l - 1], e, self.Z[l - 1], self.A[l], e, sizes[l],
                          self.alpha)
            kg = self.kg
            for l in range(f, L):
                k.outer_acc(self.GW[l], self.GB[l], self.D[l], self.A[l], sizes[l],
                            sizes[l + 1], self.one[l], kg)
        o = self.opt
        if o is not None and o.curv and self.count == 0:
            o.curvature(self)  # SDLM: the curvature of the first sample of each sum
        self.count += 1
        self.grad_count = self.count
        # counters saturate instead of leaving the small-int range
        if self.seen < SMALL_MAX:
            self.seen += 1
            self.correct += self.good
        s = self.loss_sum
        self.loss_sum = s + loss if loss < SMALL_MAX - s else SMALL_MAX
        return loss

    def learn(self, x, t):
        # online (batch 1) or mini-batch learning: update after `batch` samples
        if (self._fused is not None and self.frozen == 0 and self.opt is None
                and self.dyn is None):
            return self.k.learn_net(self, x, t)
        self.forward(x)
        loss = self.backward(t)
        if self.count >= self.batch:
            self.update()
        return loss

    def update(self):
        # apply the mean gradient of the pending samples
        count = self.count
        if count == 0:
            return
        if self.opt is not None:
            self.opt.update(self)
            self.count = 0
            return
        if self._fused is not None and self.frozen == 0:
            self.k.update_net(self)
            self.count = 0
            if self.dyn is not None:
                self.dyn.follow(self)
            return
        q = (self.lr_m << 22) // count
        t = mean_lr_shift(q)
        m = rshift_round(q, t)
        e = self.lr_e + 22 - t
        k = self.k
        kg = self.kg
        sizes = self.sizes
        for l in range(self.frozen, self.L):
            u = e + self.shift_d[l] + self.shift_a[l] - kg - self.shift_w[l] - 16
            k.update(self.W[l], self.GW[l], self.VW[l], sizes[l] * sizes[l + 1], m, u,
                     self.mu, self.c_m, self.c_s, self.mode, self.rng)
            k.update(self.B[l], self.GB[l], self.VB[l], sizes[l + 1], m, u,
                     self.mu, self.c_m, self.c_s, self.mode, self.rng)
        self.count = 0
        if self.dyn is not None:
            self.dyn.follow(self)

    def predict(self, x, out):
        # forward only; copies the output activations into `out`, returns the argmax
        self.forward(x)
        a = self.A[self.L]
        best = 0
        for j in range(self.sizes[self.L]):
            out[j] = a[j]
            if a[j] > a[best]:
                best = j
        return best
