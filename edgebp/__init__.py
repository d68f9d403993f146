# edgebp core: portable fixed-point backpropagation.
# Runs unchanged under CPython and MicroPython (no numpy, no typing at run time).
__version__ = "0.1.0"
