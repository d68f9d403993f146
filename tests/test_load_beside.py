"""A board keeps its trained net while the next one loads: a load it refuses leaves that net,
a net that does not fit beside it is refused with the numbers, and the host, asked to load
the new net, then drops the old one on purpose and loads again."""

import pytest

from conftest import require_runtime
from edgebp import wire
from edgebp.host.boards.session import BoardInfo, Session, SessionError
from edgebp.host.boards.sim import InProcessBoard, MicroPythonBoard
from edgebp.host.nets import planner
from edgebp.host.nets.qnet import Hyper
from test_ebp import make_data, make_qnet

HYPER = Hyper(lr=0.05, batch=2)


def _spy_drop(monkeypatch, s, seen):
    # record each DROP the session sends, with the board's weights just before it
    real = Session.drop

    def drop(self):
        seen.append(self.get_weights() if self.info.sizes else None)
        real(self)

    monkeypatch.setattr(Session, "drop", drop)


def _same(a, b):
    return all((x == y).all() for x, y in zip(a[0] + a[1], b[0] + b[1], strict=True))


def test_a_net_too_big_to_load_beside_is_loaded_after_the_old_one_is_dropped(monkeypatch):
    big = (200, 16, 3)
    params = 16 * 201 + 3 * 17
    # room for one net of this size (6 bytes per parameter and more) and the server's
    # buffers (under 8 KiB with frames of 1024 bytes), not for two
    with InProcessBoard(heap=8192 + int(1.5 * 6 * params)) as board, Session(board.url) as s:
        first = make_qnet("ce", big)
        s.load(first, HYPER)
        X, T = make_data(first, 4)
        s.train(X, T)
        trained = s.get_weights()
        seen: list = []
        _spy_drop(monkeypatch, s, seen)
        # a small net fits beside it, and it beside the small one: no drop
        s.load(make_qnet("ce", (4, 5, 3)), HYPER)
        assert seen == [] and s.info.sizes == [4, 5, 3]
        s.load(first, HYPER)
        s.train(X, T)
        trained = s.get_weights()
        assert seen == []
        second = make_qnet("ce", big, seed=5)
        s.load(second, HYPER)
        # refused beside the trained net, which was still whole when the host dropped it
        assert len(seen) == 1 and _same(seen[0], trained)
        assert s.info.sizes == list(big)
        assert _same(s.get_weights(), (second.W, second.B))
        assert s.train(X, T).samples == 4


def test_a_net_too_big_even_alone_is_refused_and_the_old_one_kept(monkeypatch):
    # 400-16-3: 6467 parameters, 6 bytes each and more, beyond a 32 KiB budget
    with InProcessBoard(heap=32 * 1024) as board, Session(board.url) as s:
        small = make_qnet("ce", (4, 5, 3))
        s.load(small, HYPER)
        seen: list = []
        _spy_drop(monkeypatch, s, seen)
        with pytest.raises(SessionError, match="bytes of RAM") as caught:
            s.load(make_qnet("ce", (400, 16, 3)), HYPER)
        assert "\n" not in str(caught.value) and caught.value.code == wire.E_MEM
        # no room even without it: the board's net was not dropped for nothing
        assert seen == [] and _same(s.get_weights(), (small.W, small.B))


def _info(free, sizes=None):
    return BoardInfo(protocol=wire.PROTOCOL, credits=4, max_payload=512, free_ram=free,
                     firmware="", runtime="", board="", sizes=sizes,
                     loss=1 if sizes else None, word=4)


