"""Datasets and float weights as files: what `edgebp` reads from its user and writes back.

Datasets
  CSV  one sample per line, comma-separated. An optional first line whose fields are all
       not numbers names the columns; blank lines and lines starting with # are skipped.
       The targets are one column (default: the last): a class index or class name for a
       softmax_ce net, else a number; a bce or mse net with n outputs takes n columns, by
       default the last n. Every other column is an input, in file order.
  NPZ  arrays X (N, n_in) and y (N,) or (N, n_targets).

Float weights (NPZ): W0, B0, W1, B1, ... in float64 acting on raw inputs (the data's own
units, before the net's input normalisation) and, for a net with a target normalisation,
giving outputs in the targets' own units (folded into the last layer), W<l> of shape
(n_out, n_in), with the net's sizes, activations and loss alongside for whoever reads them.

Targets: class labels (softmax_ce, bce) or a continuous quantity (mse, a regression);
infer_task tells one from the other for `edgebp init --data` when the user does not.

Every problem is a DataError whose message names the file and, for one value, its line and
column (CSV, both counted from 1 as an editor shows them) or its array index (NPZ).
"""

from __future__ import annotations

import csv
import math
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgebp import fixed
from edgebp.host.nets.qnet import QuantNet


class DataError(ValueError):
    """A dataset or weights file the net cannot use, in one line that says where."""


@dataclass
class Dataset:
    X: np.ndarray  # (N, n_in) float64, raw inputs
    y: np.ndarray  # (N, n_targets) float64; class indices when the labels were names
    name: str  # the file, or what made the data
    columns: list[str]  # CSV: the header's names for X's columns then y's; else empty
    source_columns: list[int]  # CSV: file column (0-based) of X's columns then y's
    lines: np.ndarray | None = None  # CSV: the file line of each sample
    classes: list[str] = field(default_factory=list)  # the class names, if labels were names

    def __len__(self) -> int:
        return len(self.X)

    @property
    def n_in(self) -> int:
        return self.X.shape[1]

    def where(self, i: int, j: int, target: bool = False) -> str:
        """`file line 7, column 3 (petal_width)` or `file: X[6, 2]`: sample i, value j of its
        inputs (or of its targets)."""
        k = j + (self.n_in if target else 0)
        if self.lines is None:
            part = "y" if target else "X"
            index = f"[{i}]" if target and self.y.shape[1] == 1 else f"[{i}, {j}]"
            return f"{self.name}: {part}{index}"
        col = self.source_columns[k]
        named = f" ({self.columns[k]})" if self.columns else ""
        return f"{self.name} line {self.lines[i]}, column {col + 1}{named}"

    def subset(self, idx) -> Dataset:
        lines = None if self.lines is None else self.lines[idx]
        return Dataset(self.X[idx], self.y[idx], self.name, self.columns, self.source_columns,
                       lines, self.classes)


