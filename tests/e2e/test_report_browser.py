"""The HTML report in a real browser: headless Chromium loads it, decodes every image, takes a screenshot.

Needs the Debian packages ``chromium`` and ``chromium-driver`` (``make browser`` installs them);
skipped with the reason when they are missing.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from helpers.report_fixtures import fake_loader, paper_like_runs
from mtlkit.report import ReportOptions, make_report

pytestmark = pytest.mark.browser

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
DRIVER = shutil.which("chromedriver")
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("browser")
    paper_like_runs(root / "runs")
    opts = ReportOptions(title="Browser test report", attention_images=1, attention_runs=1)
    return make_report([root / "runs"], root / "report", opts, loader=fake_loader)


def _nonblank(png: Path) -> float:
    """Standard deviation of the screenshot's pixels (floats in [0, 1]; 0 for a blank page)."""
    return float(np.asarray(imread(png))[..., :3].std())


def _chrome():
    """A headless Chromium driven by selenium (skips the test where selenium is missing)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS + ["--window-size=1400,1800"]:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(DRIVER), options=options)


@pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="headless Chromium not installed (apt-get install chromium chromium-driver)",
)
def test_html_report_renders_in_chromium_via_selenium(report, tmp_path: Path) -> None:
    driver = _chrome()
    try:
        driver.get(report.html.resolve().as_uri())
        assert driver.title == "Browser test report"
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight]);"
        )
        assert len(images) == len(report.figures) >= 4
        assert all(done and w > 100 and h > 100 for done, w, h in images), images
        bold = driver.execute_script("return Array.from(document.querySelectorAll('td b')).map(b => b.textContent);")
        assert "0.4300" in bold and "0.1800" in bold
        errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        assert errors == []
        shot = tmp_path / "report.png"  # kept under pytest's tmp folder for a look
        assert driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    assert _nonblank(shot) > 0.02


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium)")
def test_html_report_screenshot_with_chromium_cli(report, tmp_path: Path) -> None:
    shot = tmp_path / "cli.png"
    subprocess.run(
        [CHROMIUM, *FLAGS, f"--screenshot={shot}", "--window-size=1200,1600", report.html.resolve().as_uri()],
        check=True,
        capture_output=True,
        timeout=60,
    )
    image = imread(shot)
    assert image.shape[:2] == (1600, 1200)
    assert _nonblank(shot) > 0.02


@pytest.fixture(scope="module")
def reference_report(tmp_path_factory: pytest.TempPathFactory):
    """The paper-like runs with the MTAN paper's published table added (`mtlkit report --reference mtan_paper`)."""
    root = tmp_path_factory.mktemp("browser_reference")
    paper_like_runs(root / "runs")
    opts = ReportOptions(title="Reference rows", references=["mtan_paper"], models=False)
    return make_report([root / "runs"], root / "report", opts, loader=fake_loader)


@pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="headless Chromium not installed (apt-get install chromium chromium-driver)",
)
def test_reference_rows_render_greyed_in_chromium(reference_report, tmp_path: Path) -> None:
    driver = _chrome()
    try:
        driver.get(reference_report.html.resolve().as_uri())
        assert driver.title == "Reference rows"
        colors = driver.execute_script(
            "return Array.from(document.querySelectorAll('td.muted')).map(td => getComputedStyle(td).color);"
        )
        assert colors and len(colors) % 17 == 0  # the 17 published rows, every cell greyed
        assert set(colors) == {"rgb(138, 138, 138)"}
        rows = driver.execute_script(
            "return Array.from(document.querySelectorAll('tbody tr')).map(r => r.textContent);"
        )
        assert any("One Task" in r and "[mtan_paper]" in r and "0.1510" in r for r in rows)
        assert [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"] == []
        shot = tmp_path / "reference.png"
        assert driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    assert _nonblank(shot) > 0.02
