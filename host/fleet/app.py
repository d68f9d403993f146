"""The fleet's Flower apps as a deployment loads them: `edgebp.host.fleet.app:server_app` and
`edgebp.host.fleet.app:client_app` (examples/fleet/pyproject.toml names them).

Both read their settings from the run config (host/fleet/config.py) and the workload from
the files it names (`net`, `train-data`, `test-data`: paths as the SuperLink's and each
SuperNode's machine see them). Each SuperNode says which partition it holds and its board in
its node config: `--node-config "partition-id=0 num-partitions=2 board='/dev/ttyACM0'"`
(board: sim, sim://micropython or a port; default from the run config's `boards`, else sim).
The server prints a row per round and writes `out` and `curves` if the run config names them.
"""

from __future__ import annotations

from edgebp.host.fleet import server
from edgebp.host.fleet.client import make_client_app
from edgebp.host.fleet.config import Settings
from edgebp.host.fleet.report import write_outputs
from edgebp.host.fleet.workload import FleetError, Workload, from_files

_cache: dict[tuple, tuple[Workload, Settings]] = {}


def resolve(context) -> tuple[Workload, Settings]:
    cfg = context.run_config
    key = tuple(sorted((k, str(v)) for k, v in cfg.items()))
    if key not in _cache:
        if not cfg.get("net") or not cfg.get("train-data"):
            raise FleetError("the run config names no net and train-data (the .ebp net and "
                             "its training samples)")
        workload = from_files(str(cfg["net"]), str(cfg["train-data"]),
                              str(cfg.get("test-data", "")) or None)
        _cache[key] = (workload, Settings.from_run_config(cfg))
    return _cache[key]


def _report(row: server.Row) -> None:
    if row.round == 0:
        print(server.head(), flush=True)
    print(server.line(row), flush=True)


def _done(history: server.History, workload: Workload, settings: Settings) -> None:
    for said in write_outputs(history, workload, settings.out, settings.curves):
        print(said, flush=True)


server_app = server.make_server_app(resolve, _done, _report)
client_app = make_client_app(resolve)
