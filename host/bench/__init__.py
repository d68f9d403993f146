"""Benchmarks: scripts that measure and print tables, never tests.

`step` times a training step per runtime (speed, allocation, RAM, link efficiency; what
`edgebp bench` prints), `kernels` each kernel, pure against viper, on the unix MicroPython
(`python -m edgebp.host.bench.kernels`), `fleet` a fleet of simulated boards against
centralised training (`python -m edgebp.host.bench.fleet`), `ondata` training from data on an
emulated board's flash against streaming it.

May import: `edgebp.host.fleet`, `edgebp.host.boards`, `edgebp.host.nets` and the portable
core. Never `edgebp.host.cli`.
"""
