"""A fleet of boards: federated training on Flower, each client a host process driving one board.

`partition` splits a dataset across clients (IID or label-sorted shards), `average` is the
exact integer federated average of int16 weights, `workload` the net and data a fleet trains
(from files, for a deployment), `client` one round of local training on one board and the
Flower ClientApp around it, `server` the Flower ServerApp (the averaging strategy, the
held-out evaluation and the per-round report), `app` the two apps as a deployment loads them
(`flower-superlink` / `flower-supernode`), `run` the simulation of a whole fleet on this
machine through Flower's simulation engine.

May import: `edgebp.host.boards`, `edgebp.host.nets`, the portable core and flwr (the `fleet`
extra, imported only where a Flower app is built). Never `edgebp.host.bench` or
`edgebp.host.cli`.
"""
