"""The Adam bench runs end to end with tiny counts and prints its table (no accuracy asserted
beyond the row structure: the numbers are the bench's to report)."""

from edgebp.host.bench import adam as bench


def test_adam_bench_prints_its_table():
    lines: list[str] = []
    text = bench.run(splits=2, epochs=1, batch=8, out=lines.append)
    assert lines == [text]
    for column in bench.COLUMNS:
        assert column in text
    rows = [line.split() for line in text.splitlines()]
    body = [r for r in rows if r and r[0] in ("0", "1", "mean")]
    assert [(r[0], r[1]) for r in body] == [(s, h) for s in ("0", "1", "mean")
                                            for h in bench.HIDDEN]
    for r in body:
        f, x, gap = float(r[2][:-1]), float(r[3][:-1]), float(r[4])
        assert 0 <= f <= 100 and 0 <= x <= 100 and abs(f - x - gap) < 0.011


def test_optim_bench_has_fixed_adam_rows():
    from edgebp.host.bench import optim

    text = optim.run(seeds=1, sweep_seeds=1, budget=0.01, only=["XOR", "sin"], max_width=1,
                     out=lambda s: None)
    rows = [line for line in text.splitlines() if optim.FIXED in line]
    assert [r.split()[0] for r in rows] == ["XOR", "sin"]
    assert "%" in rows[0] and "RMSE" in rows[1]


def test_optim_bench_has_every_board_method_in_fixed_point():
    from edgebp.host.bench import optim

    text = optim.run(seeds=1, sweep_seeds=1, budget=0.01, only=["XOR", "iris"], max_width=1,
                     out=lambda s: None)
    for method in optim.FIXED_METHODS:
        rows = [line for line in text.splitlines() if f" {method} " in line and " lr " in line]
        assert [r.split()[0] for r in rows] == ["XOR", "iris"], method
    sdlm = [line for line in text.splitlines() if optim.SDLM in line]
    assert "mu 0.05, gamma 0.05" in sdlm[0]
    assert "SDLM (fixed) solved" in text
    sweep = [line for line in text.splitlines() if line.startswith("XOR") and "smallest" in line]
    # width 1 at a budget of 0.01: none solves it; a figure for each of LM, SGD and SDLM
    assert len(sweep) == 1 and sweep[0].count("> 1") == 3
