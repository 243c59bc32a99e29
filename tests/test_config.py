import pytest

from mrisr.config import from_dict, load_config, parse_override
from mrisr.errors import ConfigError
from mrisr.evaluation.harness import EvaluateConfig


def test_unknown_keys_are_named_with_their_path(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'scalez'"):
        from_dict(EvaluateConfig, {"scalez": [2]})
    with pytest.raises(ConfigError, match=r"unknown key 'dataset.rooot'"):
        from_dict(EvaluateConfig, {"dataset": {"rooot": "x"}})
    with pytest.raises(ConfigError, match=r"unknown key 'methods\[1\].arg'"):
        from_dict(EvaluateConfig, {"methods": [{"name": "cubic"}, {"name": "x", "arg": 1}]})


def test_types_and_values_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="'slice_axis' must be an integer"):
        from_dict(EvaluateConfig, {"slice_axis": "z"})
    with pytest.raises(ConfigError, match="scales must be numbers from 1"):
        from_dict(EvaluateConfig, {"scales": [2, -1]})
    with pytest.raises(ConfigError, match="unknown degradation"):
        from_dict(EvaluateConfig, {"degradation": "blur"})
    with pytest.raises(ConfigError, match="reference type"):
        from_dict(EvaluateConfig, {"references": ["hd"]})
    cfg = from_dict(EvaluateConfig, {"scales": [2, [1, 1, 4]], "references": ["hr", "2.5"]})
    assert cfg.scales == [2, [1, 1, 4]]


def test_yaml_loading_env_expansion_and_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("MRISR_DATA", "/data/here")
    path = tmp_path / "c.yaml"
    path.write_text("dataset: {kind: brats, root: '${MRISR_DATA}/brats'}\nscales: [2]\n")
    cfg = load_config(path, EvaluateConfig, overrides=parse_override("dataset.split=train"))
    assert cfg.dataset.root == "/data/here/brats" and cfg.dataset.split == "train"
    (tmp_path / "bad.yaml").write_text("scales: [2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(tmp_path / "bad.yaml", EvaluateConfig)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "none.yaml", EvaluateConfig)


def test_extends_merges_over_a_base_file_and_detects_cycles(tmp_path):
    (tmp_path / "base.yaml").write_text("scales: [2, 4]\ndataset: {kind: phantom, seed: 1}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\ndataset: {seed: 5}\n")
    cfg = load_config(tmp_path / "child.yaml", EvaluateConfig)
    assert cfg.scales == [2, 4] and cfg.dataset.seed == 5 and cfg.dataset.kind == "phantom"
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml", EvaluateConfig)
