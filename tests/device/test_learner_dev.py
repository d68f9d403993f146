# The board-side learning API (edgebp/learner.py) on the device: raw integer inputs through
# the net file's input map, learning bit-identical to the host's numpy twin, freezing,
# checkpoints, held-out evaluation, no allocation per sample. learner_fixture (made by
# tests/test_learner.py) holds the net file, raw samples and what the twin reached.
import gc
import os
from array import array

import learner_fixture as fx

import devtest
from edgebp import ckpt, ebp
from edgebp.learner import Learner

PATH = "ln_test.ebp"
ROOT = "ln_ckpt"


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def _fresh_root():
    try:
        os.mkdir(ROOT)
    except OSError:
        pass
    for p in ckpt.paths(ROOT):
        try:
            os.remove(p)
        except OSError:
            pass


def _sample(s, x):
    for i in range(fx.N_IN):
        x[i] = fx.X[s * fx.N_IN + i]
    return x


def _weights(net):
    out = []
    for l in range(net.L):
        out += list(net.W[l]) + list(net.B[l])
    return out


def _kernel_sets():
    from edgebp import kern

    out = ["python"]
    for k in ("viper", "native"):
        try:
            kern.select(k)
            out.append(k)
        except ImportError:
            pass
    return out


def _learner(kernels=None):
    _write(PATH, fx.NET)
    return Learner(PATH, ROOT, kernels)


