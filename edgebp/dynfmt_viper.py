# The kernels of edgebp.dynfmt compiled by viper: bit-identical, same results.
#
# The habits of edgebp.kernels_viper hold: int16 loads are sign-extended with
# (u ^ 0x8000) - 0x8000, int32 ones (momentum, |v| <= V_MAX) by copying bit 30 upwards.
# ptr16 and ptr32 are viper builtins, unknown to a linter:
# ruff: noqa: F821

import micropython
from micropython import const

_V_MAX = const(0x3FFFFF)
_HIGH = const(~0x3FFFFFFF)


@micropython.viper
def absmax16(a, n: int) -> int:
    p = ptr16(a)
    m = 0
    for i in range(n):
        v = (int(p[i]) ^ 0x8000) - 0x8000
        if v < 0:
            v = 0 - v
        if v > m:
            m = v
    return m


@micropython.viper
def halve16(a, n: int):
    p = ptr16(a)
    for i in range(n):
        v = (int(p[i]) ^ 0x8000) - 0x8000
        p[i] = (v + 1) >> 1


@micropython.viper
def halve32(a, n: int):
    p = ptr32(a)
    for i in range(n):
        v = int(p[i])
        if (v >> 30) & 1:
            v |= _HIGH
        p[i] = (v + 1) >> 1


@micropython.viper
def double16(a, n: int):
    p = ptr16(a)
    for i in range(n):
        v = ((int(p[i]) ^ 0x8000) - 0x8000) << 1
        if v > 32767:
            v = 32767
        elif v < -32767:
            v = -32767
        p[i] = v


@micropython.viper
def double32(a, n: int):
    p = ptr32(a)
    for i in range(n):
        v = int(p[i])
        if (v >> 30) & 1:
            v |= _HIGH
        v = v << 1
        if v > _V_MAX:
            v = _V_MAX
        elif v < 0 - _V_MAX:
            v = 0 - _V_MAX
        p[i] = v
