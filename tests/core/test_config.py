"""Config loading: defaults, YAML, dotted overrides, and one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtlkit.catalog import presets
from mtlkit.config import apply_overrides, load_config
from mtlkit.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_shipped_configs_load() -> None:
    for path in presets("config").values():
        cfg = load_config(path)
        assert cfg.train.epochs >= 1, path


def test_paper_settings_in_shipped_configs() -> None:
    nyu = load_config(presets()["nyuv2_mtan"])
    assert (nyu.optim.name, nyu.optim.lr, nyu.optim.step_size, nyu.optim.gamma) == ("adam", 1e-4, 100, 0.5)
    assert (nyu.train.epochs, nyu.train.batch_size) == (200, 2)
    city = load_config(presets()["cityscapes_mtan"])
    assert (city.train.epochs, city.train.batch_size, city.dataset.num_classes) == (200, 8, 7)


def test_overrides_are_typed(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, "train:\n  epochs: 3\n"),
        [
            "optim.lr=1e-3",
            "train.epochs=5",
            "model.arch=split_wide",
            "weighting.options.temperature=3",
            "dataset.tasks=[segmentation, depth]",
            "train.compile=true",
        ],
    )
    assert cfg.optim.lr == pytest.approx(1e-3)
    assert cfg.train.epochs == 5
    assert cfg.model.arch == "split_wide"
    assert cfg.weighting.options == {"temperature": 3}
    assert cfg.dataset.tasks == ["segmentation", "depth"]
    assert cfg.train.compile is True


@pytest.mark.parametrize(
    ("text", "overrides", "needle"),
    [
        ("train:\n  epoch: 3\n", [], "train.epoch: unknown key"),
        ("bogus: 1\n", [], "bogus: unknown key"),
        ("train:\n  epochs: many\n", [], "train.epochs"),
        ("optim:\n  lr: -1\n", [], "optim.lr"),
        ("seed: 0\n", ["train.batch_size=0"], "train.batch_size"),
        ("seed: 0\n", ["weighting.mode=sideways"], "weighting.mode"),
        ("", ["trainepochs"], "key=value"),
        ("train: [1, 2]\n", [], "train"),
        ("- a\n- b\n", [], "top level must be a mapping"),
        ("train:\n  epochs: [\n", [], "invalid YAML"),
    ],
)
def test_bad_config_is_one_line_naming_the_key(tmp_path: Path, text: str, overrides: list[str], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), overrides)
    msg = str(err.value)
    assert needle in msg
    assert "\n" not in msg
    assert "c.yaml" in msg or not text


def test_missing_config_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_override_into_a_value_is_rejected() -> None:
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"train": 3}, ["train.epochs=2"])


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    from mtlkit.config import save_config

    cfg = load_config(None, ["model.width=0.5", "seed=3"])
    save_config(cfg, tmp_path / "out.yaml")
    again = load_config(tmp_path / "out.yaml")
    assert again == cfg
    assert again.hash() == cfg.hash()
    assert load_config(None, ["seed=4"]).hash() != cfg.hash()
