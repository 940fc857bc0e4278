"""tools/benchmark.py on tiny configs: every phase reports, the ratios follow from the medians, nonsense counts are
usage errors."""
import importlib
import json
import statistics

import pytest

from plrc_d2.benchmark.train import main


def test_train_benchmark_reports_phases(repo_root, monkeypatch, tmp_path):
    monkeypatch.chdir(repo_root)
    out, prof = tmp_path / "bench.json", tmp_path / "profile.txt"
    assert main(["--config-file", "configs/quick_schedules/plrc_R_18_quick.yaml", "--batch", "2", "--size", "32",
                 "--iters", "2", "--warmup", "0", "--device", "cpu", "--json", str(out), "--profile", str(prof),
                 "MODEL.PLRC.MAP_SIZE", "6"]) == 0
    res = json.loads(out.read_text())
    for phase in ("floor", "heads", "full"):
        r = res[phase]
        assert len(r["iter_times"]) == 2 and r["s_per_iter"] == statistics.median(r["iter_times"]) > 0
        assert r["images_per_s"] == 2 / r["s_per_iter"] and r["peak_mem_bytes"] >= 0
    assert res["time_ratio"] == res["full"]["s_per_iter"] / res["floor"]["s_per_iter"]
    assert res["round_time_ratios"] == [a / b for a, b in zip(res["full"]["iter_times"], res["floor"]["iter_times"])]
    table = prof.read_text()
    assert table.startswith("2 full steps, sorted by self_cpu_time_total") and "aten::" in table


def test_distill_benchmark_compares_implementations(tmp_path):
    from plrc_d2.benchmark.distill import main as distill_main

    out = tmp_path / "distill.json"
    assert distill_main(["--batch", "2", "--size", "64", "--map-size", "8", "--logits", "16", "--iters", "2",
                         "--warmup", "0", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    k = res["kernels"]
    assert set(k) == {"compiled", "torch"} and res["pairs"] > 0 and res["width"] == 64 + 16
    for r in k.values():
        assert len(r["times"]) == 2 and r["s_median"] == statistics.median(r["times"]) > 0
    assert abs(k["compiled"]["loss"] - k["torch"]["loss"]) <= 1e-5 * abs(k["torch"]["loss"])
    assert res["speedup_compiled_vs_torch"] == k["torch"]["s_median"] / k["compiled"]["s_median"]


@pytest.mark.parametrize("command, argv, message", [
    ("distill", ["--batch", "0"], "argument --batch: 0 is below the minimum 1"),
    ("distill", ["--size", "16"], "argument --size: 16 is below the minimum 32"),
    ("train", ["--iters", "0"], "argument --iters: 0 is below the minimum 1"),
    ("train", ["--warmup", "-1"], "argument --warmup: -1 is below the minimum 0"),
    ("data", ["--samples", "many"], "argument --samples: 'many' is not an integer"),
])
def test_benchmarks_reject_nonsense_counts(command, argv, message, capsys):
    module = importlib.import_module(f"plrc_d2.benchmark.{command}")
    with pytest.raises(SystemExit) as exc:
        module.main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err
