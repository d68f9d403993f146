"""A fleet run's settings, in one place, and as Flower's flat run config carries them.

The same keys configure the simulation (`edgebp fleet`, host/fleet/run.py) and a deployment
(`flwr run ... --run-config`, or the app's pyproject.toml, host/fleet/app.py):

    net, train-data, test-data   the .ebp net (with its hyper-parameters) and the data files
                                 (deployment only: the simulation is handed a Workload)
    num-rounds                   federated rounds
    local-epochs                 epochs each client trains its board per round
    partition                    iid | noniid (host/fleet/partition.py)
    classes-per-client           noniid: the classes each client mostly holds
    dominant-percent             noniid: the share of a client's samples from those classes
    seed                         the split, each client's sample order and rounding seeds
    boards                       board per partition, comma-separated: sim (the firmware
                                 simulated in the client's process; the default), sim://micropython,
                                 or a port (a device, a pty, a pyserial URL); a SuperNode's
                                 node config `board` overrides it
    min-clients                  a round waits for this many connected clients (0, the
                                 default: all of them; Flower's simulation connects its
                                 virtual clients one by one, so fewer can start a round
                                 with only the first few)
    round-timeout                seconds a round waits for its replies
    faults                       P@R,...: the simulated board of partition P resets in the
                                 middle of round R (fault injection, for tests and demos)
    out, curves                  the server writes the final global net (.ebp) and the
                                 per-round table (.csv) or plot (.png) there, if given
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgebp.host.fleet.partition import KINDS
from edgebp.host.fleet.workload import FleetError

SIM = "sim"


@dataclass
class Settings:
    rounds: int = 5
    local_epochs: int = 1
    clients: int = 4  # virtual clients of a simulation (a deployment has its SuperNodes)
    partition: str = "iid"
    per: int = 2
    dominant: int = 80
    seed: int = 1
    boards: list[str] = field(default_factory=list)
    min_clients: int = 0
    round_timeout: float = 600.0
    faults: list[tuple[int, int]] = field(default_factory=list)  # (partition, round)
    out: str = ""
    curves: str = ""

    def __post_init__(self) -> None:
        if self.partition not in KINDS:
            raise FleetError(f"partition {self.partition!r}: expected {' or '.join(KINDS)}")
        if self.min_clients < 0:
            raise FleetError("min-clients must be 0 (all) or more")
        for name in ("rounds", "local_epochs", "clients", "per"):
            if int(getattr(self, name)) < 1:
                raise FleetError(f"{name.replace('_', '-')} must be at least 1")
        if not 0 <= self.dominant <= 100:
            raise FleetError(f"dominant-percent {self.dominant} outside 0..100")
        if self.seed < 0:
            raise FleetError("seed must not be negative")

    @property
    def min_nodes(self) -> int:
        """The connected clients a round waits for."""
        return self.min_clients or self.clients

    def board_for(self, partition: int) -> str:
        b = self.boards[partition] if partition < len(self.boards) else ""
        return b or SIM

    def fault_in(self, partition: int, server_round: int) -> bool:
        return (partition, server_round) in self.faults

    def client_seed(self, server_round: int, partition: int) -> int:
        """The seed of a client's sample order and stochastic rounding in a round: distinct
        for every (seed, round, partition), inside the 30 bits a net file holds."""
        return ((self.seed * 1_000_003 + server_round) * 10_007 + partition) % (2**30 - 1) + 1

    # -- as Flower's run config --

    def to_run_config(self) -> dict[str, int | float | str]:
        return {"num-rounds": self.rounds, "local-epochs": self.local_epochs,
                "partition": self.partition, "classes-per-client": self.per,
                "dominant-percent": self.dominant, "seed": self.seed,
                "boards": ",".join(self.boards), "min-clients": self.min_clients,
                "round-timeout": float(self.round_timeout),
                "faults": ",".join(f"{p}@{r}" for p, r in self.faults),
                "out": self.out, "curves": self.curves}

    @classmethod
    def from_run_config(cls, cfg) -> Settings:
        def get(key, kind, default):
            v = cfg.get(key, default)
            try:
                return kind(v)
            except (TypeError, ValueError):
                raise FleetError(f"run config {key} = {v!r} is not {kind.__name__}") from None

        return cls(rounds=get("num-rounds", int, 5), local_epochs=get("local-epochs", int, 1),
                   partition=get("partition", str, "iid"),
                   per=get("classes-per-client", int, 2),
                   dominant=get("dominant-percent", int, 80), seed=get("seed", int, 1),
                   boards=[b.strip() for b in get("boards", str, "").split(",")]
                   if get("boards", str, "") else [],
                   min_clients=get("min-clients", int, 0),
                   round_timeout=get("round-timeout", float, 600.0),
                   faults=parse_faults(get("faults", str, "")),
                   out=get("out", str, ""), curves=get("curves", str, ""))


def parse_faults(text: str) -> list[tuple[int, int]]:
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            p, r = part.split("@")
            out.append((int(p), int(r)))
        except ValueError:
            raise FleetError(f"fault {part!r}: expected PARTITION@ROUND, like 1@2") from None
    return out
