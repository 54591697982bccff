"""Presets shipped in the package: found from any folder, described, shown resolved; a file wins over a name."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import pytest
import yaml

from mtlkit import catalog
from mtlkit import sweep as sweeps
from mtlkit.cli.main import main
from mtlkit.config import load_config
from mtlkit.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = catalog.presets("config")
SWEEPS = catalog.presets("sweep")


def test_the_documented_presets_exist() -> None:
    assert {"demo", "nyuv2_mtan", "cityscapes_mtan", "decathlon", "decathlon_cpu"} <= set(CONFIGS)
    assert {"nyuv2_paper", "cityscapes_paper", "scenes_paper_cpu"} <= set(SWEEPS)
    assert all(p.parent == catalog.PRESET_DIR for p in CONFIGS.values())
    assert all(p.parent == catalog.PRESET_DIR / "sweeps" for p in SWEEPS.values())


@pytest.mark.parametrize("kind", ["config", "sweep"])
def test_every_preset_has_a_one_line_description(kind: str) -> None:
    """The rule `mtlkit list` relies on: a config's first comment paragraph, a sweep's description key."""
    for path in catalog.presets(kind).values():
        text = catalog.description(path, kind)
        assert text, f"{path}: no description ({'description: key' if kind == 'sweep' else 'leading # comment'})"
        assert len(text) <= 120 and "\n" not in text, f"{path}: description longer than one line: {text!r}"


def test_description_is_the_first_comment_paragraph(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("# One line that says it.\n# and its second line\n#\n# Details nobody lists.\nname: x\n")
    assert catalog.description(p) == "One line that says it. and its second line"
    p.write_text("name: x\n# a comment after the first key is not a description\n")
    assert catalog.description(p) == ""
    s = tmp_path / "s.yaml"
    s.write_text("# comment\nname: s\ndescription: >-\n  folded\n  text\n")
    assert catalog.description(s, "sweep") == "folded text"


def test_every_sweep_preset_expands_from_its_package_folder() -> None:
    for name, path in SWEEPS.items():
        runs = sweeps.load_sweep(path).runs()
        assert runs, name


def test_presets_resolve_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert catalog.resolve("demo") == CONFIGS["demo"]
    assert catalog.resolve("nyuv2_paper", "sweep") == SWEEPS["nyuv2_paper"]
    assert load_config(catalog.resolve("demo")).name == "demo"


def test_a_file_wins_over_a_preset_of_the_same_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").write_text("name: mine\ntrain:\n  epochs: 3\n")
    assert catalog.resolve("demo") == Path("demo")
    assert load_config(catalog.resolve("demo")).name == "mine"


@pytest.mark.parametrize(
    ("arg", "kind", "needle"),
    [
        ("nope", "config", "nope: config file not found, nor a config preset of this name (config presets: "),
        ("configs/demo.yaml", "config", "did you mean the config preset `demo`?"),
        ("nope", "sweep", "nope: sweep file not found, nor a sweep preset of this name (sweep presets: "),
        ("nyuv2_paper", "config", "nyuv2_paper: not a config preset but a sweep preset"),
        ("demo", "sweep", "demo: not a sweep preset but a config preset"),
    ],
)
def test_unknown_name_is_a_config_error_listing_presets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arg: str, kind: str, needle: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        catalog.resolve(arg, kind)
    assert needle in str(err.value)


def test_sweep_base_may_name_a_preset(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("base: demo\ngrid:\n  model.arch: [mtan, split_wide]\n")
    runs = sweeps.load_sweep(f).runs()
    assert [r.config.model.width for r in runs] == [0.125, 0.125]
    assert runs[0].config.dataset.height == load_config(CONFIGS["demo"]).dataset.height


def test_config_show_prints_the_resolved_config(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["config", "show", "demo", "train.epochs=2", "model.arch=split_wide"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# demo: MTAN + equal weighting")
    shown = yaml.safe_load(out)
    expected = load_config(CONFIGS["demo"], ["train.epochs=2", "model.arch=split_wide"])
    assert shown == expected.to_dict()
    (tmp_path / "mine.yaml").write_text(out)
    assert load_config(tmp_path / "mine.yaml").hash() == expected.hash()


def test_config_show_bad_override_is_one_line(capsys: pytest.CaptureFixture) -> None:
    assert main(["config", "show", "demo", "train.epochz=2"]) == 2
    assert capsys.readouterr().err.strip() == "mtlkit: error: " + str(CONFIGS["demo"]) + ": train.epochz: unknown key"


def test_list_shows_presets_with_descriptions(capsys: pytest.CaptureFixture) -> None:
    assert main(["list", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert table["presets"] == {n: catalog.description(p) for n, p in CONFIGS.items()}
    assert table["sweep presets"]["nyuv2_paper"].startswith("MTAN paper NYUv2 table")
    assert main(["list"]) == 0
    text = capsys.readouterr().out
    assert "\npresets:\n" in text and "  demo " in text and "\nsweep presets:\n" in text


def test_help_says_a_path_wins(capsys: pytest.CaptureFixture) -> None:
    for cmd in (["train", "--help"], ["sweep", "--help"], ["config", "show", "--help"]):
        with pytest.raises(SystemExit):
            main(cmd)
        assert "file wins over a preset" in " ".join(capsys.readouterr().out.split()), cmd


def test_package_data_covers_every_preset() -> None:
    """pyproject's package-data patterns match every preset file, so the wheel carries them all."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["mtlkit"]
    package = catalog.PRESET_DIR.parent
    for path in [*CONFIGS.values(), *SWEEPS.values()]:
        rel = path.relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(rel, pat) for pat in patterns), rel


