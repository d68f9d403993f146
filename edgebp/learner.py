# A net that learns on the board from the board's own data: the API for a user's program.
#
#     from edgebp.learner import Learner
#     ln = Learner("net.ebp")              # a net file on the board's filesystem
#     ln.restore()                         # the newest valid checkpoint, if there is one
#     ln.checkpoint_every(50)              # after every 50th weight update
#     k = ln.predict(x, out)               # x: raw ints from the sensors; out: the outputs
#     ln.learn(x, label)                   # when a label arrives
#     ln.evaluate(x, label)                # held out: scored, not learned
#
# Inputs are the program's raw integers. A net file with an input map (edgebp/ebp.py,
# written by the host for a declared raw range) takes each to the net's input format in
# integers: x_q = clamp(((clamp(x, lo, hi) - o) * m + c) >> s); a raw value outside the
# declared range counts as its end. Without a map the inputs are taken as they are (int16,
# in the net's input format). Targets: a class index (softmax cross-entropy), else the
# targets in the output's format, one per output (an int for a net of one output).
#
# learn, predict and evaluate allocate nothing, except learn on the update an automatic
# checkpoint follows (files are opened then). Kernels are chosen as the training server
# chooses them, when this module is imported (import it first): native where the board
# loads them, else viper, else the pure-Python ones; `kernel_set` says which.
# Checkpoints are edgebp/ckpt.py's (atomic replace, validated on load): a save that fails
# leaves the last checkpoint and the net as they were.

import gc

from edgebp import ebp
from edgebp.fixed import SMALL_MAX, SOFTMAX_CE
from edgebp.net import zeros


def _best():
    from edgebp.kern import select

    try:
        return select()
    except MemoryError:
        # no block large enough for the native machine code: viper, else the pure kernels
        try:
            return select("viper")
        except (ImportError, MemoryError):
            return select("python")


# Chosen when this module is imported, before the program's own modules and the net take
# the heap: the native kernels are one block of about 22 KB, which a board's heap, cut into
# holes by later imports from its filesystem, may no longer have.
_BEST = _best()


def _kernels(prefer):
    if prefer is None:
        return _BEST
    from edgebp.kern import select

    return select(prefer)


def _shape(net):
    # what a checkpoint of the same net has in common with its file
    return (net.loss_kind, list(net.sizes), list(net.acts), list(net.shift_a),
            list(net.shift_w), list(net.shift_d))


