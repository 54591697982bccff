"""Files handed to mtlkit: bounded YAML (aliases, duplicate keys), UTF-8 text, short quotes in errors, images
read as a viewer shows them, class ids that are integers, report.md that shows names instead of running them."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtlkit.errors import ConfigError, DataError, shorten
from mtlkit.readers import MAX_YAML_NODES, load_yaml, read_text


def _bomb(levels: int) -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines)


def test_aliases_within_the_bound_load_and_merge_keys_still_override() -> None:
    text = "base: &base {lr: 0.1, epochs: 3}\nrun:\n  <<: *base\n  lr: 0.2\n"
    assert load_yaml(text, "f.yaml") == {"base": {"lr": 0.1, "epochs": 3}, "run": {"lr": 0.2, "epochs": 3}}
    # 9**4 = 6561 leaves (+ the lists): inside the bound, loaded in full
    assert len(load_yaml(_bomb(5), "f.yaml")["l4"]) == 9


def test_alias_bomb_is_refused_at_load_time() -> None:
    """9**10 strings from 1 KB: refused after counting just past the bound, not by expanding it."""
    text = _bomb(10)
    assert len(text) < 1100
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=f"f.yaml: YAML expands to more than {MAX_YAML_NODES:,} values"):
        load_yaml(text, "f.yaml")
    assert time.perf_counter() - start < 2.0  # counting ~1e5 nodes; expanding would take hours


def test_recursive_anchor_and_duplicate_keys_are_errors() -> None:
    with pytest.raises(ConfigError, match="an anchor refers to itself"):
        load_yaml("a: &a [1, *a]\n", "f.yaml")
    with pytest.raises(ConfigError, match=r"f.yaml: line 3 invalid YAML \(duplicate key 'lr'"):
        load_yaml("optim:\n  lr: 0.1\n  lr: 0.2\n", "f.yaml")
    with pytest.raises(ConfigError, match="duplicate key 1"):
        load_yaml("{1: a, 1: b}", "f.yaml")


def test_text_that_is_not_utf8_names_the_line_and_byte(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(b"a: 1\nb: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"c.yaml: line 2: not UTF-8 text \(byte 0xe9\)"):
        read_text(path)


def test_shorten_never_formats_a_whole_huge_value() -> None:
    huge = ["x" * 1000] * 10_000_000  # 10 million references to one string: a full repr would be 10 GB
    start = time.perf_counter()
    text = shorten(huge)
    assert time.perf_counter() - start < 0.1
    assert len(text) <= 200 and text.startswith("['xxx")
    assert shorten("short") == "'short'"
    assert len(shorten("y" * 10_000)) == 200


# ---------------------------------------------------------------------- images and class ids


def _read_image(path: Path) -> np.ndarray:
    from mtlkit.data.folder import image_tensor, read_array

    return image_tensor(read_array(path, image=True), path).numpy()


def test_palette_png_image_is_read_as_its_colours(tmp_path: Path) -> None:
    img = Image.new("P", (4, 2))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 red, 1 blue
    img.putdata([0, 1, 0, 1, 0, 1, 0, 1])
    img.save(tmp_path / "p.png")
    got = _read_image(tmp_path / "p.png")
    assert got.shape == (3, 2, 4)
    assert got[:, 0, 0].tolist() == [1.0, 0.0, 0.0] and got[:, 0, 1].tolist() == [0.0, 0.0, 1.0]


def test_cmyk_jpeg_white_stays_white(tmp_path: Path) -> None:
    Image.new("CMYK", (16, 16), (0, 0, 0, 0)).save(tmp_path / "w.jpg", quality=100)
    got = _read_image(tmp_path / "w.jpg")
    # JPEG rounding of a flat white block: within 2 of 255 in 8 bits
    assert got.min() >= 253 / 255


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    pixels = np.zeros((2, 4, 3), np.uint8)
    pixels[0, 0] = 255  # top-left white, stored landscape 4 wide x 2 high
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "r.png", exif=exif)
    got = _read_image(tmp_path / "r.png")
    assert got.shape == (3, 4, 2)  # shown portrait
    assert got[:, 0, 1].tolist() == [1.0, 1.0, 1.0]  # the stored top-left lands top-right


def test_palette_png_target_keeps_its_indices_as_class_ids(tmp_path: Path) -> None:
    from mtlkit.data.folder import load_target
    from mtlkit.tasks import segmentation_task

    img = Image.new("P", (4, 2))
    img.putpalette([0, 0, 0, 200, 10, 10, 10, 200, 10] + [0] * 759)
    img.putdata([0, 1, 2, 1, 0, 1, 2, 1])
    img.save(tmp_path / "l.png")
    got = load_target(segmentation_task(3, name="seg"), tmp_path / "l.png", (2, 4))
    assert got.tolist() == [[0, 1, 2, 1], [0, 1, 2, 1]]


@pytest.mark.parametrize("value", [1.5, float("nan")])
def test_float_class_ids_are_refused(tmp_path: Path, value: float) -> None:
    from mtlkit.data.folder import load_target
    from mtlkit.tasks import segmentation_task

    labels = np.ones((2, 4), np.float32)
    labels[1, 2] = value
    np.save(tmp_path / "l.npy", labels)
    with pytest.raises(DataError, match="l.npy: cannot be read as a segmentation target .class ids must be integers"):
        load_target(segmentation_task(3, name="seg"), tmp_path / "l.npy", (2, 4))
    np.save(tmp_path / "ok.npy", np.ones((2, 4), np.float32))  # whole numbers stored as floats: those classes
    assert load_target(segmentation_task(3, name="seg"), tmp_path / "ok.npy", (2, 4)).tolist() == [[1] * 4] * 2


# ---------------------------------------------------------------------- report.md


def test_report_markdown_escapes_names_as_the_html_does(tmp_path: Path) -> None:
    from mtlkit.report.document import Cell, Document, Paragraph, Section, Table
    from mtlkit.report.markdown import render

    evil = "<img src=x onerror=alert(1)>"
    doc = Document(
        title=f"runs of {evil}",
        intro=[Paragraph(f"task {evil} and `code <kept>`")],
        sections=[Section(f"Task {evil}", [Table(headers=[evil], rows=[[Cell(evil)]])])],
    )
    text = render(doc)
    assert "<img" not in text
    assert text.count("&lt;img src=x onerror=alert(1)&gt;") == 5  # title, paragraph, heading, header, cell
    assert "`code <kept>`" in text  # a code span shows its text literally already
