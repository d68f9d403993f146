"""What a fleet run leaves behind: the final global net (.ebp), the per-round table as CSV
and its plot (.png; matplotlib, the `plot` extra), with centralised training beside it when
it is given."""

from __future__ import annotations

from pathlib import Path

from edgebp.ebp import EbpError
from edgebp.host.fleet.server import History
from edgebp.host.fleet.workload import FleetError, Workload
from edgebp.host.nets import ebpfile


def need_matplotlib(path: str) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise FleetError(f'{path}: a plot needs matplotlib: pip install "edgebp[plot]"'
                         ) from None


def write_net(path: str, history: History, workload: Workload) -> None:
    assert history.arrays is not None
    try:
        ebpfile.write(path, workload.net_with(history.arrays), workload.hyper)
    except (EbpError, OSError) as e:
        raise FleetError(f"{path}: {e}") from None


def write_csv(path: str, history: History, central: list[float] | None = None) -> None:
    try:
        with open(path, "w") as f:
            f.write("round,clients,samples,loss,accuracy,bytes_out,bytes_in,seconds"
                    + (",central_accuracy" if central else "") + "\n")
            for i, r in enumerate(history.rows):
                f.write(f"{r.round},{len(r.reported)},{r.samples},{r.loss:.6f},"
                        f"{r.accuracy:.6f},{r.bytes_out:.0f},{r.bytes_in:.0f},{r.seconds:.3f}"
                        + (f",{central[i]:.6f}" if central else "") + "\n")
    except OSError as e:
        raise FleetError(f"{path}: {e.strerror or e}") from None


def write_plot(path: str, history: History, central: list[float] | None = None,
               title: str = "") -> None:
    """Held-out loss and accuracy of the global net per round (and centralised training's
    accuracy after the same samples, if given)."""
    need_matplotlib(path)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r.round for r in history.rows]
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax_l.plot(rounds, [r.loss for r in history.rows], marker="o", label="fleet")
    ax_l.set(xlabel="round", ylabel="held-out loss (mean per sample)")
    ax_a.plot(rounds, [r.accuracy for r in history.rows], marker="o", label="fleet")
    if central:
        ax_a.plot(rounds, central, marker="s", label="centralised, same samples")
    ax_a.set(xlabel="round", ylabel="held-out accuracy")
    ax_a.set_ylim(0, 1.02)
    for ax in (ax_l, ax_a):
        ax.set_xticks(rounds)
    ax_a.legend(loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    except OSError as e:
        raise FleetError(f"{Path(path)}: {e.strerror or e}") from None
    finally:
        plt.close(fig)


def write_outputs(history: History, workload: Workload, out: str = "", curves: str = "",
                  central: list[float] | None = None) -> list[str]:
    """Write what was asked; the lines saying so."""
    said = []
    if out:
        write_net(out, history, workload)
        said.append(f"wrote {out} (the global net after round {history.rows[-1].round})")
    if curves:
        if curves.lower().endswith(".png"):
            write_plot(curves, history, central)
        else:
            write_csv(curves, history, central)
        said.append(f"wrote {curves} (per round)")
    return said
