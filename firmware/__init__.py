# edgebp firmware: what turns a MicroPython board into a training server.
# Deployed to the board as the package edgebp.firmware; imports under CPython too, for simulation.