def test_the_plan_counts_the_board_net_held_while_loading():
    q = make_qnet("ce", (64, 32, 10))
    alone = planner.plan_for(q, _info(100_000))
    held = planner.plan([64, 16, 10], word=4, max_payload=512)
    beside_it = held.net + held.sample
    # plenty of room: loaded beside the board's net, against the free RAM as reported
    p = planner.plan_for(q, _info(100_000, [64, 16, 10]))
    assert (p.replaces, p.beside, p.free, p.need) == (False, beside_it, 100_000, alone.need)
    assert "stays loaded" in p.table()
    # room for it only once the board's net is gone: the host drops that one first
    free = alone.need + planner.DEFAULT_RESERVE - 1
    p = planner.check(q, _info(free, [64, 16, 10]))
    assert p.replaces and p.free == free + beside_it
    assert "dropped before this load" in p.table()
    # and no room even then
    with pytest.raises(planner.PlanError, match="bytes are free"):
        planner.check(q, _info(free - beside_it, [64, 16, 10]))


def test_a_micropython_board_refuses_a_second_net_that_does_not_fit_beside(monkeypatch):
    require_runtime("unix")
    hyper = Hyper(lr=0.01, momentum=0.5)

    def sized(hidden, seed=0):
        return make_qnet("ce", (32, hidden, 10), momentum=True, batch_max=4, seed=seed)

    # the board decides, not the planner (whose plan of two such nets may be more careful)
    monkeypatch.setattr(planner, "check", lambda qnet, info: None)
    with MicroPythonBoard(heapsize="256k") as board, Session(board.url, timeout=2) as s:
        free = s.info.free_ram
        # 55% of the free RAM each (10 bytes per parameter and more): one fits, not two
        hidden = int(0.55 * free / (10 * 43))
        first = sized(hidden)
        s.load(first, hyper)
        X, T = make_data(first, 6)
        s.train(X, T)
        trained = s.get_weights()
        seen: list = []
        _spy_drop(monkeypatch, s, seen)
        second = sized(hidden, seed=3)
        s.load(second, hyper)
        assert len(seen) == 1 and _same(seen[0], trained)
        assert _same(s.get_weights(), (second.W, second.B))
        assert s.train(X, T).samples == 6


def test_the_simulated_board_refuses_what_a_256_kib_board_would():
    # the header of one 4096x4096 layer: 96 MB of training state announced in 44 bytes
    head = bytes.fromhex("4542504e01010000010000000000000000000000000000002a20000200100c00"
                         "0010000c0c0c6466")
    with InProcessBoard() as board, Session(board.url) as s:
        s._request(wire.LOAD_BEGIN, (0x2000202A).to_bytes(4, "little"))
        with pytest.raises(Exception, match="bytes of RAM") as caught:
            s._request(wire.LOAD_CHUNK, bytes(4) + head)
        assert getattr(caught.value, "code", None) == wire.E_MEM
        # a net of 53 000 parameters (over 300 KB of training state at 6 bytes each) is
        # refused too, one of 3 300 is not
        with pytest.raises(SessionError, match="bytes of RAM"):
            s.load(make_qnet("ce", (400, 128, 16)), HYPER)
        s.load(make_qnet("ce", (200, 16, 3)), HYPER)
        assert s.info.sizes == [200, 16, 3]


def test_resume_drops_the_board_net_only_when_the_checkpoint_needs_its_room(tmp_path,
                                                                             monkeypatch):
    from edgebp import ckpt

    big = (200, 16, 3)
    params = 16 * 201 + 3 * 17
    saved = make_qnet("ce", big, seed=5)
    ckpt.save(saved.build(HYPER), str(tmp_path), 0, 0, 0)
    with InProcessBoard(heap=8192 + int(1.5 * 6 * params), root=tmp_path) as board, \
            Session(board.url) as s:
        seen: list = []
        _spy_drop(monkeypatch, s, seen)
        s.load(make_qnet("ce", (4, 5, 3)), HYPER)
        s.resume()  # beside the small net
        assert seen == [] and s.info.sizes == list(big)
        s.load(make_qnet("ce", big), HYPER)  # in place of the restored one: a drop
        seen.clear()
        s.resume()  # not beside a big one
        assert len(seen) == 1 and s.info.sizes == list(big)
        assert _same(s.get_weights(), (saved.W, saved.B))
