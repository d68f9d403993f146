"""A whole fleet on this machine: Flower's simulation engine, one virtual client per board.

    history = simulate(workload, Settings(clients=8, rounds=10, boards=[...]))

Flower runs the ServerApp in this process and the ClientApps of the N virtual SuperNodes in
its Ray backend's workers (`workers` of them at a time, one CPU each); each ClientApp drives
its partition's board (a simulated board started in the worker's process, or the port its
entry in `boards` names). The apps are those a deployment runs (host/fleet/app.py), with the
workload and settings handed over instead of read from the run config.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from edgebp.host.fleet.client import make_client_app
from edgebp.host.fleet.config import Settings
from edgebp.host.fleet.server import History, Row, make_server_app
from edgebp.host.fleet.workload import FleetError, Workload

EXTRA = 'pip install "edgebp[fleet]"'


def need_flower(simulation: bool = True) -> None:
    """FleetError in one line naming the extra, when flwr (or its Ray backend) is missing."""
    if importlib.util.find_spec("flwr") is None:
        if sys.version_info < (3, 11):
            raise FleetError("a fleet needs Flower (flwr), which needs Python 3.11 or later")
        raise FleetError(f"a fleet needs Flower (flwr), which is not installed: {EXTRA}")
    if simulation and importlib.util.find_spec("ray") is None:
        raise FleetError("a simulated fleet needs Flower's simulation engine (ray), which is "
                         f"not installed: {EXTRA}")


@contextlib.contextmanager
def _quiet_flower(verbose: bool):
    # Flower logs every step at INFO; the fleet prints its own rows
    logger = logging.getLogger("flwr")
    level = logger.level
    if not verbose:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def simulate(workload: Workload, settings: Settings, report: Callable[[Row], None] = print,
             workers: int | None = None, verbose: bool = False) -> History:
    """Run the fleet through Flower's simulation engine; the history of its rounds."""
    need_flower()
    from flwr.simulation import run_simulation

    if settings.min_clients > settings.clients:
        raise FleetError(f"min-clients {settings.min_clients} is more than the "
                         f"{settings.clients} clients")
    got: list[History] = []
    server = make_server_app(lambda _: (workload, settings),
                             lambda h, _w, _s: got.append(h), report)
    client = make_client_app(lambda _: (workload, settings))
    workers = workers or min(settings.clients, os.cpu_count() or 1)
    backend: Any = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
               "init_args": {"num_cpus": workers, "num_gpus": 0, "include_dashboard": False,
                             "log_to_driver": verbose, "configure_logging": False}}
    # Ray warns of a change to come in how it hides GPUs from workers that ask for none
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    with _quiet_flower(verbose):
        run_simulation(server_app=server, client_app=client, num_supernodes=settings.clients,
                       backend_config=backend, verbose_logging=verbose)
    if not got:
        raise FleetError("the simulation ended without finishing its rounds (run with "
                         "--verbose for Flower's log)")
    return got[0]
