"""Host side of edgebp (CPython, numpy): reference, twin, quantiser, link, simulator, CLI."""
