"""Write the example datasets as CSV files (run once; the files are committed, so the examples
and the `edgebp` command need no scikit-learn).

    python examples/data/make_data.py

xor.csv          the four XOR samples: x1, x2, xor
iris.csv         scikit-learn's bundled iris (150 samples, 4 features in cm, species 0..2)
iris_train.csv   iris without every fifth sample (120); iris_test.csv: every fifth (30, 10 of
                 each species, as the file is sorted by species)
digits_train.csv scikit-learn's bundled 8x8 digits (pixels 0..16, then the digit), without
digits_test.csv  every fifth sample (1438) / every fifth (359)
"""

from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits, load_iris

HERE = Path(__file__).resolve().parent


def write(name: str, header: list[str], X: np.ndarray, y: np.ndarray, fmt: str) -> None:
    with open(HERE / name, "w") as f:
        f.write(",".join(header) + "\n")
        for x, label in zip(X, y, strict=True):
            f.write(",".join(format(v, fmt) for v in x) + f",{int(label)}\n")


def write_split(stem: str, header: list[str], X: np.ndarray, y: np.ndarray, fmt: str) -> None:
    test = np.arange(len(X)) % 5 == 4
    write(f"{stem}_train.csv", header, X[~test], y[~test], fmt)
    write(f"{stem}_test.csv", header, X[test], y[test], fmt)


def main() -> None:
    write("xor.csv", ["x1", "x2", "xor"], np.array([[0, 0], [0, 1], [1, 0], [1, 1]]),
          np.array([0, 1, 1, 0]), "d")

    iris = load_iris()
    header = [n.replace(" (cm)", "").replace(" ", "_") for n in iris.feature_names]
    header.append("species")
    write("iris.csv", header, iris.data, iris.target, "g")
    write_split("iris", header, iris.data, iris.target, "g")

    digits = load_digits()
    header = [f"p{i}" for i in range(64)] + ["digit"]
    write_split("digits", header, digits.data.astype(int), digits.target, "d")


if __name__ == "__main__":
    main()