# -- reading --


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _number(text: str, where: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise DataError(f"{where}: {text!r} is not a number") from None
    if not math.isfinite(v):
        raise DataError(f"{where}: {text!r} is not a finite number")
    return v


def _label_start(label_column: str | None, header: list[str] | None, width: int,
                 n_targets: int, name: str) -> int:
    """0-based column of the first target: a header name, a column number counted from 1,
    or a negative number counted from the end (-1: the last)."""
    if label_column is None:
        start = width - n_targets
    elif label_column.lstrip("-").isdigit():
        k = int(label_column)
        if k == 0 or abs(k) > width:
            raise DataError(f"{name}: label column {k} does not exist: the file has {width} "
                            "columns (count from 1, or from -1 at the end)")
        start = k - 1 if k > 0 else width + k
    elif header is not None and label_column in header:
        start = header.index(label_column)
    else:
        where = f"columns {', '.join(header)}" if header else "no header line"
        raise DataError(f"{name}: no column named {label_column!r} ({where})")
    if start < 0 or start + n_targets > width:
        raise DataError(f"{name}: the net takes {n_targets} target columns from column "
                        f"{start + 1}, but the file has {width} columns")
    if width - n_targets < 1:
        raise DataError(f"{name}: {width} columns leave no input column beside "
                        f"{n_targets} target column{'s' if n_targets > 1 else ''}")
    return start


def _labels(texts: list[str], classes: list[str] | None, where) -> tuple[np.ndarray, list[str]]:
    # one target column holding class names (some field is not a number)
    names = classes if classes else sorted(set(texts))
    index = {c: k for k, c in enumerate(names)}
    out = np.empty(len(texts))
    for i, t in enumerate(texts):
        if t not in index:
            raise DataError(f"{where(i)}: {t!r} is not a number nor one of the net's classes "
                            f"({', '.join(names)})")
        out[i] = index[t]
    return out, list(names)


def read_csv(path: str | Path, label_column: str | None = None, n_targets: int = 1,
             classes: list[str] | None = None) -> Dataset:
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{name}: not a text (CSV) file") from None
    except OSError as e:
        raise DataError(f"{name}: {e.strerror or e}") from None
    rows, lines = [], []
    for no, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if s and not s.startswith("#"):
            rows.append([f.strip() for f in next(csv.reader([s]))])
            lines.append(no)
    header = None
    if rows and not any(_is_number(f) for f in rows[0]):
        header = rows.pop(0)
        lines.pop(0)
    if not rows:
        raise DataError(f"{name}: no samples" + (" after the header line" if header else
                                                 " (the file is empty)"))
    width = len(header) if header else len(rows[0])
    for r, no in zip(rows, lines, strict=True):
        if len(r) != width:
            what = "the header" if header else f"line {lines[0]}"
            raise DataError(f"{name} line {no}: {len(r)} columns, expected {width} "
                            f"(as {what} has)")
    start = _label_start(label_column, header, width, n_targets, name)
    t_cols = list(range(start, start + n_targets))
    x_cols = [c for c in range(width) if c not in t_cols]
    ds = Dataset(np.empty((len(rows), len(x_cols))), np.empty((len(rows), n_targets)), name,
                 [header[c] for c in x_cols + t_cols] if header else [], x_cols + t_cols,
                 np.array(lines))
    for i, r in enumerate(rows):
        for j, c in enumerate(x_cols):
            ds.X[i, j] = _number(r[c], ds.where(i, j))
    texts = [r[t_cols[0]] for r in rows]
    if n_targets == 1 and not all(_is_number(t) for t in texts):
        ds.y[:, 0], ds.classes = _labels(texts, classes, lambda i: ds.where(i, 0, True))
    else:
        for i, r in enumerate(rows):
            for j, c in enumerate(t_cols):
                ds.y[i, j] = _number(r[c], ds.where(i, j, True))
    return ds


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of an .npz file, or DataError in one line. A damaged zip reaches numpy
    and zipfile as any of a dozen exceptions (a bad header, a compression method they lack
    (NotImplementedError), a flag saying encrypted (RuntimeError), a corrupt deflate stream
    (zlib.error), a truncated member (EOFError), ...): each is a file that cannot be read."""
    name = str(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except IsADirectoryError:
        raise DataError(f"{name}: is a directory, not an .npz file") from None
    except FileNotFoundError as e:
        raise DataError(f"{name}: {e.strerror or e}") from None
    except MemoryError:
        raise DataError(f"{name}: not a readable .npz file (its arrays claim more memory "
                        "than there is)") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, NotImplementedError,
            RuntimeError, zlib.error, KeyError, struct.error, UnicodeDecodeError,
            OverflowError, TypeError) as e:
        why = str(e) or type(e).__name__
        raise DataError(f"{name}: not a readable .npz file ({why})") from None


def read_npz(path: str | Path, n_targets: int = 1) -> Dataset:
    name = str(path)
    arrays = load_npz(path)
    missing = [k for k in ("X", "y") if k not in arrays]
    if missing:
        raise DataError(f"{name}: no array {' or '.join(missing)} (it holds "
                        f"{', '.join(arrays) or 'nothing'}): save the inputs as X and the "
                        "targets as y")
    X, y = arrays["X"], arrays["y"]
    for part, a in (("X", X), ("y", y)):
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            raise DataError(f"{name}: {part} holds {a.dtype} values, not numbers")
    X = X.reshape(-1, 1) if X.ndim == 1 else X
    y = y.reshape(-1, 1) if y.ndim == 1 else y
    if X.ndim != 2 or y.ndim != 2:
        raise DataError(f"{name}: X must be (samples, inputs) and y (samples,) or (samples, "
                        f"targets), not {X.shape} and {y.shape}")
    if len(X) == 0:
        raise DataError(f"{name}: no samples")
    if len(X) != len(y):
        raise DataError(f"{name}: {len(X)} inputs in X but {len(y)} targets in y")
    if y.shape[1] != n_targets:
        raise DataError(f"{name}: y has {y.shape[1]} target columns, the net takes "
                        f"{n_targets}")
    ds = Dataset(X.astype(np.float64), y.astype(np.float64), name, [], [])
    for target, a in ((False, ds.X), (True, ds.y)):
        bad = ~np.isfinite(a)
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise DataError(f"{ds.where(i, j, target)} is {a[i, j]}, not a finite number")
    return ds


def read(path: str | Path, label_column: str | None = None, n_targets: int = 1,
         classes: list[str] | None = None) -> Dataset:
    """A dataset from a .csv or .npz file; `classes` names the class indices of labels given
    as names (default: their sorted distinct values)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".npz":
        if label_column is not None:
            raise DataError(f"{path}: --label-column is for CSV files (an .npz has X and y)")
        return read_npz(path, n_targets)
    if suffix in (".csv", ".txt", ""):
        return read_csv(path, label_column, n_targets, classes)
    raise DataError(f"{path}: unknown dataset format {suffix!r}: use .csv or .npz")


# -- checking a dataset against a net --


def check_width(ds: Dataset, n_in: int) -> None:
    if ds.n_in != n_in:
        what = "input columns" if ds.lines is not None else "columns in X"
        raise DataError(f"{ds.name}: {ds.n_in} {what}, the net takes {n_in} inputs")


def check_targets(ds: Dataset, loss: int, n_out: int, out_shift: int | None = None,
                  out_norm: tuple | None = None) -> None:
    """Class indices in 0..n_out-1 (softmax_ce), targets in [0, 1] (bce), or targets that fit
    the output format Q<out_shift> (mse; after the net's target normalisation
    out_norm = (out_offset, out_scale), if it has one)."""
    y = ds.y
    if loss == fixed.SOFTMAX_CE:
        col = y[:, 0]
        whole = col == np.floor(col)
        bad = ~whole | (col < 0) | (col >= n_out)
        if bad.any():
            i = int(np.argmax(bad))
            v = col[i]
            why = (f"class {v:g} is not a whole number" if not whole[i] else
                   f"class {v:g} outside 0..{n_out - 1}: the net has {n_out} outputs")
            raise DataError(f"{ds.where(i, 0, True)}: {why}")
    elif loss == fixed.BCE:
        bad = (y < 0) | (y > 1)
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise DataError(f"{ds.where(i, j, True)}: target {y[i, j]:g} outside [0, 1] "
                            "(a bce target is a probability)")
    elif out_shift is not None:
        lim = fixed.Q_MAX * 2.0**-out_shift
        if out_norm is None:
            bad = np.abs(y) > lim
            held = f"|t| <= {lim:.4g}"
        else:  # the net learns (t - offset) * scale
            offset, scale = np.broadcast_to(out_norm[0], (y.shape[1],)), out_norm[1]
            bad = np.abs((y - offset) * scale) > lim
            held = "t from " + ", ".join(f"{o - lim / scale:.4g} to {o + lim / scale:.4g}"
                                         for o in sorted(set(offset.tolist())))
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise DataError(f"{ds.where(i, j, True)}: target {y[i, j]:g} does not fit the "
                            f"output format Q{out_shift} ({held}): scale the targets or "
                            "declare a wider target_range in the spec")


def check_inputs(ds: Dataset, lo: np.ndarray, hi: np.ndarray, mode: str,
                 held: tuple[np.ndarray, np.ndarray] | None = None) -> str | None:
    """Inputs outside the declared range [lo, hi] (per input): `error` refuses them, `clip`
    clips them (in place) and `warn` keeps them; returns the warning to show, if any.
    `held`: the range the net's input format holds, beyond which kept inputs saturate."""
    X = ds.X
    # a range read back from a .ebp is computed (centre -+ 1/scale): off in its last bits
    slack = 1e-9 * (hi - lo)
    outside = (X < lo - slack) | (X > hi + slack)
    n = int(outside.sum())
    if not n:
        return None
    i, j = np.argwhere(outside)[0]
    side = f"below {lo[j]:g}" if X[i, j] < lo[j] else f"above {hi[j]:g}"
    what = (f"{n} input value{'s' if n > 1 else ''} outside the declared input range, the "
            f"first at {ds.where(i, j)}: {X[i, j]:g} {side}")
    if mode == "error":
        raise DataError(f"{what} (--out-of-range clip or warn to go on)")
    if mode == "clip":
        np.clip(X, lo, hi, out=X)
        return f"clipped {what}"
    note = f"{what}; kept"
    if held is not None:
        over = (X < held[0] - slack) | (X > held[1] + slack)
        if over.any():
            i, j = np.argwhere(over)[0]
            n = int(over.sum())
            note += (f", but {n} {'lies' if n == 1 else 'lie'} beyond what the input format "
                     f"holds and saturate{'s' if n == 1 else ''}, the first at {ds.where(i, j)} "
                     f"(it holds {held[0][j]:.4g} to {held[1][j]:.4g})")
    return note


# -- built-in data --

XOR_SPEC = {
    "sizes": [2, 4, 1],
    "activations": ["tanh", "sigmoid"],
    "loss": "bce",
    "input_range": {"min": 0, "max": 1},
    "optimizer": {"lr": 0.5, "batch": 1, "seed": 1},
    "batch_max": 4,  # gradient sums over all four samples: what `edgebp check` reads at once
}


def xor() -> Dataset:
    """The four XOR samples (the built-in example; XOR_SPEC is its net)."""
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float64)
    y = np.array([[0], [1], [1], [0]], np.float64)
    return Dataset(X, y, "built-in XOR", ["x1", "x2", "xor"], [0, 1, 2])


