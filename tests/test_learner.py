"""The board-side learning API: the input map for raw integer inputs (host/nets/inmap.py, the
net file's input-map section), freezing layers (Net.freeze, the twin), and edgebp/learner.py
on every runtime (tests/device/test_learner_dev.py)."""

from __future__ import annotations

from array import array

import numpy as np
import pytest

from conftest import run_device_module
from edgebp import ckpt, ebp, fixed
from edgebp.host.nets import ebpfile, inmap
from edgebp.host.nets.inmap import InMapError, InputMap
from edgebp.host.nets.qnet import Hyper
from edgebp.host.nets.quantize import quantize
from edgebp.host.nets.spec import SpecError, init_float_weights, make_spec
from edgebp.host.nets.twin import TwinNet
from test_ebp import make_data, make_qnet

RAW_LO = [0, -32768, 1000, -5]
RAW_HI = [4095, 32767, 1100, 5]
HYPER = Hyper(lr=0.05, momentum=0.5, weight_decay=0.01, batch=2, rounding="stochastic",
              seed=5)


def raw_net(sizes=(4, 6, 3), lo=RAW_LO, hi=RAW_HI, act="tanh"):
    spec = make_spec(sizes=list(sizes), activations=[act, "softmax"], loss="softmax_ce",
                     input_range={"min": lo, "max": hi}, integer_inputs=True,
                     optimizer={"lr": HYPER.lr, "momentum": HYPER.momentum,
                                "weight_decay": HYPER.weight_decay, "batch": HYPER.batch,
                                "rounding": HYPER.rounding, "seed": HYPER.seed},
                     batch_max=2)
    Ws, Bs = init_float_weights(spec)
    return quantize(spec, Ws, Bs)


def float_gap(q, X):
    """(board x_q - float x_q, distance of the float's y + 1/2 from an integer)."""
    Xf = np.asarray(X, np.float64)
    y = (Xf - q.in_offset) * q.in_scale * 2.0 ** q.shift_a[0]
    frac = y + 0.5 - np.floor(y + 0.5)
    return (q.in_map.apply(X).astype(int) - q.float_quantize_inputs(X).astype(int),
            np.minimum(frac, 1 - frac))


# -- the input map --


@pytest.mark.parametrize("lo,hi", [(0, 4095), (-32768, 32767), (1000, 1100), (-5, 5),
                                   (0, 1), (-(2**16), 2**16 + 17), (123456, 123456 + 65535)])
