"""Spec fields of a few small nets, shared by the quantiser and range-analysis tests."""

from __future__ import annotations

XOR = dict(sizes=[2, 4, 1], activations=["tanh", "sigmoid"], loss="bce",
           input_range={"min": 0, "max": 1}, optimizer={"lr": 0.5})


def iris_like(act: str = "relu", **extra) -> dict:
    d = dict(sizes=[4, 16, 3], activations=[act, "softmax"], loss="softmax_ce",
             input_range={"min": [4.3, 2.0, 1.0, 0.1], "max": [7.9, 4.4, 6.9, 2.5]},
             optimizer={"lr": 0.05, "momentum": 0.9, "batch": 8, "rounding": "stochastic"},
             batch_max=8)
    d.update(extra)
    return d


def regression(**extra) -> dict:
    d = dict(sizes=[3, 5, 4, 2], activations=["leaky_relu", "tanh", "identity"], loss="mse",
             input_range={"min": -2.0, "max": [1.0, 2.0, 3.0]},
             target_range={"min": -3.0, "max": 3.0},
             optimizer={"lr": 0.02, "momentum": 0.5, "weight_decay": 0.01, "batch": 3},
             batch_max=3)
    d.update(extra)
    return d