MAX_INFERRED_CLASSES = 32  # whole-number targets beyond 0..31 are taken for a quantity

TASKS = ("classification", "regression")


def infer_task(ds: Dataset) -> tuple[str, str]:
    """(task, why) for a dataset with one target column: "classification" when the targets
    are class names, or whole numbers 0..K-1 with K <= MAX_INFERRED_CLASSES that use at
    least half of those classes; otherwise "regression" (fractions, negative values, or
    whole numbers too many or too sparse to be class indices)."""
    if ds.classes:
        return "classification", f"class names ({', '.join(ds.classes)})"
    y = ds.y[:, 0]
    distinct = len(np.unique(y))
    lo, hi = float(y.min()), float(y.max())
    values = f"{distinct} distinct values from {lo:g} to {hi:g}"
    if not np.all(y == np.floor(y)):
        return "regression", f"{values}, not all whole numbers"
    if lo < 0:
        return "regression", f"{values}, some negative"
    k = int(hi) + 1
    if k < 2:
        return "regression", f"{values}: a single value"
    if k > MAX_INFERRED_CLASSES:
        return "regression", (f"{distinct} distinct whole numbers from {lo:g} to {hi:g}: too "
                              f"many for class indices (at most {MAX_INFERRED_CLASSES} "
                              "inferred)")
    if 2 * distinct < k:
        return "regression", (f"{distinct} distinct whole numbers from {lo:g} to {hi:g}: too "
                              f"sparse for class indices 0..{k - 1}")
    return "classification", f"class indices: whole numbers 0..{k - 1}"


