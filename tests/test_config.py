"""Config: presets, strict keys with close matches, types, dotted overrides, malformed YAML."""

from __future__ import annotations

import pytest

from bench.config import SweepConfig, from_dict, load_yaml
from bench.errors import UsageError
from bench.sweep.settings import load_preset, parse_override, preset_names, resolved_schedule


def test_defaults_are_the_paper_protocol():
    cfg = SweepConfig()
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.nesterov, cfg.optim.weight_decay) == (0.1, 0.9, True, 5e-4)
    assert cfg.optim.milestones is None and cfg.epochs == 300 and cfg.data.batch_size == 128  # from the fractions:
    assert resolved_schedule(cfg) == ([150, 225], 80.0)


def test_presets_load_and_differ():
    assert {"demo", "paper", "imagenet"} <= set(preset_names())
    demo = from_dict(SweepConfig, load_preset("demo"))
    paper = from_dict(SweepConfig, load_preset("paper"))
    assert demo.datasets == ["digits"] and paper.epochs == 300 and "cifar_resnet110" in paper.backbones
    with pytest.raises(UsageError, match="did you mean 'paper'"):
        load_preset("papr")


def test_unknown_key_is_rejected_with_a_close_match():
    with pytest.raises(UsageError, match=r"unknown key 'lrr'; did you mean 'lr'"):
        from_dict(SweepConfig, {"optim": {"lrr": 0.1}})
    with pytest.raises(UsageError, match="did you mean 'epochs'"):
        from_dict(SweepConfig, {"epoch": 3})


@pytest.mark.parametrize("data,message", [
    ({"epochs": "five"}, "expected an integer"), ({"optim": {"nesterov": "yes"}}, "expected true or false"),
    ({"seeds": ["a"]}, "expected an integer"), ({"optim": 3}, "expected a mapping"),
])
def test_wrong_types_are_rejected(data, message):
    with pytest.raises(UsageError, match=message):
        from_dict(SweepConfig, data)


def test_overrides_nest_and_merge():
    cfg = from_dict(SweepConfig, load_preset("demo"))
    for text in ("optim.lr=0.05", "optim.milestones=[3,4]", "pcl.temperature=4", "compute.amp=off"):
        cfg = from_dict(SweepConfig, parse_override(text, ["pcl"]), base=cfg)
    assert cfg.optim.lr == 0.05 and cfg.optim.milestones == [3, 4] and cfg.compute.amp == "off"
    assert cfg.options == {"pcl": {"temperature": 4}}
    assert cfg.optim.momentum == 0.9  # untouched siblings keep their values
    with pytest.raises(UsageError, match="key=value"):
        parse_override("optim.lr", [])


def test_malformed_yaml_names_its_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: 3\noptim:\n  lr: [0.1\n  momentum: 0.9\n")
    with pytest.raises(UsageError, match=r"malformed YAML in .*bad.yaml line \d+"):
        load_yaml(path)
