"""`bench speed` runs both paths side by side and writes the promised columns (no speed is asserted here:
speed goals live in the benchmark's output, not in unit tests)."""

from __future__ import annotations

import csv

from bench.cli import main
from bench.speed.paths import COLUMNS


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


def test_reference_rounds_hand_the_workers_exactly_the_batches_they_consume():
    """Each pass of the reference loader is one timed round: `steps` batches, no more, so its workers have
    nothing left to run (or prefetch) while the harness is timed."""
    import numpy as np
    import torch

    from bench.speed.paths import reference_data_rate, reference_loader

    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8), rng.integers(0, 100, 40)
    loader = reference_loader(images, labels, views=3, batch_size=8, workers=1, batches_per_pass=3)
    for _ in range(2):
        batches = list(loader)
        assert len(batches) == 3
        views, target = batches[0]
        assert len(views) == 3 and views[0].shape == (8, 3, 32, 32) and target.shape == (8,)
        assert not torch.equal(views[0], views[1])  # independent augmentations of the same images
    assert reference_data_rate(loader, torch.device("cpu"), 8, data_batches=2, repeats=1) > 0
    assert len(list(loader)) == 3  # the round length is restored after the data-only passes
