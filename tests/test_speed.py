"""`bench speed` runs both paths side by side and writes the promised columns (no speed is asserted here:
speed goals live in the benchmark's output, not in unit tests)."""

from __future__ import annotations

import csv

from bench.cli import main
from bench.speed import COLUMNS


def test_bench_speed_writes_its_table_and_csv(tmp_path, capsys):
    out = tmp_path / "speed.csv"
    assert main(["speed", "--methods", "vanilla,pcl", "--backbones", "cifar_resnet8", "--device", "cpu",
                 "--batch-size", "16", "--rounds", "1", "--steps", "1", "--workers", "0", "--csv", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["method"] for r in rows] == ["vanilla", "pcl"]
    for column in ("method", "backbone", "device", "harness_img_s", "reference_img_s", "speedup", "data_speedup"):
        assert column in rows[0]
    assert set(COLUMNS) == set(rows[0])
    for row in rows:
        assert float(row["harness_img_s"]) > 0 and float(row["reference_img_s"]) > 0
        assert float(row["speedup"]) == float(row["harness_img_s"]) / float(row["reference_img_s"])
        assert float(row["train_gflop_per_img"]) > 0
    assert float(rows[1]["train_gflop_per_img"]) > 2 * float(rows[0]["train_gflop_per_img"])  # 3 peers + teacher
    assert "speedup" in capsys.readouterr().out


def test_bench_speed_rejects_unknown_method(capsys):
    assert main(["speed", "--methods", "pcll"]) == 2
    assert "did you mean 'pcl'" in capsys.readouterr().err
