# The drift demo's simulated sensor: two channels of a 12-bit ADC (raw integers 0..4095) and
# a label that says whether the machine is in state 1 or 0. The rule between them drifts:
# state 1 when b - a > offset(t), the offset moving from -SPAN to +SPAN over DRIFT readings,
# so a net fitted at the start misjudges more and more readings as time goes on.
#
# The readings come from a 30-bit xorshift (edgebp/fixed.py): the same on the board and on
# the host, and the same again after a power cut, since at(t) steps a new stream to time t.
# Held-out readings come from streams of their own (another seed). Integers only, every value
# below 2**30: nothing allocates on a 32-bit board.

from edgebp.fixed import seed30, xorshift30

SPAN = 1200
DRIFT = 6000


def offset(t):
    if t > DRIFT:
        t = DRIFT
    return -SPAN + (2 * SPAN * t) // DRIFT


class Sensor:
    def __init__(self, seed=1):
        self.seed = seed
        self.s = seed30(seed)
        self.t = 0

    def at(self, t):
        """Go to time t (from the start of the stream: two steps a reading)."""
        self.s = seed30(self.seed)
        for _ in range(2 * t):
            self.s = xorshift30(self.s)
        self.t = t
        return self

    def read(self, x, t=-1):
        """Fill x with the two channels of the next reading; returns its label, by the rule
        at time t (the stream's own time if t < 0)."""
        s = xorshift30(self.s)
        a = s & 4095
        s = xorshift30(s)
        self.s = s
        b = s & 4095
        x[0] = a
        x[1] = b
        if t < 0:
            t = self.t
        self.t += 1
        return 1 if b - a > offset(t) else 0
