"""Checkpoints: the board's training state saved atomically to its filesystem and restored
exactly, so that training that survives resets ends bit-identical to training that did not."""

import re
from array import array
from pathlib import Path

import numpy as np
import pytest

from conftest import require_runtime, run_device_module
from edgebp import ckpt, ebp
from edgebp.host.boards.session import Session, SessionError
from edgebp.host.boards.sim import InProcessBoard, MicroPythonBoard
from edgebp.host.nets import ebpfile
from edgebp.host.nets.qnet import Hyper, adam_q, sdlm_q
from test_ebp import make_data, make_qnet, reference_train

# everything that carries state from one update to the next: momentum, weight decay,
# stochastic rounding, and batches that checkpoints cut through
HYPER = Hyper(lr=0.05, batch=3, momentum=0.5, weight_decay=0.01, rounding="stochastic", seed=7)
# the same for Adam (which takes the place of momentum)
ADAM_HYPER = Hyper(lr=0.01, batch=3, weight_decay=0.01, rounding="stochastic", seed=7)


# and for SDLM
SDLM_HYPER = Hyper(lr=0.02, batch=3, weight_decay=0.01, rounding="stochastic", seed=7)


def sdlm_qnet(kind, sizes, batch_max=4, mu=0.1, gamma=0.05):
    q = make_qnet(kind, sizes, batch_max=batch_max)
    L = len(sizes) - 1
    q.sdlm = sdlm_q(mu, gamma, [12] * (L - 1) + [14], [9] * L)
    return q


def adam_qnet(kind, sizes, batch_max=4, betas=(0.9, 0.999)):
    q = make_qnet(kind, sizes, batch_max=batch_max)
    q.adam = adam_q(*betas)
    return q


def learn(net, X, T, idx):
    for i in idx:
        net.learn(array("h", X[i].tolist()), array("h", T[i].tolist()))


def state(net):
    """Everything a later update reads, as plain lists."""
    out = [net.count, net.grad_count, net.seen, net.correct, net.loss_sum, net.rng[0],
           net.lr_m, net.lr_e, net.mu, net.c_m, net.c_s, net.mode, net.batch]
    for l in range(net.L):
        out += [list(net.W[l]), list(net.B[l]), list(net.GW[l]), list(net.GB[l])]
        if net.VW[l] is not None:
            out += [list(net.VW[l]), list(net.VB[l])]
    opt = net.opt
    if opt is not None and not opt.curv:
        out += [opt.c1, opt.c2, opt.t, opt.p1, opt.p2]
        for l in range(net.L):
            out += [list(opt.MW[l]), list(opt.MB[l]), list(opt.VW[l]), list(opt.VB[l])]
    elif opt is not None:
        # SDLM: its settings, estimate and sample count (not C: one sample's scratch)
        out += [opt.mu_m, opt.mu_e, opt.gamma, list(opt.fc), list(opt.fh), opt.n]
        for l in range(net.L):
            out += [list(opt.HW[l]), list(opt.HB[l])]
    return out


def flat_weights(net):
    return [v for l in range(net.L) for v in list(net.W[l]) + list(net.B[l])]


@pytest.mark.parametrize("kind", ["ce", "bce", "mse"])
@pytest.mark.parametrize("momentum", [False, True])
def test_net_part_is_the_host_net_file(kind, momentum, tmp_path):
    q = make_qnet(kind, (5, 7, 3), momentum=momentum)
    if kind == "ce" and momentum:
        q.logit_k = 3
    hyper = HYPER if momentum else Hyper(lr=0.05, batch=2, seed=3)
    ckpt.save(q.build(hyper), str(tmp_path))
    raw = (tmp_path / ckpt.NAME).read_bytes()
    n = ebp.file_len(q.sizes)
    assert raw[ckpt.HEAD:ckpt.HEAD + n] == ebpfile.board_part(q, hyper)


@pytest.mark.parametrize("kind", ["ce", "mse", "ce-k2"])
def test_restored_state_is_the_saved_state(kind, tmp_path):
    q = make_qnet(kind[:2], (6, 9, 4), momentum=True, batch_max=4)
    if kind == "ce-k2":
        q.logit_k = 2  # a softmax reading logits in Q10
    X, T = make_data(q, 40)
    net = q.build(HYPER)
    learn(net, X, T, range(13))
    assert net.count, "the checkpoint should fall inside a batch"
    ckpt.save(net, str(tmp_path), 5, 13, 4)
    path, head = ckpt.find(str(tmp_path))
    back = ckpt.load(path, head)
    assert state(back) == state(net)
    assert back.logit_k == net.logit_k == q.logit_k
    assert (ckpt.every(head), ckpt.samples(head), ckpt.updates(head)) == (5, 13, 4)
    learn(net, X, T, range(13, 40))
    learn(back, X, T, range(13, 40))
    assert state(back) == state(net)


