"""The memory planner against MicroPython's own count, gc.mem_alloc(), and against a board
with a fixed heap: what it refuses would not have fitted, what it accepts trains."""

import pytest

from conftest import require_runtime
from edgebp.host.boards import heap
from edgebp.host.boards.session import Session, SessionError
from edgebp.host.boards.sim import InProcessBoard, MicroPythonBoard
from edgebp.host.nets import ebpfile, planner
from edgebp.host.nets.qnet import Hyper, adam_q, sdlm_q
from test_ebp import make_data, make_qnet

# (kind, sizes, momentum): one layer to eight, narrow to wide, every loss
NETS = [
    ("ce", (2, 2, 2), False),
    ("mse", (4, 8, 3), True),
    ("ce", (64, 32, 10), False),
    ("ce", (64, 32, 10), True),
    ("bce", (16, 16, 16, 4), True),
    ("mse", (2, 3, 4, 5, 6, 7, 8, 9, 10), False),
]


def test_plan_matches_gc_mem_alloc(runtime):
    """On every MicroPython (the emulated boards too, their heap fixed at 192 KiB): the net as
    loaded, and the load at its peak, as gc.mem_alloc() counts them (host/boards/heap.py)."""
    if runtime == "cpython":
        pytest.skip("CPython has no MicroPython heap to measure")
    rows = []
    for kind, sizes, momentum in NETS:
        q = make_qnet(kind, sizes, momentum=momentum)
        data = ebpfile.board_part(q, Hyper(lr=0.01, momentum=0.5 if momentum else 0.0))
        use = heap.measure_load(runtime, data)
        p = planner.plan(sizes, momentum=momentum, loss=q.loss, word=use.word,
                         fused=use.kernels == "native")
        rows.append((sizes, momentum, use, p.net, p.need))
        assert abs(use.net - p.net) <= 0.05 * p.net, rows
        # everything the load allocates, garbage included: the heap's high-water mark
        assert abs(use.peak - p.need) <= 0.05 * p.need, rows
        if use.live is not None:
            # live at the end of the load, the loader still held: the least the peak can be
            live = p.net + p.sample + p.loader
            assert abs(use.live - live) <= 0.05 * live and use.live <= use.peak, rows


# (kind, sizes) of nets with Adam
ADAM_NETS = [("ce", (2, 2, 2)), ("mse", (4, 8, 3)), ("ce", (64, 32, 10)),
             ("bce", (16, 16, 16, 4))]


def test_adam_plan_matches_gc_mem_alloc(runtime):
    """With Adam too: its moments beside the net, as gc.mem_alloc() counts them."""
    if runtime == "cpython":
        pytest.skip("CPython has no MicroPython heap to measure")
    rows = []
    for kind, sizes in ADAM_NETS:
        q = make_qnet(kind, sizes)
        q.adam = adam_q()
        try:
            use = heap.measure_load(runtime, ebpfile.board_part(q, Hyper(lr=0.01)))
        except RuntimeError as e:
            if "no Adam kernel" in str(e):
                pytest.skip("this runtime's kernels have no Adam kernel yet")
            raise
        # measured after a warm-up load: edgebp.adam already imported
        p = planner.plan(sizes, loss=q.loss, word=use.word, fused=use.kernels == "native",
                         adam=True, adam_imported=True)
        sgd = planner.plan(sizes, loss=q.loss, word=use.word, fused=use.kernels == "native")
        rows.append((sizes, use, p.net, p.need))
        assert abs(use.net - p.net) <= 0.05 * p.net, rows
        assert abs(use.peak - p.need) <= 0.05 * p.need, rows
        # M and V: 8 bytes a parameter, and a little for their lists and the Adam object
        assert 8 * p.params <= p.net - sgd.net <= 8 * p.params + 64 * len(sizes) * use.word + 512


def test_the_adam_module_costs_what_the_plan_counts(runtime):
    """The first Adam load imports edgebp.adam: the plan counts its code (ADAM_CODE), at
    least what it takes and not much more."""
    if runtime in ("cpython", "wasm"):
        pytest.skip("no MicroPython heap whose collection frees garbage to measure")
    used, word = heap.measure_import(runtime, "edgebp.adam")
    counted = planner.plan([4, 4, 2], adam=True, word=word, fused=False).code
    assert used <= counted <= 1.3 * used + 256, (used, counted)
    # with the native kernels, Adam's native module too (ADAM_NATIVE_CODE)
    native, _ = heap.measure_import(runtime, "edgebp.adam_native")
    extra = planner.plan([4, 4, 2], adam=True, word=word).code - counted
    assert native <= extra <= 1.3 * native + 256, (native, extra)
    assert planner.plan([4, 4, 2], adam=True, word=word, adam_imported=True).code == 0
    assert planner.plan([4, 4, 2], word=word).code == 0


