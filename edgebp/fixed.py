# Fixed-point primitives shared by every kernel set and by the engine.
#
# Numbers are integers with a power-of-two scale: value = q * 2**-shift.
# Storage is int16 restricted to the symmetric range [-32767, 32767] so that the product of
# two stored values is below 2**30 and therefore stays a MicroPython small int on a 32-bit
# MCU. Rounding is round-half-up everywhere: (x >> s) + ((x >> (s - 1)) & 1), which equals
# (x + 2**(s-1)) >> s without ever forming the sum (so it cannot leave the small-int range).

try:
    from micropython import const
except ImportError:

    def const(x):  # type: ignore[misc]
        return x


Q_MAX = const(32767)
SMALL_MAX = const(0x3FFFFFFF)  # 2**30 - 1, largest small int on a 32-bit port

# Activation kinds (stored in .ebp files: do not renumber)
IDENTITY = const(0)
RELU = const(1)
LEAKY = const(2)
SIGMOID = const(3)
TANH = const(4)
SOFTMAX = const(5)
SWISH = const(6)
MISH = const(7)
ACT_NAMES = ("identity", "relu", "leaky_relu", "sigmoid", "tanh", "softmax", "swish", "mish")

# Losses
MSE = const(0)
SOFTMAX_CE = const(1)
BCE = const(2)
LOSS_NAMES = ("mse", "softmax_ce", "bce")

# Update rounding
NEAREST = const(0)
STOCHASTIC = const(1)

# Fixed formats of the squashing units: z in Q12 (range +-8), output and derivative in Q14.
# Swish and mish read the same tables: z in Q12, output z * gate in Q12, derivative in Q14.
Z_SHIFT_SQUASH = const(12)
A_SHIFT_SQUASH = const(14)
# A softmax output may read wider logits: z in Q(12 - k), range +-8 * 2**k, for the net's
# logit_k k in 0..LOGIT_K_MAX (edgebp.kernels.softmax).
LOGIT_K_MAX = const(3)
LOSS_SHIFT = const(12)  # loss values are reported in Q12
ALPHA_SHIFT = const(12)  # leaky-ReLU slope in Q12
FV = const(8)  # fractional bits of an update step below one weight LSB
V_MAX = const(0x3FFFFF)  # 2**22 - 1: bound of update steps and momentum
LR_MANT_BITS = const(8)  # learning-rate mantissa in [128, 255]
MU_SHIFT = const(8)  # momentum coefficient in Q8


def ceil_log2(n):
    # smallest k with 2**k >= n (n >= 1)
    k = 0
    while (1 << k) < n:
        k += 1
    return k


def sat16(x):
    if x > Q_MAX:
        return Q_MAX
    if x < -Q_MAX:
        return -Q_MAX
    return x


def rshift_round(x, s):
    if s <= 0:
        return x
    return (x >> s) + ((x >> (s - 1)) & 1)


def requant(acc, s):
    # acc (a small int) scaled down by 2**s, rounded half up, saturated to int16.
    # s < 0 scales up: saturate before shifting so the shift cannot leave the range.
    if s > 0:
        return sat16((acc >> s) + ((acc >> (s - 1)) & 1))
    if s == 0:
        return sat16(acc)
    # for s <= -15 every non-zero acc saturates; keep lim >= 1 so that zero stays zero
    lim = 32768 >> -s if s > -15 else 1
    if acc >= lim:
        return Q_MAX
    if acc <= -lim:
        return -Q_MAX
    return sat16(acc << -s)


# 30-bit xorshift, triple (9, 11, 12): full period 2**30 - 1 (checked in the tests by the
# order of its GF(2) matrix). Left shifts are masked first so no value reaches 2**30.
_M30 = const(0x3FFFFFFF)


def xorshift30(s):
    s ^= (s & (_M30 >> 9)) << 9
    s ^= s >> 11
    s ^= (s & (_M30 >> 12)) << 12
    return s


def seed30(seed):
    # any integer seed -> a valid non-zero state
    s = seed & _M30
    if s == 0:
        s = 0x2545F491
    return s


def mean_lr_shift(q):
    # q = (lr_m << 22) // count; the shift t that brings q to an 8-bit mantissa
    # (rshift_round(q, t) in [128, 256]). The mean learning rate is then
    # rshift_round(q, t) * 2**-(lr_e + 22 - t).
    t = 0
    while (q >> t) >= 256:
        t += 1
    return t