def test_the_map_is_within_its_error_bound_of_the_float_quantisation(lo, hi):
    """Every raw value of the range: the board's x_q is the float's, or one off where the
    float's value lies within the stated bound of a rounding tie."""
    q = raw_net(sizes=(1, 3, 2), lo=[lo], hi=[hi])
    e = inmap.error_bound(q, q.in_map)[0]
    assert e < inmap.MAX_ERROR
    step = max(1, (hi - lo) // 200_000)
    X = np.arange(lo, hi + 1, step, dtype=np.int64)
    X = np.concatenate([X, [hi]]).reshape(-1, 1)
    diff, tie = float_gap(q, X)
    assert np.abs(diff).max() <= 1
    assert np.all(tie[diff != 0] <= e), "a mismatch away from a rounding tie"
    # both ends of the declared range reach the ends the float quantisation gives
    assert q.in_map.apply([[lo]])[0, 0] == q.float_quantize_inputs([[lo]])[0, 0] or e > 0


def test_raw_values_beyond_the_range_count_as_its_ends():
    q = raw_net()
    m = q.in_map
    X = np.array([[lo - 1000 for lo in RAW_LO], RAW_LO, [hi + 1000 for hi in RAW_HI], RAW_HI])
    Q = m.apply(X)
    assert np.array_equal(Q[0], Q[1]) and np.array_equal(Q[2], Q[3])


def test_the_range_proof_bounds_every_intermediate():
    q = raw_net()
    rows = inmap.prove(q.in_map)
    assert rows and all(b.ok for b in rows)
    # the proof's bounds are reached: the ends of the range give the extreme products
    m = q.in_map
    for i in range(m.n):
        prod = [b for b in rows if b.input == i and b.what == "(x - o) * m"][0]
        ends = sorted(((int(m.lo[i]) - int(m.o[i])) * int(m.m[i]),
                       (int(m.hi[i]) - int(m.o[i])) * int(m.m[i])))
        assert (prod.lo, prod.hi) == tuple(ends)
    bad = InputMap(*(np.array([v], np.int64) for v in (-100, 100, 0, 2**24, 0, 10)))
    with pytest.raises(InMapError, match="input 0"):
        inmap.prove(bad)
    assert "leave" in ebp.inmap_check(-100, 100, 0, 2**24, 0, 10)


def test_a_range_too_wide_for_the_map_is_refused():
    with pytest.raises(InMapError, match="input 0"):
        raw_net(sizes=(1, 3, 2), lo=[0], hi=[10**6])


def test_integer_inputs_need_an_integer_range():
    with pytest.raises(SpecError, match=r"input_range\.max"):
        make_spec(sizes=[2, 2], activations=["softmax"], loss="softmax_ce",
                  input_range={"min": 0, "max": 1.5}, integer_inputs=True)


# -- the file format --


def test_the_map_survives_the_file_and_a_checkpoint(tmp_path):
    q = raw_net()
    data = ebpfile.to_bytes(q, HYPER)
    back, hyper = ebpfile.from_bytes(data)
    assert back.in_map == q.in_map and hyper == HYPER
    net = ebp.load(ebpfile.board_part(q, HYPER))
    assert list(net.inmap.m) == q.in_map.m.tolist()
    ckpt.save(net, str(tmp_path))
    raw = (tmp_path / ckpt.NAME).read_bytes()
    part = ebpfile.board_part(q, HYPER)
    assert raw[ckpt.HEAD:ckpt.HEAD + len(part)] == part
    path, head = ckpt.find(str(tmp_path))
    assert list(ckpt.load(path, head).inmap.c) == q.in_map.c.tolist()


def test_files_without_a_map_still_load():
    q = make_qnet("ce", (4, 5, 3))
    data = ebpfile.board_part(q)
    assert len(data) == ebp.file_len(q.sizes)
    assert ebp.load(data).inmap is None and ebpfile.from_bytes(data)[0].in_map is None


def _section_at(q):
    return ebp.file_len(q.sizes) - 2


def test_a_damaged_map_is_refused_with_a_clear_error():
    q = raw_net()
    data = bytearray(ebpfile.board_part(q, HYPER))
    at = _section_at(q)
    for k in (0, 7, ebp.INMAP_REC * 4 - 1, ebp.INMAP_REC * 4 + 1):
        bad = bytearray(data)
        bad[at + k] ^= 0x04
        with pytest.raises(ebp.EbpError, match="input map"):
            ebp.load(bytes(bad))
    with pytest.raises(ebp.EbpError, match="truncated in the input map"):
        ld = ebp.Loader()
        ld.feed(data, 0, at + 30)
        ld.finish()


def test_a_map_outside_the_contract_is_refused_even_with_good_crcs():
    q = raw_net(sizes=(1, 3, 2), lo=[0], hi=[4095])
    q.in_map = InputMap(*(np.array([v], np.int64) for v in (0, 4095, 2047, 2**20, 0, 20)))
    with pytest.raises(ebp.EbpError, match="input map, input 0"):
        ebpfile.board_part(q, HYPER)  # the writer parses with the board's loader


# -- freezing: the core's definition and the twin --


@pytest.mark.parametrize("kind", ["ce", "bce", "mse"])
@pytest.mark.parametrize("frozen", [1, 2])
def test_a_frozen_core_net_equals_the_frozen_twin(kind, frozen):
    q = make_qnet(kind, (5, 7, 6, 3), momentum=True, batch_max=3)
    X, T = make_data(q, 20)
    hyper = Hyper(lr=0.05, momentum=0.5, weight_decay=0.01, batch=3, rounding="stochastic",
                  seed=9)
    core = q.build(hyper)
    tw = TwinNet.from_qnet(q, hyper)
    for i in range(4):  # a pending batch when freezing: its sums of the frozen layers go
        core.learn(array("h", X[i].tolist()), array("h", T[i].tolist()))
        tw.learn(X[i], T[i])
    core.freeze(frozen)
    tw.freeze(frozen)
    below = [list(core.W[l]) + list(core.B[l]) for l in range(frozen)]
    for i in range(4, 20):
        core.learn(array("h", X[i].tolist()), array("h", T[i].tolist()))
        tw.learn(X[i], T[i])
    core.update()
    tw.update()
    assert [list(core.W[l]) + list(core.B[l]) for l in range(frozen)] == below
    for l in range(core.L):
        assert list(core.W[l]) == tw.W[l].ravel().tolist(), f"layer {l + 1} weights"
        assert list(core.B[l]) == tw.B[l].tolist()
        assert list(core.VW[l]) == tw.VW[l].ravel().tolist(), f"layer {l + 1} momentum"
    assert core.rng[0] == tw.rng[0] and core.seen == tw.seen and core.loss_sum == tw.loss_sum


def test_freezing_every_layer_is_refused():
    net = make_qnet("ce", (4, 5, 3)).build()
    with pytest.raises(ValueError, match="learns nothing"):
        net.freeze(2)


# -- the learner on every runtime --


def _flat(tw):
    return tw.theta.astype(int).tolist()


def fixture_source() -> str:
    q = raw_net()
    rng = np.random.default_rng(3)
    n, held = 24, 8
    lo, hi = np.array(RAW_LO), np.array(RAW_HI)
    span = hi - lo
    X = rng.integers(lo - span // 10, hi + span // 10 + 1, (n + held, 4))
    T = rng.integers(0, 3, n + held)
    Xq = q.in_map.apply(X)
    tw = TwinNet.from_qnet(q, HYPER)
    for s in range(n):
        tw.learn(Xq[s], [T[s]])
    final = _flat(tw)
    out = tw.outputs(Xq[n:])
    ev = tw.evaluate(Xq[n:], T[n:].reshape(-1, 1))
    frozen = TwinNet.from_qnet(q, HYPER)
    frozen.freeze(1)
    for s in range(n):
        frozen.learn(Xq[s], [T[s]])
    o = q.in_map.o
    edges = []
    for i in range(4):
        for v in (lo[i], hi[i], lo[i] - 1, hi[i] + 1, lo[i] - 5000, hi[i] + 5000, o[i],
                  o[i] + 1):
            row = list(lo)
            row[i] = v
            edges.append(row)
    edges_a = np.array(edges)
    plain = make_qnet("ce", (4, 5, 3))
    return "\n".join([
        f"NET = {ebpfile.board_part(q, HYPER)!r}",
        f"PLAIN = {ebpfile.board_part(plain)!r}",
        f"MAP_AT = {_section_at(q)}",
        f"MAP_M = {q.in_map.m.tolist()!r}",
        "N_IN = 4",
        "N_OUT = 3",
        f"N = {n}",
        f"N_HELD = {held}",
        f"BATCH = {HYPER.batch}",
        "EVERY = 3",
        "CUT = 17",
        f"X = {X.ravel().tolist()!r}",
        f"T = {T.tolist()!r}",
        f"FINAL = {final!r}",
        f"FINAL_FROZEN = {_flat(frozen)!r}",
        f"OUT = {out.ravel().astype(int).tolist()!r}",
        f"PRED = {out.argmax(axis=1).tolist()!r}",
        f"EVAL = {(held, int(ev.correct.sum()), int(ev.loss.sum()))!r}",
        f"EDGE_X = {edges_a.ravel().tolist()!r}",
        f"EDGE_Q = {q.in_map.apply(edges_a).ravel().astype(int).tolist()!r}",
    ]) + "\n"


def test_the_host_quantises_integer_inputs_through_the_map():
    """What the host sends the training server for a net with integer inputs is what the
    board's learner makes of the same raw integers."""
    q = raw_net()
    X = np.array([[0, -32768, 1000, -5], [4095, 32767, 1100, 5], [17, 3, 1033, 2]])
    assert np.array_equal(q.quantize_inputs(X), q.in_map.apply(X))
    with pytest.raises(ValueError, match="integer"):
        q.quantize_inputs(X + 0.5)


def test_fixture_edges_agree_with_the_float_quantisation():
    q = raw_net()
    lo, hi = np.array(RAW_LO), np.array(RAW_HI)
    X = np.array([lo, hi, (lo + hi) // 2])
    diff, _ = float_gap(q, X)
    assert np.abs(diff).max() <= 1


def test_learner_on_the_device(runtime):
    run_device_module(runtime, "tests/device/test_learner_dev.py",
                      extra_files={"learner_fixture.py": fixture_source()}, timeout=300)


def test_fixed_codes_are_what_the_fixture_assumes():
    assert raw_net().loss == fixed.SOFTMAX_CE


# -- the README's board program, taken from the README and run unchanged --

README = __import__("pathlib").Path(__file__).resolve().parent.parent / "README.md"
N_RUN1, N_RUN2, N_HELD = 30, 20, 12


def readme_program() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Learning on the board"):]
    start = section.index("```python\n") + len("```python\n")
    return section[start:section.index("```\n", start)]


def readme_data():
    """A net of raw integer inputs and samples of three classes, clusters in raw units."""
    q = raw_net()
    rng = np.random.default_rng(11)
    lo, hi = np.array(RAW_LO), np.array(RAW_HI)
    centres = lo + (hi - lo) * np.array([[0.2], [0.5], [0.8]])
    n = N_RUN1 + N_RUN2 + N_HELD
    T = rng.integers(0, 3, n)
    X = np.rint(centres[T] + rng.normal(0, 0.15, (n, 4)) * (hi - lo)).astype(np.int64)
    return q, X, T


SENSOR = """
# the program's sensor, replayed: the first run gets samples FIRST, the one after a reset REST
import os

X = {X!r}
T = {T!r}
N_IN = {n_in}
try:
    os.stat("sensor_phase")
    LO, HI = {n1}, {n12}
except OSError:
    LO, HI = 0, {n1}
    with open("sensor_phase", "w") as f:
        f.write("1")
_i = LO


def read(x):
    global _i
    if _i >= HI:
        return False
    for k in range(N_IN):
        x[k] = X[_i * N_IN + k]
    _i += 1
    return True


def label():
    return T[_i - 1]


def held_out():
    for j in range({n12}, {n}):
        yield [X[j * N_IN + k] for k in range(N_IN)], T[j]
"""

# the weights the checkpoint holds at the end, printed by a script of the test's own
WEIGHTS = """
from edgebp import ckpt
p, h = ckpt.find()
net = ckpt.load(p, h, __import__("edgebp.kernels").kernels)
w = []
for l in range(net.L):
    w += list(net.W[l]) + list(net.B[l])
print("WEIGHTS", w)
"""

CLEAN = """
import os
for f in ("ckpt.ebp", "ckpt.new", "sensor_phase"):
    try:
        os.remove(f)
    except OSError:
        pass
"""

# on a host runtime a run is a process of its own with a fresh directory: the reset is a
# fresh import of every module, within one process
HOST_TWICE = """
import os, sys
os.chdir(sys.path[0] or ".")  # where the files are (the WebAssembly port starts at /)
with open("readme_main.py") as f:
    src = f.read()
exec(src, {"__name__": "__main__"})
for m in list(sys.modules):
    if m.startswith("edgebp") or m == "sensor":
        del sys.modules[m]
print("RESET")
exec(src, {"__name__": "__main__"})
""" + WEIGHTS


def test_the_readme_program_runs_unchanged_across_a_reset(runtime):
    from conftest import DEVICE  # noqa: F401  (the runner's files come from there)
    from edgebp.host.boards import mprun

    q, X, T = readme_data()
    n1, n12, n = N_RUN1, N_RUN1 + N_RUN2, N_RUN1 + N_RUN2 + N_HELD
    sensor = SENSOR.format(X=X.ravel().tolist(), T=T.tolist(), n_in=4, n1=n1, n12=n12, n=n)
    program = readme_program()
    files = {**mprun.core_files(False), "sensor.py": sensor,
             "net.ebp": ebpfile.board_part(q, HYPER)}
    # what the twin reaches learning every labelled sample in one go
    Xq = q.in_map.apply(X)
    tw = TwinNet.from_qnet(q, HYPER)
    for s in range(n12):
        tw.learn(Xq[s], [T[s]])
    ev = tw.evaluate(Xq[n12:], T[n12:].reshape(-1, 1))
    expect_end = (f"learned {n12} samples; held out: {int(ev.correct.sum())} of {N_HELD} "
                  "right")

    def run(script, extra=None):
        r = mprun.run(runtime, script, {**files, **(extra or {})}, timeout=300)
        assert r.ok, f"{runtime}: {r.stdout[-3000:]}\n{r.stderr[-2000:]}"
        return r.stdout

    if runtime in mprun.BOARDS:
        run(CLEAN)
        try:
            first = run(program)
            second = run(program)
            weights = run(WEIGHTS)
        finally:
            run(CLEAN)  # the board is shared with the modules after this one
    else:
        out = run(HOST_TWICE, {"readme_main.py": program})
        first, rest = out.split("RESET\n")
        second, weights = rest, rest
    assert "restored" not in first
    assert f"learned {n1} samples" in first
    assert f"restored after {n1} samples" in second, second
    assert expect_end in second, second
    line = [ln for ln in weights.splitlines() if ln.startswith("WEIGHTS")][-1]
    assert eval(line[len("WEIGHTS "):]) == _flat(tw), "the board's weights are not the twin's"


# -- edgebp deploy --infer / --learner, end to end on an emulated board --


PREDICT_SCRIPT = """
import gc, os
from array import array
from edgebp.learner import Learner
ln = Learner("net.ebp")
out = array("h", [0] * ln.n_out)
print("PRED", [ln.predict(x, out) for x in {rows!r}])
print("FILES", sorted(os.listdir("edgebp")), "firmware" in os.listdir("edgebp"))
try:
    ln.checkpoint()
    print("CKPT yes")
except ImportError:
    print("CKPT no")
"""


def test_deploy_infer_then_learner_on_an_emulated_board(tmp_path, capsys):
    from conftest import require_runtime
    from edgebp.host.boards import board as mb, qemu
    from edgebp.host.cli import parser as cli

    require_runtime("cortex-m3")
    q, X, T = readme_data()
    net = tmp_path / "net.ebp"
    ebpfile.write(net, q, HYPER)
    rows = X[:6].tolist()
    expect = TwinNet.from_qnet(q, HYPER).outputs(q.in_map.apply(X[:6])).argmax(axis=1).tolist()
    with qemu.QemuBoard("cortex-m3", flash=tmp_path / "board.flash") as board:

        def deploy(*flags):
            assert cli.main(["deploy", "--port", board.port, *flags]) == 0
            return capsys.readouterr().out

        out = deploy("--infer", "--put", str(net))
        assert "net.ebp" in out and "written, verified" in out
        code, text, _ = qemu.run_on(board, PREDICT_SCRIPT.format(rows=rows), {}, 120)
        assert code == 0, text
        assert f"PRED {expect}" in text
        files = eval(text.split("FILES ")[1].split("] ")[0] + "]")
        assert files == sorted([p.split("/")[1][:-3] + ".mpy" for p in mb.PREDICT
                                if p in mb.device_sources()]
                               + ["adam_native.mpy", "kernels_native.mpy", "sdlm_native.mpy"])
        assert "CKPT no" in text  # the checkpoints were left off
        # --learner adds what checkpoints need, still no server and no wire codec
        out = deploy("--learner", "--put", str(net))
        assert "ckpt.mpy" in out and "wire" not in out and "server" not in out
        code, text, _ = qemu.run_on(board, PREDICT_SCRIPT.format(rows=rows), {}, 120)
        assert code == 0 and "CKPT yes" in text and f"PRED {expect}" in text, text
    # a full deploy's options do not mix with a learner's
    assert cli.main(["deploy", "--infer", "--net", str(net), "--dry-run", "--arch", "armv7m"]) == 2
    assert capsys.readouterr().err.startswith("edgebp: --net checks")


def test_the_heap_bench_prints_its_table_on_the_unix_port():
    from conftest import require_runtime
    from edgebp.host.bench import learner as bench

    require_runtime("unix")
    h = bench.heap("unix", bench.digits_net())
    for kset in bench.SETS:
        # what --infer installs takes least, the training server most
        assert h[(kset, "predict")] < h[(kset, "learn")] < h[(kset, "server")], kset
    text = bench.heap_table("unix", h)
    assert "predict (--infer)" in text and "native" in text


def test_init_and_quantize_a_net_for_raw_sensor_integers(tmp_path, capsys):
    """`edgebp init --data raw.csv --integer-inputs`, then quantize: the net file carries the
    input map for the raw range of the data."""
    from edgebp.host.cli import parser as cli

    rng = np.random.default_rng(2)
    X = np.stack([rng.integers(0, 4096, 40), rng.integers(-500, 501, 40)], axis=1)
    y = (X[:, 0] > 2048).astype(int)
    csv = tmp_path / "raw.csv"
    rows = "".join(f"{a},{b},{c}\n" for (a, b), c in zip(X, y, strict=True))
    csv.write_text("adc,accel,label\n" + rows)
    spec, net = tmp_path / "raw.json", tmp_path / "raw.ebp"
    assert cli.main(["init", str(spec), "--data", str(csv), "--integer-inputs"]) == 0
    d = __import__("json").loads(spec.read_text())
    assert d["integer_inputs"] is True
    lo, hi = d["input_range"]["min"], d["input_range"]["max"]
    assert all(float(v).is_integer() for v in np.ravel([lo, hi]))
    assert cli.main(["quantize", str(spec), "-o", str(net)]) == 0
    capsys.readouterr()
    q, _ = ebpfile.read(net)
    assert q.in_map is not None
    assert q.in_map.lo.tolist() == np.broadcast_to(lo, (2,)).tolist()
    diff, _ = float_gap(q, X)
    assert np.abs(diff).max() <= 1
