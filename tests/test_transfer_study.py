"""The transfer study's arms differ only in what they are meant to differ in."""
import importlib.util
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("run_study", os.path.join(REPO, "projects/TransferStudy/run_study.py"))
run_study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_study)
PRETRAIN = os.path.join(REPO, "projects/TransferStudy/configs/pretrain.yaml")


def test_arms_differ_only_in_their_overrides():
    found = run_study.check_arms(PRETRAIN, list(run_study.ARMS))
    assert found["plrc"] == []
    assert found["moco_v2"] == ["MODEL.PLRC.DISTILL_LOSS_WEIGHT", "MODEL.PLRC.POINT_LOSS_WEIGHT"]
    assert found["plrc_no_distill"] == ["MODEL.PLRC.DISTILL_LOSS_WEIGHT"]
    assert found["plrc_all_regions"] == ["INPUT.PLRC.NUM_SHARED_REGIONS"]
    assert found["plrc_felzenszwalb"] == ["INPUT.PLRC.REGION_SOURCE"]
    assert "random_init" not in found


def _write_run(root, arm, seed, stage, opts):
    folder = os.path.join(root, arm, "pretrain") if stage == "pretrain" else os.path.join(root, arm, f"seed{seed}", stage)
    os.makedirs(folder)
    cfg = run_study.load_cfg(PRETRAIN, opts + ["OUTPUT_DIR", folder, "SEED", str(seed)])
    with open(os.path.join(folder, "config.yaml"), "w") as f:
        f.write(cfg.dump())


def test_run_configs_checked(tmp_path):
    root = str(tmp_path)
    _write_run(root, "plrc", 0, "pretrain", [])
    _write_run(root, "moco_v2", 0, "pretrain", run_study.ARMS["moco_v2"])
    _write_run(root, "plrc_no_distill", 0, "pretrain", run_study.ARMS["plrc_no_distill"] + ["SOLVER.BASE_LR", "0.1"])
    assert run_study.check_run_configs(root, ["plrc", "moco_v2"], [0]) == 1
    for arm in ("plrc", "moco_v2"):  # fine-tunes: identical up to the run keys, whatever the arm
        _write_run(root, arm, 1, "finetune", [])
    assert run_study.check_run_configs(root, ["plrc", "moco_v2"], [0, 1]) == 2
    with pytest.raises(AssertionError, match="SOLVER.BASE_LR"):
        run_study.check_run_configs(root, ["plrc", "moco_v2", "plrc_no_distill"], [0])


def test_summary_mean_and_std():
    records = [{"arm": "plrc", "seed": s, "bbox/AP": ap, "bbox/AP50": 0.0, "bbox/AP75": 0.0, "segm/AP": 1.0}
               for s, ap in enumerate([1.0, 2.0, 3.0])]
    table = run_study.summarise(records, ["plrc"])
    assert table["plrc"]["bbox/AP"] == pytest.approx((2.0, 1.0))
    assert table["plrc"]["segm/AP"] == pytest.approx((1.0, 0.0))
    assert table["plrc"]["seeds"] == [0, 1, 2]


def test_pretrain_curve_first_and_last(tmp_path):
    from plrc_d2.engine.results import first_and_last

    lines = ['{"iteration": 19, "loss_plrc_image": 4.0, "plrc_image_acc": 0.0}', "not json (killed mid-write)",
             '{"iteration": 39, "loss_plrc_image": 3.0}', '{"iteration": 59, "loss_plrc_image": 2.5, "plrc_image_acc": 0.5}']
    (tmp_path / "metrics.json").write_text("\n".join(lines) + "\n")
    got = first_and_last(str(tmp_path), ("loss_plrc_image", "plrc_image_acc", "loss_plrc_point"))
    assert got == {"loss_plrc_image": (4.0, 2.5), "plrc_image_acc": (0.0, 0.5)}


def test_reports_written(tmp_path):
    import argparse

    records = [{"arm": arm, "seed": s, "bbox/AP": 1.0 + s, "bbox/AP50": 2.0, "bbox/AP75": 0.5, "segm/AP": 0.7,
                "finetune_s": 10.0} for arm in ("plrc", "random_init") for s in (0, 1)]
    table = run_study.summarise(records, ["plrc", "random_init"])
    meta = {"date": "d", "command": "c", "commit": "abc", "machine": "m", "wall_time_min": 1.0, "pretrain_seed": 0,
            "pretrain_curves": {"plrc": {"loss_plrc_image": (4.0, 2.5)}}}
    args = argparse.Namespace(output=str(tmp_path), pretrain_config="p.yaml", pretrain_opts=[], finetune_config="f.yaml",
                              finetune_opts=[])
    run_study.write_reports(args, records, table, meta)
    md = (tmp_path / "results.md").read_text()
    assert "| plrc | 2 | 1.50 ± 0.71 |" in md and "| random_init | 2 |" in md
    assert "| plrc | 4.000 -> 2.500 | - |" in md
    assert (tmp_path / "results.png").stat().st_size > 0 and (tmp_path / "results.json").exists()


def test_missing_config_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="--pretrain-config .*nope.yaml: no such config file"):
        run_study.main(["--check-only", "--pretrain-config", str(tmp_path / "nope.yaml")])
