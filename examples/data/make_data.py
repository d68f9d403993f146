"""Write the example datasets as CSV files (run once; the files are committed, so the examples,
the tests and the `edgebp` command need neither scikit-learn nor mnist1d).

    pip install scikit-learn mnist1d && python examples/data/make_data.py

xor.csv          the four XOR samples: x1, x2, xor
iris.csv         scikit-learn's bundled iris (150 samples, 4 features in cm, species 0..2)
iris_train.csv   iris without every fifth sample (120); iris_test.csv: every fifth (30, 10 of
                 each species, as the file is sorted by species)
digits_train.csv scikit-learn's bundled 8x8 digits (pixels 0..16, then the digit), without
digits_test.csv  every fifth sample (1438) / every fifth (359)
diabetes_train.csv scikit-learn's bundled diabetes, in its raw units (load_diabetes(scaled=False):
diabetes_test.csv  age, sex, bmi, bp, s1..s6), then the target: a measure of disease
                  progression one year on, whole numbers 25..346 (a regression target);
                  without every fifth sample (354) / every fifth (88)
mnist1d_train.csv MNIST-1D (pip package mnist1d, generated locally by make_dataset with its
mnist1d_test.csv  default arguments, seed 42): 40-sample signals x0..x39, then the digit; its
                  own split, the first 4000 / the last 1000. The package standardises the
                  signals (mean 0, std 1, all within -5.5..4.6). Two decimals (error at most
                  0.005; the iid noise the package adds has std 0.13 in these units) leave the
                  float reference where it was: 65.0% test accuracy against 65.3% at full
                  precision, mean of 10 seeds of examples/mnist1d.py whose seeds spread with
                  sd 1.6; one decimal cost 1.4 points (5 seeds).
"""

from pathlib import Path

import numpy as np
from mnist1d.data import get_dataset_args, make_dataset
from sklearn.datasets import load_diabetes, load_digits, load_iris

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

    diabetes = load_diabetes(scaled=False)
    write_split("diabetes", [*diabetes.feature_names, "progression"], diabetes.data,
                diabetes.target, "g")

    signals = make_dataset(get_dataset_args())  # local generation: nothing is downloaded
    header = [f"x{i}" for i in range(40)] + ["digit"]
    # + 0.0 turns the -0.0 of tiny negative values into 0.0, so "-0.00" is never written
    write("mnist1d_train.csv", header, np.round(signals["x"], 2) + 0.0, signals["y"], ".2f")
    write("mnist1d_test.csv", header, np.round(signals["x_test"], 2) + 0.0,
          signals["y_test"], ".2f")


if __name__ == "__main__":
    main()
