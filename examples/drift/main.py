# The drift demo's board program: a net that learns on the board, with no host. `python
# examples/drift.py` deploys it as the board's main.py, beside edgebp, the net (drift.ebp)
# and the simulated sensor (sensor.py); from then on it runs at every power-on by itself.
#
# It reads the sensor, predicts the machine's state from each reading, and learns when a
# label arrives (with every other reading). Every EVAL_EVERY readings it scores itself, and
# a frozen copy of the net it started from, on HELD held-out readings judged by the rule of
# that moment; it checkpoints after every CKPT_EVERY weight updates. After a power cut it goes
# on from its newest checkpoint, the sensor's time recovered from the samples it had learned.
# What it finds goes to drift.log (and the console, which nobody need read):
#     boot T                    started (again) at reading T
#     T LEARNER FROZEN HELD     held-out readings each net got wrong at reading T, of HELD
#     done                      END readings seen; a later boot does nothing more
import os

from edgebp import imports

# the kernels and the engine first, packed, while the heap is whole (edgebp/imports.py)
imports.packed((None, "edgebp.fixed", "edgebp.luts", "edgebp.net", "edgebp.ebp",
                "edgebp.ckpt", "edgebp.learner", "sensor"))

from sensor import Sensor  # noqa: E402

from edgebp.learner import Learner  # noqa: E402

NET = "drift.ebp"
LOG = "drift.log"
CKPT = "drift_ckpt"
END = 9000
LABEL_EVERY = 2
EVAL_EVERY = 500
HELD = 200
HELD_SEED = 7
CKPT_EVERY = 200


def log(line):
    print("drift: " + line)
    with open(LOG, "a") as f:
        f.write(line + "\n")


def held_out(nets, t, x):
    # the same HELD readings each time, labelled by the rule at time t
    h = Sensor(HELD_SEED)
    for ln in nets:
        ln.reset()
    for _ in range(HELD):
        c = h.read(x, t)
        for ln in nets:
            ln.evaluate(x, c)
    return "%d %d %d %d" % (t, nets[0].seen - nets[0].correct, nets[1].seen - nets[1].correct,
                            HELD)


def main():
    try:
        os.mkdir(CKPT)
    except OSError:
        pass  # there already
    ln = Learner(NET, CKPT)
    ln.restore()
    ln.checkpoint_every(CKPT_EVERY)
    t = ln.samples * LABEL_EVERY
    if t >= END:
        return
    frozen = Learner(NET)  # the net as deployed: it never learns
    log("boot %d" % t)
    x = [0, 0]
    s = Sensor().at(t)
    saved = ln.generation
    while t < END:
        if t % EVAL_EVERY == 0:
            log(held_out((ln, frozen), t, x))
        c = s.read(x)
        ln.predict(x)  # what the program would act on
        if t % LABEL_EVERY == LABEL_EVERY - 1:  # the label arrives
            ln.learn(x, c)
            if ln.generation != saved:
                saved = ln.generation
                print("drift: checkpoint %d at %d" % (saved, t + 1))
        t += 1
    ln.checkpoint()
    log(held_out((ln, frozen), t, x))
    log("done")


main()
