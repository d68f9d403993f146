"""The native kernels (edgebp/native/kernels.c as MicroPython native modules): built from the
source as committed, bit-identical to the pure kernels on x64 and both emulated boards, chosen
first by kern.select() where they load, and deployed for the board's architecture."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from combos import all_cases, edge_cases
from conftest import DEVICE, in_ci, require_runtime, run_device_module
from coredrive import (
    check_adam_kernel,
    check_sdlm_kernels,
    expected_states,
    parse_states,
    run_cases,
    run_here,
    script,
    state_line,
)
from edgebp.host.boards import board as mb, mprun

# the runtimes that load a native build: the unix port (x64) and the boards
NATIVES = ["unix", *mprun.BOARDS]


def _require_build_tools() -> None:
    if os.environ.get("MPY_DIR"):
        return
    why = "MPY_DIR is not set (a MicroPython tree whose py/ and tools/ build native modules)"
    if in_ci():
        pytest.fail(why, pytrace=False)
    pytest.skip(why)


def test_committed_modules_are_what_the_source_builds():
    # CI rebuilds every architecture from kernels.c and compares byte for byte
    _require_build_tools()
    done = subprocess.run([sys.executable, "-m", "edgebp.host.boards.natmod", "--check"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    for arch in mb.NATIVE_BUILD.values():
        assert f"{arch}" in done.stdout


def test_the_c_tables_are_edgebps_tables():
    done = subprocess.run([sys.executable, "-m", "edgebp.host.nets.ctables", "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", NATIVES)
def test_native_kernels_match_pure_kernels(name):
    require_runtime(name)
    result = run_device_module(name, "tests/device/test_native_dev.py", timeout=600)
    assert "SKIP" not in result.stdout, result.stdout


@pytest.mark.parametrize("name", NATIVES)
def test_native_adam_matches_pure_adam(name):
    # adam_native.adam under heap_lock against edgebp.adam.adam under CPython: random
    # cases and the edges of every argument the range proof admits; bad arguments refused
    # before any write
    require_runtime(name)
    check_adam_kernel(name, "native")


@pytest.mark.parametrize("name", NATIVES)
def test_native_sdlm_matches_pure_sdlm(name):
    # kernels_native's sq_t, curv_acc and sdlm under heap_lock against edgebp.sdlm's under
    # CPython: random cases and the edges of every argument edgebp/sdlm.py admits; bad
    # arguments refused before any write
    require_runtime(name)
    check_sdlm_kernels(name, "native")


@pytest.mark.parametrize("name", NATIVES)
def test_native_core_matches_cpython_on_every_case(name):
    # every activation x loss x optimiser case and the edge-of-range nets, trained with the
    # native kernels, each step under heap_lock, against the pure kernels under CPython
    require_runtime(name)
    cases = all_cases() + edge_cases()
    expected = expected_states(cases)
    # the case data as a file (coredrive.run_cases): inline, it is more than a board imports
    result, got = run_cases(name, cases, "edgebp.kernels_native", timeout=900)
    assert result.ok, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert set(got) == set(expected)
    bad = [n for n in expected if got[n] != expected[n]]
    assert not bad, f"{len(bad)} cases differ from the pure kernels: {bad[:5]}"


SELECT = """
from edgebp import kern
print("default", kern.name(kern.select()))
for k in ("python", "viper", "native"):
    try:
        print(k, kern.name(kern.select(k)))
    except ImportError as e:
        print(k, "ImportError", str(e).split(":")[0])