def infer_spec(ds: Dataset, hidden: list[int], task: str | None = None) -> dict:
    """A spec (JSON layout) for a dataset with one target column: a classifier (relu hidden
    layers, softmax, softmax_ce) for class labels, else a regressor (tanh, identity output,
    mse, its target range the data's, normalised inside the net as the inputs are); the task
    as given, or as infer_task says. Inputs declared over the data's range per input."""
    y = ds.y[:, 0]
    if task is None:
        task = infer_task(ds)[0]
    lo, hi = ds.X.min(axis=0), ds.X.max(axis=0)
    flat = hi <= lo  # a constant input: any range holding it will do
    lo, hi = np.where(flat, lo - 1, lo), np.where(flat, hi + 1, hi)
    d: dict = {"input_range": {"min": lo.tolist(), "max": hi.tolist()},
               "optimizer": {"lr": 0.05, "batch": 8, "seed": 1}, "batch_max": 8}
    if task == "classification":
        if not ds.classes and not (np.all(y == np.floor(y)) and y.min() >= 0):
            bad = int(np.argmax((y != np.floor(y)) | (y < 0)))
            raise DataError(f"{ds.where(bad, 0, True)}: {y[bad]:g} is not a class index (a "
                            "whole number from 0): the targets are no class labels")
        n_out = max(len(ds.classes), int(y.max()) + 1, 2)
        d.update(sizes=[ds.n_in, *hidden, n_out], loss="softmax_ce",
                 activations=["relu"] * len(hidden) + ["softmax"])
        if ds.classes:
            d["classes"] = list(ds.classes)
    else:
        if ds.classes:
            raise DataError(f"{ds.name}: the targets are class names ({', '.join(ds.classes)})"
                            ": a regression needs numbers")
        t_lo, t_hi = float(y.min()), float(y.max())
        if t_hi <= t_lo:
            t_lo, t_hi = t_lo - 1, t_hi + 1
        d.update(sizes=[ds.n_in, *hidden, 1], loss="mse",
                 activations=["tanh"] * len(hidden) + ["identity"],
                 target_range={"min": t_lo, "max": t_hi}, normalise_targets=True)
    return d