class Learner:
    def __init__(self, path, root="", kernels=None):
        # path: the .ebp net file; root: the directory of the checkpoints ("" the working
        # directory); kernels: None (the fastest the board has), "python", "viper", "native"
        self.path = path
        self.root = root
        self.kernels = _kernels(kernels)
        from edgebp.kern import name

        self.kernel_set = name(self.kernels)  # "native", "viper" or "python"
        self.net = self._open()
        net = self.net
        self.shape = _shape(net)
        self.n_in = net.sizes[0]
        self.n_out = net.sizes[net.L]
        self.xq = zeros("h", self.n_in)
        self.t = zeros("h", 1 if net.loss_kind == SOFTMAX_CE else self.n_out)
        self.frozen = 0
        self.every = 0  # checkpoint after this many updates (0: on request only)
        self.samples = 0  # samples learned since the net file was opened (or restored from)
        self.updates = 0  # weight updates since then
        self.saved_updates = 0  # updates at the last checkpoint
        self.generation = 0  # of the last checkpoint saved or restored (0: none)
        self.seen = 0  # evaluation counters (evaluate, reset)
        self.correct = 0
        self.loss_sum = 0

    def _open(self):
        with open(self.path, "rb") as f:
            return ebp.load(f, self.kernels)

    # -- inputs and targets (checked before anything changes) --

    def inputs(self, x):
        # the net's inputs (array('h'), the input format) for raw inputs x
        if len(x) < self.n_in:
            raise ValueError("%d inputs, the net takes %d" % (len(x), self.n_in))
        xq = self.xq
        mp = self.net.inmap
        if mp is not None:
            mp.apply(x, xq)
            return xq
        for i in range(self.n_in):
            v = x[i]
            if v > 32767:
                v = 32767
            elif v < -32767:
                v = -32767
            xq[i] = v
        return xq

    def _target(self, t):
        tq = self.t
        if isinstance(t, int):
            if len(tq) != 1:
                raise ValueError("the net has %d outputs: give a target for each"
                                 % self.n_out)
            if self.net.loss_kind == SOFTMAX_CE and (t < 0 or t >= self.n_out):
                raise ValueError("class %d outside 0..%d" % (t, self.n_out - 1))
            t = t if t <= 32767 else 32767
            tq[0] = t if t >= -32767 else -32767
            return tq
        if len(t) < len(tq):
            raise ValueError("%d targets, the net takes %d" % (len(t), len(tq)))
        if self.net.loss_kind == SOFTMAX_CE:
            return self._target(t[0])
        for j in range(len(tq)):
            v = t[j]
            if v > 32767:
                v = 32767
            elif v < -32767:
                v = -32767
            tq[j] = v
        return tq

    # -- per sample --

    def learn(self, x, t):
        """Learn one sample (raw inputs x, target t); returns its loss in Q12."""
        net = self.net
        if net.lr_m == 0:
            raise ValueError("the net file has no hyper-parameters: quantize it with an "
                             "optimizer")
        xq = self.inputs(x)
        loss = net.learn(xq, self._target(t))
        if self.samples < SMALL_MAX:
            self.samples += 1
        if net.count == 0:
            # the update at the batch's end
            if self.updates < SMALL_MAX:
                self.updates += 1
            if self.every and self.updates - self.saved_updates >= self.every:
                self.checkpoint()
        return loss

    def predict(self, x, out=None):
        """The index of the largest output for raw inputs x; `out`, if given, receives the
        output activations (int16, the output's format: Q14 for sigmoid and softmax)."""
        net = self.net
        xq = self.inputs(x)
        if out is not None:
            return net.predict(xq, out)
        net.forward(xq)
        a = net.A[net.L]
        best = 0
        for j in range(self.n_out):
            if a[j] > a[best]:
                best = j
        return best

    def evaluate(self, x, t):
        """Score one held-out sample without learning it: counts it in seen, correct and
        loss_sum (Q12, saturating), returns its loss. Weights, gradient sums and the training
        counters are left alone."""
        net = self.net
        xq = self.inputs(x)
        tq = self._target(t)
        net.forward(xq)
        loss = net.score(tq)
        if self.seen < SMALL_MAX:
            self.seen += 1
            self.correct += net.good
        s = self.loss_sum
        self.loss_sum = s + loss if loss < SMALL_MAX - s else SMALL_MAX
        return loss

    def reset(self):
        """Start the evaluation counters again."""
        self.seen = 0
        self.correct = 0
        self.loss_sum = 0

    # -- fine-tuning --

    def freeze(self, n):
        """Train only the layers from n on (0: all); kept across restore()."""
        self.net.freeze(n)
        self.frozen = n

    # -- checkpoints --

    def checkpoint_every(self, n):
        """Save a checkpoint after every n-th weight update (0: only on checkpoint())."""
        if n < 0 or n > 65535:
            raise ValueError("checkpoint period %d outside 0..65535" % n)
        self.every = n

    def checkpoint(self):
        """Save the whole training state; returns the checkpoint's generation. On OSError
        (a full or failing filesystem) the last checkpoint stays as it was."""
        from edgebp import ckpt

        self.generation = ckpt.save(self.net, self.root, self.every, self.samples,
                                    self.updates)
        self.saved_updates = self.updates
        return self.generation

    def restore(self):
        """Go on from the newest valid checkpoint under root: True if there was one, False
        if there is none (the net stays as it is). A checkpoint of another net, or one that
        fails its checks, raises ValueError and changes nothing."""
        from edgebp import ckpt

        found = ckpt.find(self.root)
        if found is None:
            return False
        path, head = found
        gc.collect()
        try:
            net = ckpt.load(path, head, self.kernels)
        except ebp.NoRoom:
            # no room beside the net in use: that one goes, and comes back from its file
            # if the checkpoint fails
            self.net = None
            gc.collect()
            try:
                net = ckpt.load(path, head, self.kernels)
            except Exception:
                gc.collect()
                self.net = self._open()
                raise
        if _shape(net) != self.shape:
            net = None
            gc.collect()
            if self.net is None:
                self.net = self._open()
            raise ckpt.CheckpointError("the checkpoint holds another net than %s"
                                       % self.path)
        if self.frozen:
            net.freeze(self.frozen)
        self.net = net
        gc.collect()
        self.every = ckpt.every(head)
        self.samples = ckpt.samples(head)
        self.updates = self.saved_updates = ckpt.updates(head)
        self.generation = ckpt.generation(head)
        return True