# (kind, sizes) of nets with SDLM: one layer to eight
SDLM_NETS = [("ce", (2, 2, 2)), ("mse", (4, 8, 3)), ("ce", (64, 32, 10)),
             ("bce", (16, 16, 16, 4)), ("mse", (3, 5)), ("mse", (2, 3, 4, 5, 6, 7, 8, 9, 10))]


def test_sdlm_plan_matches_gc_mem_alloc(runtime):
    """With SDLM too: its curvatures and lists beside the net, as gc.mem_alloc() counts
    them."""
    if runtime == "cpython":
        pytest.skip("CPython has no MicroPython heap to measure")
    rows = []
    for kind, sizes in SDLM_NETS:
        q = make_qnet(kind, sizes)
        L = len(sizes) - 1
        q.sdlm = sdlm_q(0.1, 0.05, [12] * (L - 1) + [14], [9] * L)
        try:
            use = heap.measure_load(runtime, ebpfile.board_part(q, Hyper(lr=0.01)))
        except RuntimeError as e:
            if "no SDLM kernel" in str(e):
                pytest.skip("this runtime's kernels have no SDLM kernels yet")
            raise
        # measured after a warm-up load: edgebp.sdlm already imported
        p = planner.plan(sizes, loss=q.loss, word=use.word, fused=use.kernels == "native",
                         sdlm=True, sdlm_imported=True)
        sgd = planner.plan(sizes, loss=q.loss, word=use.word, fused=use.kernels == "native")
        rows.append((sizes, use, p.net, p.need))
        assert abs(use.net - p.net) <= 0.05 * p.net, rows
        assert abs(use.peak - p.need) <= 0.05 * p.need, rows
        # HW, HB: 2 bytes a parameter, C 2 a unit, and a little for the lists and the object
        assert 2 * p.params <= p.net - sgd.net <= 2 * p.params + 64 * len(sizes) * use.word + 512


def test_the_sdlm_module_costs_what_the_plan_counts(runtime):
    """The first SDLM load imports edgebp.sdlm: the plan counts its code (SDLM_CODE), at
    least what it takes and not much more."""
    if runtime in ("cpython", "wasm"):
        pytest.skip("no MicroPython heap whose collection frees garbage to measure")
    used, word = heap.measure_import(runtime, "edgebp.sdlm")
    counted = planner.plan([4, 4, 2], sdlm=True, word=word, fused=False).code
    assert used <= counted <= 1.3 * used + 256, (used, counted)
    # with the native kernels, SDLM's native module too (SDLM_NATIVE_CODE)
    native, _ = heap.measure_import(runtime, "edgebp.sdlm_native")
    extra = planner.plan([4, 4, 2], sdlm=True, word=word).code - counted
    assert native <= extra <= 1.3 * native + 256, (native, extra)
    assert planner.plan([4, 4, 2], sdlm=True, word=word, sdlm_imported=True).code == 0


