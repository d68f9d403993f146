"""The `edgebp` command line: what a user types, and what it prints back.

The parser and `main()` (`parser`: one table of commands, one line per error), the commands
by group (`common` for what they share, `net_commands`, `train_commands`, `check_command`,
`board_commands`, `data_commands`), the net and data a command works on (`workload`), data
and weight files (`data`) and the progress bar (`progress`).

May import every layer below: `edgebp.host.bench`, `edgebp.host.boards`, `edgebp.host.nets`
and the portable core. Nothing imports this package but the entry point and the tests.
"""

from edgebp.host.cli.parser import main

__all__ = ["main"]