def test_input_map_at_the_edges_of_the_range():
    ln = _learner()
    x = [0] * fx.N_IN
    for r in range(len(fx.EDGE_Q) // fx.N_IN):
        for i in range(fx.N_IN):
            x[i] = fx.EDGE_X[r * fx.N_IN + i]
        xq = ln.inputs(x)
        for i in range(fx.N_IN):
            assert xq[i] == fx.EDGE_Q[r * fx.N_IN + i], \
                "input %d of %d: x_q %d, host %d" % (i, x[i], xq[i], fx.EDGE_Q[r * fx.N_IN + i])


def test_learn_predict_evaluate_equal_the_twin():
    for k in _kernel_sets():
        ln = _learner(k)
        x = [0] * fx.N_IN
        for s in range(fx.N):
            ln.learn(_sample(s, x), fx.T[s])
        assert _weights(ln.net) == list(fx.FINAL), "%s: weights differ from the twin" % k
        assert ln.updates == fx.N // fx.BATCH and ln.samples == fx.N
        out = array("h", [0] * fx.N_OUT)
        for j in range(fx.N_HELD):
            s = fx.N + j
            best = ln.predict(_sample(s, x), out)
            assert list(out) == list(fx.OUT[j * fx.N_OUT:(j + 1) * fx.N_OUT]), \
                "%s: outputs of held-out sample %d" % (k, j)
            assert best == fx.PRED[j]
            ln.evaluate(x, fx.T[s])
        assert (ln.seen, ln.correct, ln.loss_sum) == fx.EVAL, \
            "%s: evaluation %r, twin %r" % (k, (ln.seen, ln.correct, ln.loss_sum), fx.EVAL)
        assert _weights(ln.net) == list(fx.FINAL), "evaluate changed the weights"
        ln.reset()
        assert (ln.seen, ln.correct, ln.loss_sum) == (0, 0, 0)
        ln = None
        gc.collect()


def test_freeze_equals_the_frozen_twin():
    first = None
    for k in _kernel_sets():
        ln = _learner(k)
        if first is None:
            first = list(ln.net.W[0]) + list(ln.net.B[0])
        ln.freeze(1)
        x = [0] * fx.N_IN
        for s in range(fx.N):
            ln.learn(_sample(s, x), fx.T[s])
        assert list(ln.net.W[0]) + list(ln.net.B[0]) == first, "%s: a frozen layer moved" % k
        assert _weights(ln.net) == list(fx.FINAL_FROZEN), "%s: differs from the twin" % k
        ln = None
        gc.collect()


def test_checkpoint_restore_resumes_bit_identical():
    _fresh_root()
    ln = _learner()
    assert not ln.restore(), "restored from no checkpoint"
    ln.checkpoint_every(fx.EVERY)
    x = [0] * fx.N_IN
    for s in range(fx.CUT):
        ln.learn(_sample(s, x), fx.T[s])
    saved = fx.BATCH * fx.EVERY * ((fx.CUT // fx.BATCH) // fx.EVERY)
    ln = None  # the power goes
    gc.collect()
    ln = Learner(PATH, ROOT)
    assert ln.restore()
    assert ln.samples == saved and ln.every == fx.EVERY and ln.generation >= 1
    for s in range(ln.samples, fx.N):
        ln.learn(_sample(s, x), fx.T[s])
    assert _weights(ln.net) == list(fx.FINAL), "resumed training differs from the twin"
    # its input map came back with it
    assert ln.net.inmap is not None and list(ln.net.inmap.m) == list(fx.MAP_M)


def test_a_checkpoint_of_another_net_is_refused():
    _fresh_root()
    _write("other.ebp", fx.PLAIN)
    other = Learner("other.ebp", ROOT)
    other.checkpoint()
    ln = _learner()
    before = _weights(ln.net)
    try:
        ln.restore()
    except ValueError as e:
        assert "another net" in str(e), str(e)
    else:
        raise AssertionError("restored a checkpoint of another net")
    assert _weights(ln.net) == before
    os.remove("other.ebp")


def test_no_allocation_per_sample():
    for k in _kernel_sets():
        ln = _learner(k)
        x = _sample(0, [0] * fx.N_IN)
        out = array("h", [0] * fx.N_OUT)
        t = fx.T[0]
        ln.learn(x, t)  # unlocked first: a real error shows with its message
        for _ in range(3):
            devtest.no_alloc(ln.learn, x, t)
            devtest.no_alloc(ln.predict, x, out)
            devtest.no_alloc(ln.evaluate, x, t)
        ln.freeze(1)
        ln.learn(x, t)
        devtest.no_alloc(ln.learn, x, t)
        ln = None
        gc.collect()


def test_bad_input_is_refused_and_changes_nothing():
    ln = _learner()
    before = _weights(ln.net)
    for x, t, words in (([0] * (fx.N_IN - 1), 0, "inputs"),
                        ([0] * fx.N_IN, fx.N_OUT, "class"),
                        ([0] * fx.N_IN, -1, "class")):
        try:
            ln.learn(x, t)
        except ValueError as e:
            assert words in str(e), str(e)
        else:
            raise AssertionError("learned %r -> %r" % (x, t))
    assert _weights(ln.net) == before and ln.samples == 0


def test_a_damaged_input_map_is_refused():
    data = bytearray(fx.NET)
    data[fx.MAP_AT + 5] ^= 0x10
    _write(PATH, data)
    try:
        Learner(PATH, ROOT)
    except ebp.EbpError as e:
        assert "input map" in str(e), str(e)
    else:
        raise AssertionError("loaded a damaged input map")


def test_zz_leave_the_filesystem_as_found():
    # last (tests run in name order): what these tests wrote goes, so that a board shared
    # with the modules after this one has the filesystem they would find without it
    for p in ckpt.paths(ROOT) + (PATH,):
        try:
            os.remove(p)
        except OSError:
            pass
    try:
        os.rmdir(ROOT)
    except OSError:
        pass


def test_a_file_without_a_map_takes_the_inputs_as_they_are():
    _write("plain.ebp", fx.PLAIN)
    ln = Learner("plain.ebp", ROOT)
    assert ln.net.inmap is None
    xq = ln.inputs([40000, -40000, 5, -7])
    assert list(xq)[:4] == [32767, -32767, 5, -7]
    os.remove("plain.ebp")