#: every preset's config hash as mtlkit 0.1 computes it (a sweep: of its runs' hashes in order); a change here
#: changes what results.json and reports say a run was, so it needs a CHANGELOG line
PRESET_HASHES = {
    "cityscapes_mtan": "b5181086e05e",
    "cityscapes_resnet50": "ef50456055c0",
    "decathlon": "dd2c49c5c75f",
    "decathlon_cpu": "cab36b6ac9e0",
    "demo": "9a8ce0f66121",
    "nyuv2_cross_stitch": "18ea52b0dee0",
    "nyuv2_mtan": "04dfb84b2dda",
    "nyuv2_resnet50": "c375e8572da0",
}
SWEEP_HASHES = {
    "cityscapes_paper": "e83efbe1b9af",
    "complexity_cityscapes": "502ea4cba700",
    "complexity_scenes": "2ac5361cdcc5",
    "complexity_scenes_seeds": "af1219b40a21",
    "decathlon": "33bb7964a5d7",
    "decathlon_cpu": "5ce579eab822",
    "nyuv2_cross_stitch_alpha_init": "4f7b53e55df1",
    "nyuv2_cross_stitch_alpha_lr": "ce25035aff3a",
    "nyuv2_cross_stitch_init": "027e5a4fc44f",
    "nyuv2_cross_stitch_split": "3cd63c9c801c",
    "nyuv2_paper": "c1a1697e39d4",
    "nyuv2_resnet50": "9e61e9f9a9aa",
    "scenes_cross_stitch_cpu": "a448080a1389",
    "scenes_paper_cpu": "3fc88921d190",
    "scenes_paper_cpu_long": "4dda0df30a23",
    "scenes_paper_cpu_seeds": "5546c9d65135",
    "scenes_resnet18_cpu": "ebc7b93953a0",
    "scenes_weighting_cpu": "bb71b18af30b",
}


def test_preset_hashes_stay() -> None:
    import hashlib
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # no shipped preset uses a deprecated key
        configs = {name: load_config(path).hash() for name, path in CONFIGS.items()}
        runs = {
            name: " ".join(r.config.hash() for r in sweeps.load_sweep(path).runs()) for name, path in SWEEPS.items()
        }
    assert {n: configs[n] for n in PRESET_HASHES} == PRESET_HASHES
    assert {n: hashlib.sha256(runs[n].encode()).hexdigest()[:12] for n in SWEEP_HASHES} == SWEEP_HASHES
