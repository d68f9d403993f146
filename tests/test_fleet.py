"""A fleet of boards trained with Flower (host/fleet): exact averaging, splits, the refusal
of replies that must not count, and a whole fleet through Flower's simulation engine on
boards running the firmware in unix MicroPython, one of them reset mid-round.

The expected global weights come from a second path (tests/fleetcheck.py): the twin and exact
fractions. The fleet with an emulated Cortex-M3 among simulated boards, run twice, is in
tests/test_boards_cli.py (which deploys edgebp onto the emulated boards once for all its
tests); a local deployment (SuperLink, SuperNodes, `flwr run`) runs with
EDGEBP_FLEET_DEPLOY=1.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, require_runtime
from edgebp.host.fleet import average, partition
from edgebp.host.fleet.config import Settings, parse_faults
from edgebp.host.fleet.workload import FleetError, arrays_of, from_files, read_numbers
from fleetcheck import DATA, exact_average, iris_workload, same, twin_fleet

needs_flower = pytest.mark.skipif(
    importlib.util.find_spec("flwr") is None or importlib.util.find_spec("ray") is None,
    reason='Flower with its simulation engine is not installed: pip install "edgebp[fleet]"')


def simulate(*args, **kw):
    from edgebp.host.fleet.run import simulate as run

    return run(*args, **kw)


# -- averaging --


def test_the_average_is_the_exact_weighted_mean_rounded_half_up_in_any_order():
    rng = np.random.default_rng(3)
    shapes = [(5, 4), (5,), (3, 5), (3,)]
    replies = [([rng.integers(-32767, 32768, s).astype(np.int16) for s in shapes],
                int(rng.integers(1, 400))) for _ in range(7)]
    want = exact_average(replies)
    assert same(average.weighted_average(replies), want)
    for seed in range(5):
        shuffled = list(replies)
        random.Random(seed).shuffle(shuffled)
        assert same(average.weighted_average(shuffled), want)
    # ties go up, as the core rounds: (1 + 2) / 2 -> 2, (-1 - 2) / 2 -> -1
    tie = [([np.array([1, -1, 32767], np.int16)], 1), ([np.array([2, -2, 32767], np.int16)], 1)]
    assert average.weighted_average(tie)[0].tolist() == [2, -1, 32767]


def test_a_reply_that_cannot_be_averaged_is_refused_by_name():
    shapes = [(2, 2), (2,)]
    good = [np.zeros((2, 2), np.int16), np.zeros(2, np.int16)]
    for arrays, count, match in (
            (good, 0, "positive"), (good[:1], 3, "sent 1 tensors"),
            ([np.zeros((2, 3), np.int16), good[1]], 3, "shape"),
            ([good[0].astype(np.float32), good[1]], 3, "not integers"),
            ([np.full((2, 2), -32768, np.int32), good[1]], 3, "int16 range")):
        with pytest.raises(average.AverageError, match=match):
            average.check(arrays, count, shapes, "partition 2")
    assert same(average.check(good, 3, shapes), good)


# -- splits --


def test_iid_and_noniid_splits_partition_the_samples_reproducibly():
    _, y = read_numbers(DATA / "digits_train.csv")
    labels = y[:, 0]
    for kind in partition.KINDS:
        parts = partition.split(labels, 8, kind, seed=5)
        every = np.concatenate(parts)
        assert sorted(every.tolist()) == list(range(len(labels)))  # each sample once
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
        assert all(np.array_equal(a, b) for a, b in
                   zip(parts, partition.split(labels, 8, kind, seed=5), strict=True))
        assert not all(np.array_equal(a, b) for a, b in
                       zip(parts, partition.split(labels, 8, kind, seed=6), strict=True))
    # iid: every client holds every class; noniid: most of a client's samples are two classes
    for idx in partition.split(labels, 8, "iid", seed=5):
        assert len(np.unique(labels[idx])) == 10
    for idx in partition.split(labels, 8, "noniid", seed=5):
        counts = np.sort(np.unique(labels[idx], return_counts=True)[1])[::-1]
        assert counts[:2].sum() >= 2 / 3 * len(idx), counts
    # where every class has the samples its clients want, each client's two classes are
    # exactly its 80% (10 classes of 200, 8 clients of 250: 200 of each from its classes)
    even = np.repeat(np.arange(10), 200)
    held = []
    for idx in partition.split(even, 8, "noniid", seed=5):
        values, counts = np.unique(even[idx], return_counts=True)
        top = np.argsort(-counts, kind="stable")[:2]
        assert len(idx) == 250 and counts[top].sum() >= 200
        held.append(set(values[top].tolist()))
    assert len(set.union(*held)) == 10  # the classes dealt round all clients
    with pytest.raises(partition.PartitionError, match="20 samples cannot be split across 32"):
        partition.split(labels[:20], 32, "noniid")


def test_settings_travel_as_a_flower_run_config():
    st = Settings(rounds=3, local_epochs=2, clients=5, partition="noniid", per=3, dominant=70,
                  seed=9, boards=["sim", "/dev/pts/7"], min_clients=2, faults=[(1, 2), (3, 1)],
                  out="g.ebp")
    back = Settings.from_run_config(st.to_run_config())
    assert back == replace(st, clients=Settings().clients)
    assert back.board_for(1) == "/dev/pts/7" and back.board_for(4) == "sim"
    with pytest.raises(FleetError, match="PARTITION@ROUND"):
        parse_faults("1-2")
    with pytest.raises(FleetError, match="partition"):
        Settings(partition="dirichlet")


def test_a_deployment_reads_its_workload_from_files(tmp_path):
    wl = iris_workload()
    from edgebp.host.nets import ebpfile

    net = tmp_path / "iris.ebp"
    ebpfile.write(net, wl.qnet, wl.hyper)
    got = from_files(net, DATA / "iris_train.csv", DATA / "iris_test.csv")
    assert np.array_equal(got.Xq, wl.Xq) and np.array_equal(got.Tq, wl.Tq)
    assert np.array_equal(got.Xt, wl.Xt) and got.hyper == wl.hyper
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,c,d,e\n1,2,3,4,setosa\n")
    with pytest.raises(FleetError, match="not a number"):
        from_files(net, bad)


# -- the aggregation refuses what it must not count --


@needs_flower
def test_replies_of_another_round_or_a_partition_counted_twice_are_left_out(monkeypatch):
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from edgebp.host.fleet.server import History, make_strategy

    # messages made outside a running app take their run from here
    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)
    wl = iris_workload()
    strategy = make_strategy(wl, Settings(clients=3), History(), lambda row: None)
    arrays = arrays_of(wl.qnet)
    moved = [a + 1 for a in arrays]

    def reply(node: int, part: int, rnd: int, arr, n: int = 40) -> Message:
        sent = Message(RecordDict(), dst_node_id=node, message_type="train")
        return Message(RecordDict({
            "arrays": ArrayRecord(arr),
            "metrics": MetricRecord({"num-examples": n, "partition-id": part,
                                     "server-round": rnd, "bytes-out": 1, "bytes-in": 1})}),
            reply_to=sent)

    replies = [reply(11, 0, 2, arrays), reply(12, 1, 2, moved, 120), reply(13, 1, 2, moved),
               reply(14, 2, 1, moved)]
    got, metrics = strategy.aggregate_train(2, replies)
    # partitions 0 and 1 only, 40 and 120 samples: (0 * 40 + 1 * 120) / 160 = 0.75 -> 1
    assert same(got.to_numpy_ndarrays(), exact_average([(arrays, 40), (moved, 120)]))
    assert metrics["num-examples"] == 160
    row = strategy.pending
    assert row.reported == [0, 1]
    assert any("already counted" in why for why in row.left_out)
    assert any("answers round 1, not 2" in why for why in row.left_out)


# -- whole fleets through Flower --


@pytest.fixture(scope="module")
def digits_fleet():
    """IID digits on 4 boards (the firmware in unix MicroPython), 10 rounds of 3 local epochs,
    the board of partition 2 reset in the middle of round 5."""
    from edgebp.host.bench.fleet import digits
    from edgebp.host.boards.mprun import micropython_exe

    if micropython_exe() is None:
        require_runtime("unix")
    wl = digits(seed=1)
    st = Settings(clients=4, rounds=10, local_epochs=3, seed=1,
                  boards=["sim://micropython"] * 4, faults=[(2, 5)])
    return wl, st, simulate(wl, st, lambda row: None)


@needs_flower
def test_a_board_that_resets_mid_round_is_left_out_and_rejoins(digits_fleet):
    wl, st, history = digits_fleet
    rows = history.rows
    assert [r.round for r in rows] == list(range(11))
    everyone = [0, 1, 2, 3]
    assert [r.reported for r in rows[1:]] == [everyone] * 4 + [[0, 1, 3]] + [everyone] * 5
    assert len(rows[5].left_out) == 1 and rows[5].left_out[0].startswith("partition 2 ")
    assert all(not r.left_out for r in rows if r.round != 5)
    assert rows[5].samples == len(wl.Xq) - 359 and rows[6].samples == len(wl.Xq)
    # round 5 averages the three that finished and nothing of the fourth, which trains
    # again from round 6: the twin's fleet without that one reply, bit for bit
    assert same(history.arrays, twin_fleet(wl, st, left_out={(2, 5)})[-1])


@needs_flower
def test_iid_digits_come_within_a_point_of_centralised_training(digits_fleet):
    # against one net trained on all the samples for the same 30 epochs
    from edgebp.host.fleet.central import central

    wl, st, history = digits_fleet
    fleet_acc = history.rows[-1].accuracy
    central_acc = central(wl, st.rounds, st.local_epochs)[-1][1]
    assert abs(central_acc - fleet_acc) <= 0.01, (fleet_acc, central_acc)
    assert fleet_acc > 0.95


@needs_flower
@pytest.mark.skipif(os.environ.get("EDGEBP_FLEET_DEPLOY") != "1",
                    reason="a local deployment (flower-superlink, two flower-supernode, flwr "
                    "run) takes about a minute: EDGEBP_FLEET_DEPLOY=1 runs it")
def test_a_local_deployment_gives_the_simulations_weights(tmp_path):
    # the same apps, run by Flower's deployment runtime on this machine: a SuperLink, two
    # SuperNodes (one partition each), `flwr run` of examples/fleet; the global net it writes
    # is the one the simulation gives, byte for byte
    from edgebp.host.nets import ebpfile

    wl = iris_workload(seed=3)
    net = tmp_path / "iris.ebp"
    ebpfile.write(net, wl.qnet, wl.hyper)
    st = Settings(clients=2, rounds=2, local_epochs=2, seed=3, min_clients=2)
    from edgebp.host.fleet.report import write_net

    sim = tmp_path / "sim.ebp"
    write_net(str(sim), simulate(wl, st, lambda row: None), wl)
    home = tmp_path / "flwr"
    home.mkdir()
    port = _free_port()
    (home / "config.toml").write_text(f'[superlink]\ndefault = "here"\n\n[superlink.here]\n'
                                      f'address = "127.0.0.1:{port}"\ninsecure = true\n')
    env = dict(os.environ, FLWR_HOME=str(home))
    bindir = Path(sys.executable).parent
    procs = []
    try:
        procs.append(subprocess.Popen(
            [bindir / "flower-superlink", "--insecure", "--disable-runtime-dependency-"
             "installation", "--port", str(port), "--database", str(tmp_path / "link.db")],
            env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True))
        _wait_for(port, procs[0])
        for p in range(2):
            procs.append(subprocess.Popen(
                [bindir / "flower-supernode", "--insecure", "--superlink",
                 f"127.0.0.1:{port}", "--port", str(_free_port()), "--node-config",
                 f"partition-id={p} num-partitions=2"],
                env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True))
        out = tmp_path / "deployed.ebp"
        config = (f"net='{net}' train-data='{DATA / 'iris_train.csv'}' "
                  f"test-data='{DATA / 'iris_test.csv'}' num-rounds=2 local-epochs=2 seed=3 "
                  f"min-clients=2 out='{out}'")
        done = subprocess.run([bindir / "flwr", "run", REPO / "examples" / "fleet", "here",
                               "--run-config", config, "--stream"], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert out.exists(), done.stdout[-3000:] + done.stderr[-3000:]
        assert out.read_bytes() == sim.read_bytes()
    finally:
        # each in its own process group, with the runners it started (flower-superexec,
        # flwr-serverapp, flwr-clientapp): the group goes
        for proc in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _wait_for(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"the SuperLink did not listen on port {port}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the command line --


def test_the_command_names_a_missing_extra_in_one_line(capsys, monkeypatch):
    from edgebp.host.cli import parser as cli

    real = importlib.util.find_spec
    train = str(DATA / "iris_train.csv")
    for module, extra in (("ray", "fleet"), ("flwr", "fleet"), ("matplotlib", "plot")):
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a, m=module: None if name == m else real(name, *a))
        if module == "matplotlib":
            monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
        code = cli.main(["fleet", "--data", train, "--plot", "fleet.png"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and f'pip install "edgebp[{extra}]"' in err
        monkeypatch.undo()


def test_the_plot_shows_each_round(tmp_path):
    pytest.importorskip("matplotlib")
    from edgebp.host.fleet.report import write_csv, write_plot
    from edgebp.host.fleet.server import History, Row

    h = History([Row(0, [], [], 2.3, 0.1), Row(1, [0, 1], [], 0.5, 0.8, 100, 900.0, 50.0, 1.5),
                 Row(2, [1], ["partition 0: reset"], 0.4, 0.85, 50, 900.0, 50.0, 1.2)])
    write_plot(str(tmp_path / "f.png"), h, central=[0.1, 0.9, 0.95])
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    write_csv(str(tmp_path / "f.csv"), h)
    lines = (tmp_path / "f.csv").read_text().splitlines()
    assert lines[0].startswith("round,clients,samples,loss,accuracy") and lines[3][:5] == "2,1,5"