def test_plan_command_counts_sdlm(capsys):
    from edgebp.host import cli

    assert cli.main(["plan", "--sizes", "64,32,10", "--sdlm"]) == 0
    out = capsys.readouterr().out
    p = planner.plan([64, 32, 10], sdlm=True)
    assert "with SDLM" in out and "SDLM curvatures C, HW, HB (int16)" in out
    assert "edgebp.sdlm code (first SDLM load)" in out and str(p.net) in out
    assert p.net >= planner.plan([64, 32, 10]).net + 2 * p.params + 2 * (32 + 10)
    for flags, words in ((["--momentum"], "SDLM takes the place of momentum"),
                         (["--adam"], "a net has one optimiser")):
        assert cli.main(["plan", "--sizes", "4,4,2", "--sdlm", *flags]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err


def test_plan_of_an_sdlm_net_file(tmp_path, capsys):
    from edgebp.host import cli

    q = make_qnet("ce", (8, 6, 3))
    q.sdlm = sdlm_q(0.1, 0.05, [12, 14], [9, 9])
    net = tmp_path / "n.ebp"
    ebpfile.write(net, q, Hyper(lr=0.01))
    assert cli.main(["plan", "--net", str(net)]) == 0
    out = capsys.readouterr().out
    assert "with SDLM" in out and planner.plan_for(q).sdlm


def test_training_state_against_the_minimum():
    p = planner.plan([64, 32, 10], momentum=True)
    assert p.minimum == 2 * (64 * 32 + 32 + 32 * 10 + 10)
    # int16 weights and biases, int32 gradient sums and momentum: 10 bytes per parameter
    assert p.net >= 5 * p.minimum
    text = p.table()
    for words in ("weights W", "gradient sums", "momentum", "activations", "theoretical minimum"):
        assert words in text


def _sized(hidden):
    return make_qnet("ce", (32, hidden, 10), momentum=True, batch_max=4)


def test_what_the_planner_refuses_the_board_cannot_hold(monkeypatch):
    require_runtime("unix")
    hyper = Hyper(lr=0.01, momentum=0.5)
    # 176k: at 160k the server, with SDLM in its loader and checkpoints, no longer answers
    # HELLO (probing the heap's holes runs out of room)
    with MicroPythonBoard(heapsize="176k") as board, Session(board.url, timeout=2) as s:
        info = s.info
        assert info.word in (4, 8) and info.holes == sorted(info.holes, reverse=True)

        def refusal(hidden):
            try:
                planner.check(_sized(hidden), info)
            except planner.PlanError as e:
                return str(e)
            return None

        limit = min(h for h in range(8, 1024, 8) if refusal(h))
        # the heap is fragmented by the modules loaded: a net whose total fits the free RAM
        # finds no block for its biggest tensor
        assert planner.plan_for(_sized(limit), info).need < info.free_ram
        assert "leave no room" in refusal(limit)
        assert "bytes are free" in refusal(8 * limit)
        for hidden in (2 * limit, 8 * limit):
            with pytest.raises(SessionError, match="needs"):
                s.load(_sized(hidden), hyper)
            # without the planner the board refuses it too, or runs out of memory building it
            monkeypatch.setattr(planner, "check", lambda qnet, info: None)
            with pytest.raises(SessionError, match="out of memory|bytes of RAM"):
                s.load(_sized(hidden), hyper)
            monkeypatch.undo()
        q = _sized(limit // 2)
        s.load(q, hyper)
        X, T = make_data(q, 8)
        assert s.train(X, T).samples == 8


def test_a_board_without_a_micropython_heap_is_not_planned_against():
    with InProcessBoard() as board, Session(board.url) as s:
        assert s.info.word == 0 and s.info.free_ram == 0
        s.load(make_qnet("ce", (4, 8, 3)), Hyper(lr=0.01))
        assert s.info.sizes == [4, 8, 3]


# -- edgebp plan --


def test_plan_command_prints_the_planners_figures(tmp_path, capsys):
    from edgebp.host.cli import parser as cli

    assert cli.main(["plan", "--sizes", "64,32,10", "--momentum"]) == 0
    out = capsys.readouterr().out
    p = planner.plan([64, 32, 10], momentum=True)
    assert "net, total" in out and f"{p.net:8d} B" in out and f"{p.minimum:8d} B" in out

    q = make_qnet("ce", (64, 32, 10))
    net = tmp_path / "n.ebp"
    ebpfile.write(net, q, Hyper(lr=0.01))
    assert cli.main(["plan", "--net", str(net), "--sim", "micropython"]) == 0
    out = capsys.readouterr().out
    assert "board free RAM" in out and ": fits" in out


def test_plan_command_says_when_a_net_does_not_fit(tmp_path, capsys):
    from edgebp.host.cli import parser as cli

    q = make_qnet("ce", (256, 256, 10), momentum=True)
    net = tmp_path / "big.ebp"
    ebpfile.write(net, q, Hyper(lr=0.01, momentum=0.5))
    with MicroPythonBoard(heapsize="176k") as board:
        Session(board.url, connect_timeout=30).close()  # its server is up and serving
        code = cli.main(["plan", "--net", str(net), "--port", board.url])
    out = capsys.readouterr().out
    assert code == 1 and "does NOT fit" in out


def test_plan_command_counts_adam(capsys):
    from edgebp.host import cli

    assert cli.main(["plan", "--sizes", "64,32,10", "--adam"]) == 0
    out = capsys.readouterr().out
    p = planner.plan([64, 32, 10], adam=True)
    assert "with Adam" in out and "Adam moments M, V (int32)" in out
    assert f"net, total {p.net:>19d} B" in " ".join(out.split("  ")) or str(p.net) in out
    assert p.net > planner.plan([64, 32, 10]).net + 8 * p.params
    assert cli.main(["plan", "--sizes", "4,4,2", "--adam", "--momentum"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Adam takes the place of momentum" in err