# -- float weights --


def save_weights(path: str | Path, qnet: QuantNet) -> None:
    """qnet's weights as floats on raw inputs (the layout in this module's header)."""
    from edgebp.host.nets.quantize import dequantize

    Ws, Bs = dequantize(qnet, raw_inputs=True)
    arrays: dict[str, Any] = {
        "sizes": np.array(qnet.sizes),
        "activations": np.array([fixed.ACT_NAMES[a] for a in qnet.acts]),
        "loss": np.array(fixed.LOSS_NAMES[qnet.loss]),
    }
    for l, (w, b) in enumerate(zip(Ws, Bs, strict=True)):
        arrays[f"W{l}"] = w
        arrays[f"B{l}"] = b
    try:
        with open(path, "wb") as f:
            np.savez(f, **arrays)
    except OSError as e:
        raise DataError(f"{path}: {e.strerror or e}") from None


def load_weights(path: str | Path, sizes: list[int]) -> tuple[list[np.ndarray],
                                                              list[np.ndarray]]:
    """Float weights (W<l>, B<l> on raw inputs) for a net of these sizes."""
    arrays = load_npz(path)
    Ws: list[np.ndarray] = []
    Bs: list[np.ndarray] = []
    for l in range(len(sizes) - 1):
        for key, shape, out in ((f"W{l}", (sizes[l + 1], sizes[l]), Ws),
                                (f"B{l}", (sizes[l + 1],), Bs)):
            if key not in arrays:
                raise DataError(f"{path}: no array {key} (layer {l + 1} of a "
                                f"{'-'.join(map(str, sizes))} net)")
            a = arrays[key]
            if a.shape != shape and not (len(shape) == 1 and a.shape in ((1, shape[0]),
                                                                          (shape[0], 1))):
                raise DataError(f"{path}: {key} has shape {a.shape}, layer {l + 1} needs "
                                f"{shape}")
            if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
                raise DataError(f"{path}: {key} holds {a.dtype} values, not numbers")
            a = a.astype(np.float64).reshape(shape)
            if not np.all(np.isfinite(a)):
                raise DataError(f"{path}: {key} holds values that are not finite")
            out.append(a)
    return Ws, Bs