def dyn_qnet(kind, sizes, batch_max=4):
    """A net with momentum whose weight formats follow the weights (edgebp/dynfmt.py): two
    formats below the top of their windows, its weights small enough to be doubled."""
    q = make_qnet(kind, sizes, momentum=True, batch_max=batch_max)
    hi = tuple(q.shift_w)
    q.shift_w = [s - 2 for s in hi]
    q.W = [(w // 4).astype(w.dtype) for w in q.W]
    q.B = [(b // 4).astype(b.dtype) for b in q.B]
    q.dyn = (tuple(s - 4 for s in hi), hi)
    return q


@pytest.mark.parametrize("optimizer", ["momentum", "adam", "sdlm", "dyn"])
def test_device_resume_and_torn_files(runtime, optimizer):
    """The same checkpoint code on the device: resumed training matches the host's reference,
    a torn new file is never taken."""
    if optimizer == "adam" and runtime not in ("cpython", "wasm") and not (
            Path(ckpt.__file__).parent / "adam_viper.py").is_file():
        # the others take the viper or native kernels, whose Adam kernels come with it
        pytest.skip("no viper or native Adam kernels here (edgebp/adam_viper.py)")
    if optimizer == "sdlm" and runtime not in ("cpython", "wasm") and not (
            Path(ckpt.__file__).parent / "sdlm_viper.py").is_file():
        pytest.skip("no viper or native SDLM kernels here (edgebp/sdlm_viper.py)")
    if optimizer == "adam":
        q, hyper = adam_qnet("ce", (5, 6, 3)), ADAM_HYPER
    elif optimizer == "sdlm":
        q, hyper = sdlm_qnet("ce", (5, 6, 3)), SDLM_HYPER
    elif optimizer == "dyn":
        q, hyper = dyn_qnet("ce", (5, 6, 3)), HYPER
    else:
        q, hyper = make_qnet("ce", (5, 6, 3), momentum=True, batch_max=4), HYPER
    X, T = make_data(q, 17)
    final = reference_train(q, hyper, X, T)
    if optimizer == "dyn":
        assert final.dyn.moves > 0 and final.shift_w != q.shift_w
    fixture = "\n".join([
        f"NET = {ebpfile.board_part(q, hyper)!r}",
        f"N_IN = {X.shape[1]}",
        f"N_T = {T.shape[1]}",
        f"N = {len(X)}",
        "CUT = 7",
        f"X = {X.ravel().tolist()!r}",
        f"T = {T.ravel().tolist()!r}",
        f"FINAL = {flat_weights(final)!r}",
        f"RNG = {final.rng[0]}",
    ]) + "\n"
    run_device_module(runtime, "tests/device/test_ckpt_dev.py",
                      extra_files={"ckpt_fixture.py": fixture}, timeout=60)


def _two_checkpoints(tmp_path):
    q = make_qnet("ce", (2, 3, 2), momentum=True, batch_max=2)
    X, T = make_data(q, 9)
    net = q.build(Hyper(lr=0.05, batch=2, momentum=0.5, rounding="stochastic"))
    learn(net, X, T, range(5))
    old_state = state(net)
    root = str(tmp_path)
    ckpt.save(net, root, 0, 5, 2)
    older = (tmp_path / ckpt.NAME).read_bytes()
    learn(net, X, T, range(5, 9))
    ckpt.save(net, root, 0, 9, 4)
    newer = (tmp_path / ckpt.NAME).read_bytes()
    return root, older, old_state, newer, state(net)


def restored(root):
    found = ckpt.find(root)
    if found is None:
        return None
    return state(ckpt.load(*found))


def test_a_power_cut_anywhere_leaves_the_old_or_the_new_checkpoint(tmp_path):
    root, older, old_state, newer, new_state = _two_checkpoints(tmp_path)
    cur, new = tmp_path / ckpt.NAME, tmp_path / ckpt.NEW_NAME
    # the writer's steps: new file growing byte by byte, complete, renamed
    for cut in range(len(newer)):
        cur.write_bytes(older)
        new.write_bytes(newer[:cut])
        assert restored(root) == old_state, f"new file cut at {cut} of {len(newer)}"
    cur.write_bytes(older)
    new.write_bytes(newer)
    assert restored(root) == new_state
    assert not new.exists() and cur.read_bytes() == newer, "the newer file is renamed"
    # FAT: the old file removed, the new not renamed yet
    cur.unlink()
    new.write_bytes(newer)
    assert restored(root) == new_state


def test_an_interrupted_writer_never_touches_the_old_checkpoint(tmp_path, monkeypatch):
    root, older, old_state, newer, _ = _two_checkpoints(tmp_path)
    cur = tmp_path / ckpt.NAME
    q = make_qnet("ce", (2, 3, 2), momentum=True, batch_max=2)

    class PowerCut(Exception):
        pass

    real_open = open

    def cut_after(budget):
        def fake_open(path, mode="r"):
            f = real_open(path, mode)
            if "w" not in mode:
                return f

            class Torn:
                def write(self, data):
                    nonlocal budget
                    data = bytes(data)
                    if len(data) > budget:
                        f.write(data[:budget])
                        raise PowerCut
                    budget -= len(data)
                    return f.write(data)

                def close(self):
                    f.close()

            return Torn()

        return fake_open

    net = q.build(Hyper(lr=0.05, batch=2))
    probe = tmp_path / "probe"
    probe.mkdir()
    size = (probe / ckpt.NAME).stat().st_size if ckpt.save(net, str(probe)) else 0
    for budget in (0, 1, ckpt.HEAD, ckpt.HEAD + 40, size - 2, size - 1):
        cur.write_bytes(older)
        monkeypatch.setattr(ckpt, "open", cut_after(budget), raising=False)
        with pytest.raises(PowerCut):
            ckpt.save(net, root)
        monkeypatch.undo()
        assert cur.read_bytes() == older
        assert restored(root) == old_state


def test_a_damaged_checkpoint_is_refused(tmp_path):
    root, older, _, _, _ = _two_checkpoints(tmp_path)
    cur = tmp_path / ckpt.NAME
    for pos in (0, 9, ckpt.HEAD + 3, len(older) // 2, len(older) - 1):
        bad = bytearray(older)
        bad[pos] ^= 0x10
        cur.write_bytes(bytes(bad))
        assert ckpt.find(root) is None, f"byte {pos} flipped"
    cur.write_bytes(older + b"\0")
    assert ckpt.find(root) is None, "a longer file"


# -- through the wire: the session survives resets of the board --

def _train_with_resets(board, reset, q, X, T, orders, resets_at, hyper=HYPER):
    """Train epochs with resume=True, resetting the board after the samples in resets_at."""
    with Session(board.url, timeout=0.3, retries=2) as s:
        s.load(q, hyper)
        st = s.checkpoint(every=2, now=False)
        assert st.every == 2
        pending = sorted(resets_at)
        offset = 0
        for order in orders:

            def progress(n, total, offset=offset):
                # n: samples of this call acknowledged so far
                if pending and offset + n >= pending[0]:
                    pending.pop(0)
                    reset()

            r = s.train(X, T, order, resume=True, progress=progress)
            assert r.samples == len(order)
            offset += len(order)
        assert not pending, "every reset happened"
        state_now = s.checkpoint_state()
        W, B = s.get_weights()
    return state_now, W, B


def _expected(q, X, T, orders, hyper=HYPER):
    net = q.build(hyper)
    for order in orders:
        learn(net, X, T, order)
    return net


def _check(q, X, T, orders, W, B, st, hyper=HYPER):
    ref = _expected(q, X, T, orders, hyper)
    for l in range(q.L):
        assert W[l].ravel().tolist() == list(ref.W[l]), f"layer {l + 1} weights"
        assert B[l].tolist() == list(ref.B[l])
    assert st.samples == sum(len(o) for o in orders)


def test_session_resumes_after_resets_of_an_in_process_board(tmp_path):
    q = make_qnet("ce", (6, 8, 3), momentum=True, batch_max=4)
    X, T = make_data(q, 30)
    rng = np.random.default_rng(5)
    orders = [rng.permutation(len(X)) for _ in range(2)]
    with InProcessBoard(root=tmp_path) as board:
        st, W, B = _train_with_resets(board, board.reset, q, X, T, orders, [11, 47])
    _check(q, X, T, orders, W, B, st)


def test_session_resumes_after_the_micropython_process_is_killed(tmp_path):
    require_runtime("unix")
    q = make_qnet("mse", (5, 7, 2), momentum=True, batch_max=4)
    X, T = make_data(q, 24)
    rng = np.random.default_rng(6)
    orders = [rng.permutation(len(X))]
    with MicroPythonBoard(root=tmp_path) as board:
        st, W, B = _train_with_resets(board, board.reset, q, X, T, orders, [9])
    _check(q, X, T, orders, W, B, st)


def test_checkpoints_follow_the_period_and_resume_needs_one(tmp_path):
    q = make_qnet("ce", (4, 5, 3), batch_max=4)
    X, T = make_data(q, 20)
    with InProcessBoard(root=tmp_path) as board, Session(board.url, timeout=0.5) as s:
        s.load(q, Hyper(lr=0.05, batch=2))
        with pytest.raises(SessionError, match="no valid checkpoint"):
            s.resume()
        s.checkpoint(every=3, now=False)
        s.train(X, T)  # 10 updates: checkpoints after updates 3, 6, 9
        st = s.checkpoint_state()
        assert (st.gen, st.saved, st.samples, st.updates) == (3, 18, 20, 10)
        s.train(X[:1], T[:1], accumulate=True)
        st = s.checkpoint()  # on request, with a pending gradient sum
        assert (st.gen, st.saved, st.pending) == (4, 21, 1)
        W, B = s.get_weights()
        grads = s.get_grads()
        s.load(q, Hyper(lr=0.05, batch=2))
        st = s.resume()
        assert (st.gen, st.samples, st.pending) == (4, 21, 1)
        assert s.info.sizes == q.sizes
        W2, B2 = s.get_weights()
        grads2 = s.get_grads()
    assert all((a == b).all() for a, b in zip(W + B, W2 + B2, strict=True))
    assert all((a == b).all() for a, b in zip(grads[0] + grads[1], grads2[0] + grads2[1],
                                              strict=True))


# -- fields that pass the CRC but no engine could have written --

def _pending_checkpoint(tmp_path):
    """A checkpoint of a net with momentum and one sample pending (batch_max 4): the raw
    file, the offsets of its momentum and gradient sums, and the net."""
    q = make_qnet("ce", (3, 4, 2), momentum=True, batch_max=4)
    X, T = make_data(q, 5)
    net = q.build(Hyper(lr=0.05, batch=4, momentum=0.5))
    learn(net, X, T, range(5))
    assert net.count == 1
    ckpt.save(net, str(tmp_path), 0, 5, 1)
    raw = (tmp_path / ckpt.NAME).read_bytes()
    v_at = ckpt.HEAD + ebp.file_len(q.sizes)
    g_at = v_at + 4 * (4 * 4 + 2 * 5)
    return raw, v_at, g_at, net


def _recrc(raw):
    from edgebp.wire import crc16

    c = crc16(raw, 0, len(raw) - 2)
    return raw[:-2] + bytes([c & 0xFF, c >> 8])


def _put(raw, at, fmt, *values):
    import struct

    b = bytearray(raw)
    struct.pack_into(fmt, b, at, *values)
    return _recrc(bytes(b))


V_MAX = (1 << 22) - 1  # |momentum| bound of the update (fixed.V_MAX, DESIGN: update steps)
# one sample adds (d x) >> 2 to a gradient sum at batch_max 4, |d|, |x| <= 32767
G_ONE = -(-(32767 * 32767) // 4)


def _mutations(v_at, g_at):
    yield "count 65535", lambda r: _put(r, 32, "<H", 65535), "pending count"
    yield "count and grad_count 65535", lambda r: _put(r, 32, "<HH", 65535, 65535), "batch_max"
    yield "count 5 > batch_max", lambda r: _put(r, 32, "<HH", 5, 5), "batch_max"
    yield "flags 0", lambda r: _put(r, 5, "B", 0), "flags"
    yield "flags 0xFF", lambda r: _put(r, 5, "B", 0xFF), "unknown flags"
    yield "no momentum flag", lambda r: _put(r, 5, "B", ckpt.F_PENDING), "momentum"
    for at, name in ((8, "generation"), (12, "samples"), (16, "updates"), (20, "seen"),
                     (24, "correct"), (28, "loss sum")):
        yield f"{name} 2**31", lambda r, at=at: _put(r, at, "<I", 1 << 31), "2**30"
    yield "generation 0", lambda r: _put(r, 8, "<I", 0), "generation"
    yield "correct > seen", lambda r: _put(r, 20, "<II", 3, 4), "correct"
    yield "net part longer", lambda r: _put(r, 40, "<I", v_at - ckpt.HEAD + 4), "net part"
    yield "momentum 2**30-1", lambda r: _put(r, v_at, "<i", (1 << 30) - 1), "momentum"
    yield "momentum V_MAX+1", lambda r: _put(r, v_at, "<i", V_MAX + 1), "momentum"
    yield "momentum -V_MAX-1", lambda r: _put(r, v_at + 8, "<i", -V_MAX - 1), "momentum"
    yield "gradient beyond one sample", lambda r: _put(r, g_at, "<i", G_ONE + 1), "gradient"
    yield "gradient 2**30-1", lambda r: _put(r, g_at + 4, "<i", (1 << 30) - 1), "gradient"


def test_fields_no_engine_writes_are_refused_although_the_crc_matches(tmp_path):
    raw, v_at, g_at, net = _pending_checkpoint(tmp_path)
    root = str(tmp_path)
    cur = tmp_path / ckpt.NAME
    for name, mutate, words in _mutations(v_at, g_at):
        cur.write_bytes(mutate(raw))
        found = ckpt.find(root)
        assert found is not None, f"{name}: the CRC should match"
        with pytest.raises(ValueError, match=re.escape(words)):
            ckpt.load(*found)
    # the bounds themselves are what the engine may write
    for ok in (_put(raw, v_at, "<i", V_MAX), _put(raw, v_at, "<i", -V_MAX),
               _put(raw, g_at, "<i", G_ONE), _put(raw, g_at, "<i", -G_ONE)):
        cur.write_bytes(ok)
        assert ckpt.load(*ckpt.find(root)).count == 1


def test_a_refused_checkpoint_leaves_the_board_its_trained_net(tmp_path):
    import struct

    from edgebp import wire
    from test_server import Board, samples

    raw, v_at, _, _ = _pending_checkpoint(tmp_path)
    q = make_qnet("ce", (4, 6, 3))
    X, T = make_data(q, 4)
    b = Board(root=str(tmp_path))
    b.load(q)
    b.ok(wire.TRAIN, samples(X, T, range(4)))
    trained = b.weights()
    for bad in (_put(raw, 32, "<HH", 65535, 65535), _put(raw, v_at, "<i", (1 << 30) - 1)):
        (tmp_path / ckpt.NAME).write_bytes(bad)
        b.refused(wire.RESUME, b"", wire.E_CKPT, "restoring")
        assert b.weights() == trained and b.server.net.sizes == [4, 6, 3]
    (tmp_path / ckpt.NAME).write_bytes(raw)
    _, k, p = b.ask(wire.RESUME)
    assert k == wire.CKPT and struct.unpack("<4I2H", p)[5] == 1
    assert b.server.net.sizes == [3, 4, 2]


def test_a_checkpoint_the_board_cannot_write_stops_training_and_says_what_was_learned(
        tmp_path):
    from edgebp.host.boards.session import UnsavedError

    q = make_qnet("ce", (4, 5, 3), batch_max=4)
    X, T = make_data(q, 40)
    hyper = Hyper(lr=0.05, batch=2)
    # frames of 6 samples, four in flight: the ones sent after the failure are not learned
    with InProcessBoard(root=tmp_path / "missing") as board, \
            Session(board.url, timeout=0.5, frame_bytes=64) as s:
        s.load(q, hyper)
        s.checkpoint(every=3, now=False)
        with pytest.raises(UnsavedError) as caught:
            s.train(X, T)
        e = caught.value
        text = str(e)
        assert "\n" not in text and "could not write its automatic checkpoint" in text
        # the third update, after sample 6, was due to be saved
        assert (e.learned, e.pending) == (6, 0)
        assert "learned 6 of the 40 samples" in text and "no checkpoint" in text
        W, B = s.get_weights()
        ref = reference_train(q, hyper, X, T, range(6))
        assert [w.ravel().tolist() for w in W] == [list(a) for a in ref.W]
        assert [b.tolist() for b in B] == [list(a) for a in ref.B]
        # training is held until the period is set again
        with pytest.raises(SessionError, match="automatic checkpoint"):
            s.train(X[6:], T[6:])
        s.checkpoint(every=0, now=False)
        assert s.train(X[6:], T[6:]).samples == 34
        W, B = s.get_weights()
    ref = reference_train(q, hyper, X, T)
    assert [w.ravel().tolist() for w in W] == [list(a) for a in ref.W]


# -- Adam: its moments, step count and beta**t are training state too --

@pytest.mark.parametrize("kind", ["ce", "bce", "mse"])
def test_adam_net_part_is_the_host_net_file(kind, tmp_path):
    q = adam_qnet(kind, (5, 7, 3))
    ckpt.save(q.build(ADAM_HYPER), str(tmp_path))
    raw = (tmp_path / ckpt.NAME).read_bytes()
    assert raw[5] & ckpt.F_ADAM and not raw[5] & ckpt.F_MOMENTUM
    n = ebp.file_len(q.sizes, adam=True)
    assert raw[ckpt.HEAD:ckpt.HEAD + n] == ebpfile.board_part(q, ADAM_HYPER)


@pytest.mark.parametrize("kind", ["ce", "mse"])
@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.0, 0.5)])
def test_adam_resumed_from_a_checkpoint_is_bit_exact(kind, betas, tmp_path):
    q = adam_qnet(kind, (6, 9, 4), betas=betas)
    X, T = make_data(q, 40)
    net = q.build(ADAM_HYPER)
    learn(net, X, T, range(13))
    assert net.count and net.opt.t == 4, "the checkpoint should fall inside a batch"
    ckpt.save(net, str(tmp_path), 5, 13, 4)
    back = ckpt.load(*ckpt.find(str(tmp_path)))
    assert back.opt is not None and state(back) == state(net)
    learn(net, X, T, range(13, 40))
    learn(back, X, T, range(13, 40))
    assert state(back) == state(net)
    # and it did learn: the moments moved the weights
    assert flat_weights(net) != flat_weights(q.build(ADAM_HYPER))


def test_adam_checkpoint_before_the_first_update(tmp_path):
    q = adam_qnet("ce", (3, 4, 2))
    X, T = make_data(q, 6)
    net = q.build(ADAM_HYPER)
    learn(net, X, T, range(2))
    assert net.opt.t == 0 and net.count == 2
    ckpt.save(net, str(tmp_path))
    back = ckpt.load(*ckpt.find(str(tmp_path)))
    learn(net, X, T, range(2, 6))
    learn(back, X, T, range(2, 6))
    assert state(back) == state(net)


def test_adam_session_resumes_after_resets_of_an_in_process_board(tmp_path):
    q = adam_qnet("ce", (6, 8, 3))
    X, T = make_data(q, 30)
    rng = np.random.default_rng(5)
    orders = [rng.permutation(len(X)) for _ in range(2)]
    with InProcessBoard(root=tmp_path) as board:
        st, W, B = _train_with_resets(board, board.reset, q, X, T, orders, [11, 47],
                                      ADAM_HYPER)
    _check(q, X, T, orders, W, B, st, ADAM_HYPER)


def test_adam_session_resumes_after_the_micropython_process_is_killed(tmp_path):
    require_runtime("unix")
    q = adam_qnet("mse", (5, 7, 2))
    X, T = make_data(q, 24)
    rng = np.random.default_rng(6)
    orders = [rng.permutation(len(X))]
    with MicroPythonBoard(root=tmp_path) as board:
        # reset(): the power cut off wherever the process is, and back on
        try:
            st, W, B = _train_with_resets(board, board.reset, q, X, T, orders, [9],
                                          ADAM_HYPER)
        except SessionError as e:
            if "no Adam kernel" not in str(e):
                raise
            pytest.skip(f"this runtime's kernels have no Adam kernel yet ({e})")
    _check(q, X, T, orders, W, B, st, ADAM_HYPER)


def _adam_checkpoint(tmp_path):
    """A checkpoint of an Adam net (3-4-2, 26 parameters) with one sample pending: the raw
    file, the offsets of its M, its V, t, and the net."""
    q = adam_qnet("ce", (3, 4, 2))
    X, T = make_data(q, 9)
    net = q.build(Hyper(lr=0.01, batch=4))
    learn(net, X, T, range(9))
    assert net.count == 1 and net.opt.t == 2
    ckpt.save(net, str(tmp_path), 0, 9, 2)
    raw = (tmp_path / ckpt.NAME).read_bytes()
    m_at = ckpt.HEAD + ebp.file_len(q.sizes, adam=True)
    v_at = m_at + 4 * 26
    t_at = v_at + 4 * 26
    return raw, m_at, v_at, t_at, net


def _v(e, f):
    # Adam's second moment F * 4**E as stored (edgebp/adam.py: (E + 11) << 25 | F)
    return (e + 11) << 25 | f


def _adam_mutations(raw, m_at, v_at, t_at):
    flags = raw[5]
    yield "no Adam flag", _put(raw, 5, "B", flags & ~ckpt.F_ADAM), "no Adam state"
    yield "Adam and momentum", _put(raw, 5, "B", flags | ckpt.F_MOMENTUM), "momentum"
    yield "M 2**29+1", _put(raw, m_at, "<i", (1 << 29) + 1), "first moment"
    yield "M -2**29-1", _put(raw, m_at + 8, "<i", -(1 << 29) - 1), "first moment"
    yield "V negative", _put(raw, v_at, "<i", -1), "second moment"
    yield "V exponent 19", _put(raw, v_at, "<i", _v(19, 1 << 22)), "second moment"
    yield "V exponent field 31", _put(raw, v_at + 4, "<i", 31 << 25), "second moment"
    yield "V mantissa not normal", _put(raw, v_at, "<i", _v(3, (1 << 22) - 1)), "second moment"
    yield "V 2**30-1", _put(raw, v_at, "<i", (1 << 30) - 1), "second moment"
    yield "t 2**31", _put(raw, t_at, "<I", 1 << 31), "step count"
    yield "t 0 after updates", _put(raw, t_at, "<I", 0), "disagrees"
    yield "p1 2**28+1", _put(raw, t_at + 4, "<I", (1 << 28) + 1), "beta**t"
    yield "p2 2**28 after updates", _put(raw, t_at + 8, "<I", 1 << 28), "disagrees"


def test_adam_fields_no_engine_writes_are_refused(tmp_path):
    raw, m_at, v_at, t_at, net = _adam_checkpoint(tmp_path)
    root = str(tmp_path)
    cur = tmp_path / ckpt.NAME
    for name, bad, words in _adam_mutations(raw, m_at, v_at, t_at):
        cur.write_bytes(bad)
        found = ckpt.find(root)
        assert found is not None, f"{name}: the CRC should match"
        with pytest.raises(ckpt.CheckpointError, match=re.escape(words)):
            ckpt.load(*found)
    # the bounds themselves are what the engine may write
    for ok in (_put(raw, m_at, "<i", 1 << 29), _put(raw, m_at, "<i", -(1 << 29)),
               _put(raw, v_at, "<i", 0), _put(raw, v_at, "<i", _v(18, (1 << 25) - 1)),
               _put(raw, v_at, "<i", _v(-11, 5)), _put(raw, v_at, "<i", _v(-10, 1 << 22))):
        cur.write_bytes(ok)
        assert ckpt.load(*ckpt.find(root)).opt.t == 2


def test_adam_state_for_a_net_without_adam_is_refused(tmp_path):
    # an SGD net's checkpoint claiming Adam state (its net part has no Adam block)
    q = make_qnet("ce", (3, 4, 2))
    net = q.build(Hyper(lr=0.05))
    ckpt.save(net, str(tmp_path))
    raw = (tmp_path / ckpt.NAME).read_bytes()
    (tmp_path / ckpt.NAME).write_bytes(_put(raw, 5, "B", raw[5] | ckpt.F_ADAM))
    with pytest.raises(ckpt.CheckpointError, match="Adam state for a net without Adam"):
        ckpt.load(*ckpt.find(str(tmp_path)))


def test_a_refused_adam_checkpoint_leaves_the_board_its_trained_net(tmp_path):
    import struct

    from edgebp import wire
    from test_server import Board, samples

    raw, m_at, v_at, t_at, _ = _adam_checkpoint(tmp_path)
    q = adam_qnet("ce", (4, 6, 3))
    X, T = make_data(q, 4)
    b = Board(root=str(tmp_path))
    b.load(q)
    b.ok(wire.TRAIN, samples(X, T, range(4)))
    trained = b.weights()
    opt = b.server.net.opt
    moments = [list(a) for a in opt.MW + opt.MB + opt.VW + opt.VB]
    for _, bad, _ in _adam_mutations(raw, m_at, v_at, t_at):
        (tmp_path / ckpt.NAME).write_bytes(bad)
        b.refused(wire.RESUME, b"", wire.E_CKPT, "restoring")
        assert b.weights() == trained and b.server.net.sizes == [4, 6, 3]
        assert b.server.net.opt is opt
        assert [list(a) for a in opt.MW + opt.MB + opt.VW + opt.VB] == moments
    (tmp_path / ckpt.NAME).write_bytes(raw)
    _, k, p = b.ask(wire.RESUME)
    assert k == wire.CKPT and struct.unpack("<4I2H", p)[5] == 1
    assert b.server.net.sizes == [3, 4, 2] and b.server.net.opt.t == 2


# -- SDLM: its running curvature and the count of its samples are training state too --

@pytest.mark.parametrize("kind", ["ce", "bce", "mse"])
def test_sdlm_net_part_is_the_host_net_file(kind, tmp_path):
    q = sdlm_qnet(kind, (5, 7, 3))
    ckpt.save(q.build(SDLM_HYPER), str(tmp_path))
    raw = (tmp_path / ckpt.NAME).read_bytes()
    assert raw[5] & ckpt.F_SDLM and not raw[5] & (ckpt.F_MOMENTUM | ckpt.F_ADAM)
    n = ebp.file_len(q.sizes, sdlm=True)
    assert raw[ckpt.HEAD:ckpt.HEAD + n] == ebpfile.board_part(q, SDLM_HYPER)
    # HW, HB (int16) of every parameter, n (u32), the CRC
    assert len(raw) == ckpt.HEAD + n + 2 * (7 * 6 + 3 * 8) + 4 + 2


@pytest.mark.parametrize("kind", ["ce", "bce", "mse"])
@pytest.mark.parametrize("at", [13, 15])
def test_sdlm_resumed_from_a_checkpoint_is_bit_exact(kind, at, tmp_path):
    # at 13 the checkpoint falls inside a sum (one sample pending: C was formed from it and
    # is not saved), at 15 on a sum's boundary
    q = sdlm_qnet(kind, (6, 9, 4), mu=0.05, gamma=0.1)
    X, T = make_data(q, 40)
    net = q.build(SDLM_HYPER)
    learn(net, X, T, range(at))
    assert net.count == at % 3 and net.opt.n == (at + 2) // 3
    ckpt.save(net, str(tmp_path), 5, at, at // 3)
    back = ckpt.load(*ckpt.find(str(tmp_path)))
    assert back.opt is not None and back.opt.curv and state(back) == state(net)
    assert not any(any(c) for c in back.opt.C)  # C starts again from nothing
    learn(net, X, T, range(at, 40))
    learn(back, X, T, range(at, 40))
    assert state(back) == state(net)
    # and it did learn, with an estimate of the curvature
    assert flat_weights(net) != flat_weights(q.build(SDLM_HYPER))
    assert any(any(h) for h in net.opt.HW)


def test_sdlm_checkpoint_before_the_first_sample(tmp_path):
    q = sdlm_qnet("ce", (3, 4, 2))
    X, T = make_data(q, 6)
    net = q.build(SDLM_HYPER)
    ckpt.save(net, str(tmp_path))
    back = ckpt.load(*ckpt.find(str(tmp_path)))
    assert back.opt.n == 0 and state(back) == state(net)
    learn(net, X, T, range(6))
    learn(back, X, T, range(6))
    assert state(back) == state(net)


def test_sdlm_session_resumes_after_resets_of_an_in_process_board(tmp_path):
    q = sdlm_qnet("ce", (6, 8, 3))
    X, T = make_data(q, 30)
    rng = np.random.default_rng(5)
    orders = [rng.permutation(len(X)) for _ in range(2)]
    with InProcessBoard(root=tmp_path) as board:
        st, W, B = _train_with_resets(board, board.reset, q, X, T, orders, [11, 47],
                                      SDLM_HYPER)
    _check(q, X, T, orders, W, B, st, SDLM_HYPER)


def test_sdlm_session_resumes_after_the_micropython_process_is_killed(tmp_path):
    require_runtime("unix")
    q = sdlm_qnet("mse", (5, 7, 2))
    X, T = make_data(q, 24)
    rng = np.random.default_rng(6)
    orders = [rng.permutation(len(X))]
    with MicroPythonBoard(root=tmp_path) as board:
        try:
            st, W, B = _train_with_resets(board, board.reset, q, X, T, orders, [9],
                                          SDLM_HYPER)
        except SessionError as e:
            if "no SDLM kernel" not in str(e):
                raise
            pytest.skip(f"this runtime's kernels have no SDLM kernels yet ({e})")
    _check(q, X, T, orders, W, B, st, SDLM_HYPER)


def _sdlm_checkpoint(tmp_path):
    """A checkpoint of an SDLM net (3-4-2, 26 parameters) with one sample pending: the raw
    file, the offsets of its HW and n, and the net."""
    q = sdlm_qnet("ce", (3, 4, 2))
    X, T = make_data(q, 9)
    net = q.build(Hyper(lr=0.02, batch=4))
    learn(net, X, T, range(9))
    assert net.count == 1 and net.opt.n == 3
    ckpt.save(net, str(tmp_path), 0, 9, 2)
    raw = (tmp_path / ckpt.NAME).read_bytes()
    h_at = ckpt.HEAD + ebp.file_len(q.sizes, sdlm=True)
    n_at = h_at + 2 * 26
    return raw, h_at, n_at, net


def _sdlm_mutations(raw, h_at, n_at):
    flags = raw[5]
    yield "no SDLM flag", _put(raw, 5, "B", flags & ~ckpt.F_SDLM), "no SDLM state"
    yield "SDLM and momentum", _put(raw, 5, "B", flags | ckpt.F_MOMENTUM), "momentum"
    yield "SDLM and Adam", _put(raw, 5, "B", flags | ckpt.F_ADAM), "state of two optimisers"
    yield "HW -1", _put(raw, h_at, "<h", -1), "SDLM curvature -1 outside 0..32767"
    yield "HB -32768", _put(raw, n_at - 2, "<h", -32768), "SDLM curvature"
    yield "n 2**30", _put(raw, n_at, "<I", 1 << 30), "sample count -1: beyond 2**30"
    yield "n 0 with a curvature", _put(raw, n_at, "<I", 0), "sample count 0: beyond 2**30, or"


def test_sdlm_fields_no_engine_writes_are_refused(tmp_path):
    raw, h_at, n_at, net = _sdlm_checkpoint(tmp_path)
    root = str(tmp_path)
    cur = tmp_path / ckpt.NAME
    for name, bad, words in _sdlm_mutations(raw, h_at, n_at):
        cur.write_bytes(bad)
        found = ckpt.find(root)
        assert found is not None, f"{name}: the CRC should match"
        with pytest.raises(ckpt.CheckpointError, match=re.escape(words)):
            ckpt.load(*found)
    # the bounds themselves are what the engine may write
    for ok in (_put(raw, h_at, "<h", 32767), _put(raw, h_at, "<h", 0),
               _put(raw, n_at, "<I", (1 << 30) - 1), _put(raw, n_at, "<I", 1)):
        cur.write_bytes(ok)
        assert ckpt.load(*ckpt.find(root)).opt.curv
    # n = 0 with every curvature 0: a net checkpointed before its first sample
    zero = raw[:h_at] + bytes(2 * 26) + raw[n_at:]
    cur.write_bytes(_put(zero, n_at, "<I", 0))
    assert ckpt.load(*ckpt.find(root)).opt.n == 0


def test_sdlm_state_for_a_net_without_sdlm_is_refused(tmp_path):
    q = make_qnet("ce", (3, 4, 2))
    ckpt.save(q.build(Hyper(lr=0.05)), str(tmp_path))
    raw = (tmp_path / ckpt.NAME).read_bytes()
    (tmp_path / ckpt.NAME).write_bytes(_put(raw, 5, "B", raw[5] | ckpt.F_SDLM))
    with pytest.raises(ckpt.CheckpointError, match="SDLM state for a net without SDLM"):
        ckpt.load(*ckpt.find(str(tmp_path)))
