"""tools/benchmark.py data on a few images: one row per setting, consistent rates."""
from plrc_d2.benchmark.data import main


def test_data_benchmark_prints_a_row_per_setting(capsys):
    main(["--sources", "grid", "--shared-regions", "2", "--samples", "40", "--images", "4", "--crop-size", "64",
          "--points", "4"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("grid")]
    assert len(rows) == 1
    _, r, wall, cpu, ms, median, spread = rows[0]
    low, high = (float(v) for v in spread.strip("()").split("-"))
    assert r == "2" and float(wall) > 0 and abs(float(ms) - 1000 / float(cpu)) < 0.02
    assert low <= float(median) <= high
