"""RAM on the emulated microcontrollers (host/boards/qemu.py: a 192 KiB heap), through the
firmware deployed as on a USB board and sessions over the board's pseudo-terminal.

What `edgebp plan` accepts loads and trains there, and the next size up is refused by the
plan, with its numbers, before a byte of the net is sent; the plan's figure is the real
limit, not a guess below it. Ten sessions in a row, some refused, leave the board's free RAM
where the first found it. A load refused by the host or by the board leaves the board at its
REPL, where mpremote gets a raw REPL at once.

One board per kind for the whole module (an idle board keeps a host core busy), stopped at
the end; without $EDGEBP_QEMU_BOARDS the tests skip (in CI they fail).
"""

from __future__ import annotations

import pytest

from conftest import require_runtime
from edgebp.host.boards import board as mb
from edgebp.host.boards.qemu import KINDS, QemuBoard
from edgebp.host.boards.session import Session, SessionError
from edgebp.host.nets import planner
from edgebp.host.nets.qnet import Hyper
from test_ebp import make_data, make_qnet

TIMEOUT = 5.0  # per answer; a board under qemu on a busy host is slow at times


@pytest.fixture(scope="module", params=KINDS)
def port(request, tmp_path_factory):
    """A freshly flashed emulated board of each kind with edgebp deployed, then powered off
    and on (a board's heap as its user finds it), at its REPL prompt."""
    kind = request.param
    require_runtime(kind)
    flash = tmp_path_factory.mktemp(kind) / "board.flash"
    with QemuBoard(kind, flash=flash) as b:
        with mb.Board(b.port) as repl:
            report = mb.deploy(repl, mb.plan_deploy(repl.facts().arch), log=lambda *a: None)
        assert report.written
        b.kill()
        b.boot()
        yield b.port


def net(hidden: int, momentum: bool):
    return make_qnet("ce", (64, hidden, 10), momentum=momentum)


def hyper(momentum: bool) -> Hyper:
    return Hyper(lr=0.01, momentum=0.5 if momentum else 0.0)


def largest_accepted(info, momentum: bool) -> int:
    """The widest hidden layer of a 64-H-10 net that the plan accepts on this board."""

    def accepted(hidden):
        try:
            planner.check(net(hidden, momentum), info)
        except planner.PlanError:
            return False
        return True

    lo, hi = 1, 1024
    assert accepted(lo) and not accepted(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if accepted(mid) else (lo, mid)
    return lo


def repl_answers(port: str) -> bool:
    """mpremote's raw REPL at once, and code runs there."""
    with mb.Board(port) as b:
        return b.exec("print(6 * 7)").strip() == b"42"


@pytest.mark.parametrize("momentum", [False, True], ids=["sgd", "momentum"])
def test_the_largest_net_the_plan_accepts_trains_and_the_next_is_refused(port, momentum):
    # the next size up: refused by the plan with its numbers, before the net is sent
    with Session(port, start=True, timeout=TIMEOUT) as s:
        info = s.info
        # the board reports what the plan needs: its heap's word, its largest free blocks
        # (one big one: the firmware packs its modules), the kernels its nets run
        assert info.word == 4 and info.kernels == "native"
        assert len(info.holes) > 1 and info.holes[0] > info.free_ram // 2
        hidden = largest_accepted(info, momentum)
        counters = s.link.counters
        frames = counters.frames
        with pytest.raises(SessionError) as refused:
            s.load(net(hidden + 1, momentum), hyper(momentum))
        message = str(refused.value)
        assert message.startswith(f"load: net 64-{hidden + 1}-10 needs ")
        assert "leave no room" in message or "bytes are free" in message
        assert counters.frames == frames + 1  # the BYE that ended the session: no net sent
    assert repl_answers(port)
    print(f"\n{port}: free {info.free_ram} B, largest blocks {info.holes[:3]}: 64-{hidden + 1}-10"
          f"{' with momentum' if momentum else ''} refused: {message}")

    # the largest it accepts: loads and trains
    with Session(port, start=True, timeout=TIMEOUT) as s:
        info = s.info
        hidden = largest_accepted(info, momentum)
        q = net(hidden, momentum)
        p = planner.plan_for(q, info)
        s.load(q, hyper(momentum))
        X, T = make_data(q, 8)
        assert s.train(X, T).samples == 8
        assert s.evaluate(X, T).samples == 8
        assert s.bye()
    print(f"{port}: free {info.free_ram} B, largest blocks {info.holes[:3]}: 64-{hidden}-10"
          f"{' with momentum' if momentum else ''} accepted and trained, {p.need} B at the "
          f"peak of its load")

    # The plan is the limit: without it, a net a twentieth wider than the widest it accepts
    # (needing at most 5% more) does not fit the board either.
    bigger = net(hidden + max(1, hidden // 20), momentum)
    with Session(port, start=True, timeout=TIMEOUT) as s, pytest.MonkeyPatch.context() as mp:
        assert planner.plan_for(bigger, s.info).need <= 1.05 * p.need
        mp.setattr(planner, "check", lambda qnet, info: None)
        with pytest.raises(SessionError, match="out of memory"):
            s.load(bigger, hyper(momentum))
    assert repl_answers(port)  # a load the board refused: its REPL is back too


def test_ten_sessions_leave_the_free_ram_where_it_was(port):
    frees = []
    largest = []
    for i in range(10):
        with Session(port, start=True, timeout=TIMEOUT) as s:
            frees.append(s.info.free_ram)
            largest.append(s.info.holes[0])
            momentum = i % 2 == 1
            q = net(16 + 8 * (i % 3), momentum)
            if i % 4 == 3:
                with pytest.raises(SessionError):  # refused by the host: the session ends
                    s.load(net(2000, momentum), hyper(momentum))
                continue
            s.load(q, hyper(momentum))
            X, T = make_data(q, 16, seed=i)
            s.train(X, T)
            s.evaluate(X, T)
            s.get_weights()
            if i % 3 == 2:
                s.checkpoint()
            assert s.bye()
    with Session(port, start=True, timeout=TIMEOUT) as s:
        frees.append(s.info.free_ram)
        largest.append(s.info.holes[0])
        assert s.bye()
    print(f"{port}: free RAM at the start of each session {frees}; largest block {largest}")
    assert max(abs(f - frees[0]) for f in frees) <= 1024, frees
    assert repl_answers(port)


def test_a_load_refused_by_the_host_leaves_the_repl_reachable(port):
    with Session(port, start=True, timeout=TIMEOUT) as s:
        with pytest.raises(SessionError, match="needs"):
            s.load(net(4000, True), hyper(True))
        assert s.link is None  # the session ended with the refusal
    assert repl_answers(port)
    with Session(port, start=True, timeout=TIMEOUT) as s:
        with pytest.raises(SessionError, match="hold 512 bytes"):  # one sample too big
            s.load(make_qnet("ce", (300, 4, 3)), hyper(False))
    assert repl_answers(port)
