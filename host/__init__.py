"""Host side of edgebp (CPython, numpy), in five layers; each imports only the layers below it.

    cli/     the `edgebp` command: parser, commands, the workload, data files, progress
    bench/   benchmarks that print tables: the training step per runtime, the kernels, a fleet
    fleet/   federated training on Flower: one client per board, exact averaging, simulation
    boards/  boards and links: wire link, session, simulated boards, mpremote, flashing
    nets/    the numerics of a net: spec, quantiser, range proof, reference, twin, files

and below them all the portable core (`edgebp`, `edgebp.firmware`), which imports nothing
of the host. tests/test_layers.py checks the direction.
"""