"""


def test_select_prefers_native_then_viper(runtime):
    result = mprun.run(runtime, SELECT, mprun.core_files(), timeout=60)
    assert result.ok, result.stdout + result.stderr
    native = runtime in NATIVES
    viper = runtime in ("unix", *mprun.BOARDS)
    assert result.stdout.split("\n")[:4] == [
        "default " + ("native" if native else "viper" if viper else "python"),
        "python python",
        "viper viper" if viper else "viper ImportError viper kernels unavailable on this runtime",
        "native native" if native
        else "native ImportError native kernels unavailable on this runtime",
    ]


@pytest.mark.parametrize(("arch", "build"), [
    ("x64", "x64"), ("armv6m", "armv6m"), ("armv7m", "armv7m"),
    # a Cortex-M4/M7 MicroPython reports armv7em(sp/dp) and loads older Thumb builds
    ("armv7em", "armv7m"), ("armv7emsp", "armv7emsp"), ("armv7emdp", "armv7emsp"),
    ("rv32imc", "rv32imc"), ("xtensawin", None), (None, None),
])
def test_deploy_copies_the_build_for_the_boards_architecture(arch, build):
    plan = mb.plan_deploy(arch)
    natives = [i for i in plan.items if i.dest == mb.NATIVE_DEST]
    if build is None:
        assert not natives
        assert plan.kernels.startswith("viper" if arch else "python")
        return
    assert len(natives) == 1 and natives[0].source == f"edgebp/native/{build}"
    here = mb.Path(mb.__file__).parents[2] / "edgebp" / "native" / build
    assert natives[0].data == (here / "kernels_native.mpy").read_bytes()
    # the optimisers' kernels, modules of their own beside them
    for module in ("adam_native", "sdlm_native"):
        extra = [i for i in plan.items if i.dest == f"edgebp/{module}.mpy"]
        assert len(extra) == 1 and extra[0].data == (here / f"{module}.mpy").read_bytes()
    assert plan.kernels.startswith(f"native (the {build} build")


@pytest.mark.parametrize(("mpy", "arch"), [
    (6918, "armv7em"),  # the cortex-m3 board: .mpy 6.3, arch 6
    (77574, "rv32imc"),  # the rv32 board: arch 11 and the zba flag in bit 16
    (2822, "x64"),  # the unix port on x64
    (6, None),  # no native emitter
])
def test_facts_read_the_architecture_without_its_flags(mpy, arch):
    facts = mb.Facts((1, 28, 0), mpy, "", "", "/", 0, 0, 0, 0)
    assert facts.arch == arch
    assert facts.mpy_version == (6, 3) or mpy == 6


# Net.forward, score, backward, update and learn run as one native call each where the kernels
# have them (forward_net, score_net, backward_net, update_net, learn_net): the shapes and edges
# those calls must get right,
# beyond the 3-4-3 nets above. Every output x loss, on one layer, width-1 hidden layers,
# 8 layers and an MSE output of width 1, at ordinary and at maximal magnitudes (saturated
# softmax and squashing units), online and in mini-batches of 3 (batch_max 4).
FUSED_SHAPES = [(2, 3), (3, 4, 1), (4, 1, 1, 3), (3, 2, 2, 2, 2, 2, 2, 2, 3)]


def fused_cases() -> list:
    from combos import HIDDEN, OUTPUTS, make_case
    out = []
    for i, ((loss, o), sizes) in enumerate(
            [(lo, s) for lo in OUTPUTS for s in FUSED_SHAPES]):
        hidden = HIDDEN[i % len(HIDDEN)]
        for edge in (False, True):
            c = make_case(hidden, loss, o, "minibatch" if i % 2 else "sgd", seed=300 + i,
                          sizes=sizes, n=5, edge=edge)
            c.name += f"-{'x'.join(map(str, sizes))}"
            out.append(c)
    return out


_SCORE = '''
import devtest
from array import array

def evaluate(name, make, X, T, n_in, n_t, n):
    # forward and score alone, the evaluation path; every other sample's x is a list
    net = make()
    xs = [array("h", bytes(2 * n_in)), [0] * n_in]
    t = array("h", bytes(2 * n_t))
    out = []
    for s in range(n):
        x = xs[s & 1]
        for i in range(n_in):
            x[i] = X[s * n_in + i]
        for i in range(n_t):
            t[i] = T[s * n_t + i]
        devtest.no_alloc(net.forward, x)
        loss = devtest.no_alloc(net.score, t)
        out.append("%d %d %s" % (loss, net.good, " ".join(str(v) for v in net.D[net.L - 1])))
    print("SCORE " + name + "|" + "|".join(out))
'''


def _score_here(c) -> str:
    from array import array
    net = c.qnet.build(c.hyper, None)
    out = []
    for x, t in zip(c.Xq, c.Tq, strict=True):
        net.forward(array("h", x.astype("<i2").tobytes()))
        loss = net.score(array("h", t.astype("<i2").tobytes()))
        d = " ".join(str(v) for v in net.D[net.L - 1])
        out.append(f"{loss} {net.good} {d}")
    return c.name + "|" + "|".join(out)


def _score_script(cases, kernels: str) -> str:
    import numpy as np
    out = [_SCORE]
    for i, c in enumerate(cases):
        out.append(c.qnet.device_source(c.hyper, kernels).replace("def make():",
                                                                  f"def make_{i}():"))
        X = np.asarray(c.Xq, "<i2")
        T = np.asarray(c.Tq, "<i2")
        out.append(f"evaluate({c.name!r}, make_{i}, array('h', {X.tobytes()!r}), "
                   f"array('h', {T.tobytes()!r}), {X.shape[1]}, {T.shape[1]}, {X.shape[0]})")
    return "\n".join(out) + "\n"


_ACCUMULATE = '''
import devtest
from array import array

def accumulate(name, make, X, T, n_in, n_t, n):
    # Net.forward and Net.backward alone (the server's accumulating TRAIN: a full sum is
    # applied by backward itself), every third sample through learn
    net = make()
    x = array("h", bytes(2 * n_in))
    t = array("h", bytes(2 * n_t))
    out = []
    for s in range(n):
        for i in range(n_in):
            x[i] = X[s * n_in + i]
        for i in range(n_t):
            t[i] = T[s * n_t + i]
        if s % 3 == 2:
            loss = devtest.no_alloc(net.learn, x, t)
        else:
            devtest.no_alloc(net.forward, x)
            loss = devtest.no_alloc(net.backward, t)
        out.append("%d %d %d %d" % (loss, net.good, net.count, net.grad_count))
    for l in range(net.L):
        out.append(" ".join(str(v) for v in net.W[l]) + "/"
                   + " ".join(str(v) for v in net.GW[l]) + "/"
                   + " ".join(str(v) for v in net.GB[l]))
    out.append("%d %d %d %d" % (net.rng[0], net.loss_sum, net.correct, net.seen))
    print("ACC " + name + "|" + "|".join(out))
'''


def _accumulate_here(c) -> str:
    from array import array
    net = c.qnet.build(c.hyper, None)
    out = []
    for s, (x, t) in enumerate(zip(c.Xq, c.Tq, strict=True)):
        xa = array("h", x.astype("<i2").tobytes())
        ta = array("h", t.astype("<i2").tobytes())
        if s % 3 == 2:
            loss = net.learn(xa, ta)
        else:
            net.forward(xa)
            loss = net.backward(ta)
        out.append(f"{loss} {net.good} {net.count} {net.grad_count}")
    for l in range(net.L):
        out.append(" ".join(str(v) for v in net.W[l]) + "/"
                   + " ".join(str(v) for v in net.GW[l]) + "/"
                   + " ".join(str(v) for v in net.GB[l]))
    out.append(f"{net.rng[0]} {net.loss_sum} {net.correct} {net.seen}")
    return c.name + "|" + "|".join(out)


def _accumulate_script(cases, kernels: str) -> str:
    import numpy as np
    out = [_ACCUMULATE]
    for i, c in enumerate(cases):
        out.append(c.qnet.device_source(c.hyper, kernels).replace("def make():",
                                                                  f"def make_{i}():"))
        X = np.asarray(c.Xq, "<i2")
        T = np.asarray(c.Tq, "<i2")
        out.append(f"accumulate({c.name!r}, make_{i}, array('h', {X.tobytes()!r}), "
                   f"array('h', {T.tobytes()!r}), {X.shape[1]}, {T.shape[1]}, {X.shape[0]})")
    return "\n".join(out) + "\n"


FUSED_CHECK = """
from edgebp import kernels_native as K
from edgebp.net import Net
net = Net([2, 2], [0], [12, 12], [12], [12], 0, 1, False, 41, K)
print("FUSED", net._fused is not None)
"""


@pytest.mark.parametrize("name", NATIVES)
def test_native_whole_step_matches_cpython_on_every_shape(name):
    # training (learn, under heap_lock) and evaluation (forward + score) through the native
    # whole-step functions, against the pure kernels' Python loops under CPython
    require_runtime(name)
    cases = fused_cases()
    files = mprun.core_files()
    files["devtest.py"] = (DEVICE / "devtest.py").read_text()
    check = mprun.run(name, FUSED_CHECK, files, timeout=120)
    assert "FUSED True" in check.stdout, check.stdout + check.stderr
    expected = {c.name: state_line(c.name, run_here(c))[len("STATE "):] for c in cases}
    result = mprun.run(name, script(cases, "edgebp.kernels_native"), files, timeout=900)
    assert result.ok, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    got = parse_states(result.stdout)
    assert set(got) == set(expected)
    bad = [n for n in expected if got[n] != expected[n]]
    assert not bad, f"{len(bad)} cases differ from the pure kernels: {bad[:5]}"
    result = mprun.run(name, _score_script(cases, "edgebp.kernels_native"), files, timeout=900)
    assert result.ok, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    scores = [ln[len("SCORE "):] for ln in result.stdout.splitlines() if ln.startswith("SCORE ")]
    assert scores == [_score_here(c) for c in cases]


@pytest.mark.parametrize("name", NATIVES)
def test_native_backward_alone_matches_cpython_on_every_shape(name):
    # forward and backward as separate calls (forward_net, backward_net; update_net when a sum
    # is full) mixed with learn_net, each under heap_lock, against the pure kernels under
    # CPython: per sample the loss, net.good, count and grad_count, then weights, gradient
    # sums and counters
    require_runtime(name)
    cases = fused_cases()
    files = mprun.core_files()
    files["devtest.py"] = (DEVICE / "devtest.py").read_text()
    result = mprun.run(name, _accumulate_script(cases, "edgebp.kernels_native"), files,
                       timeout=900)
    assert result.ok, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    got = [ln[len("ACC "):] for ln in result.stdout.splitlines() if ln.startswith("ACC ")]
    assert got == [_accumulate_here(c) for c in cases]
