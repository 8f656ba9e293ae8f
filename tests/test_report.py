"""`bench report` opened in a real headless Chromium, and a finished sweep's repeated `bench run` answered
without training, drawing or even importing torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main

ROOT = Path(__file__).resolve().parents[1]
ARTEFACTS = Path(os.environ.get("OKD_BENCH_ARTEFACTS", ROOT / "test-artefacts"))
GRID = ["--datasets", "digits", "--backbones", "cifar_resnet8", "--seeds", "0,1", "--epochs", "1", "--no-progress",
        "--launcher", "inline"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "sweep"
    assert main(["run", "--methods", "vanilla,dml,one,pcl", *GRID, "--out", str(out)]) == 0
    return out


def chromium():
    """A headless Chromium driven through chromedriver (Debian's chromium and chromium-driver)."""
    if shutil.which("chromedriver") is None or not (shutil.which("chromium") or shutil.which("chromium-browser")):
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser tests: chromium/chromedriver missing (tests/install-browser.sh)")
        pytest.skip("chromium and chromedriver not installed (tests/install-browser.sh installs them as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,2000", "--disable-background-networking"):
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def test_report_opens_in_headless_chromium_with_every_method(sweep, tmp_path):
    page = tmp_path / "report.html"
    assert main(["report", str(sweep), "--out", str(page)]) == 0
    text = page.read_text()
    assert "http://" not in text and "https://" not in text  # self-contained: nothing to fetch
    driver = chromium()
    try:
        driver.get(page.as_uri())
        body = driver.find_element("tag name", "body").text
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(ARTEFACTS / "report.png"))
    finally:
        driver.quit()
    assert errors == []
    for name in ("Vanilla", "DML", "DML-E", "ONE", "ONE-E", "PCL", "PCL-E"):
        assert f"\n{name} " in body, name  # a row of the results table
    assert "paper" not in body or "Δ" in body
    # curves, final bars, headline vs ensemble, ECE and member disagreement over epochs, error against training compute
    assert len(images) == 6 and all(done and width > 0 for done, width in images)
    assert "train PFLOPs" in body  # the cost table's training compute
    assert "Calibration and diversity" in body and "Expected calibration error" in body and "disagreement" in body
    assert "Cost" in body and "Versions" in body and "epochs: 1" in body
    assert (ARTEFACTS / "report.png").stat().st_size > 10_000


@pytest.mark.parametrize("case, expected", [
    ("empty", "no finished run under"), ("folder_missing", "results folder not found"),
    ("unwritable", "does not exist"), ("suffix", "a report is an .html file"),
])
def test_bad_report_requests_are_one_line(case, expected, sweep, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    args = {"empty": [str(tmp_path / "empty")], "folder_missing": [str(tmp_path / "nope")],
            "unwritable": [str(sweep), "--out", str(tmp_path / "no" / "dir" / "r.html")],
            "suffix": [str(sweep), "--out", str(tmp_path / "r.pdf")]}[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["report", *args]) == (1 if case == "empty" else 2)  # nothing to show: 1, as table/plot/status
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def bench_importtime(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-X", "importtime", "-m", "bench.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=600)


def test_finished_sweep_run_again_answers_without_torch_and_redraws_only_on_change(sweep):
    args = ["run", "--methods", "vanilla,dml,one,pcl", *GRID, "--out", str(sweep)]
    plots = sorted((sweep / "plots").glob("*.png"))
    drawn = {p: p.stat().st_mtime_ns for p in plots}
    again = bench_importtime(*args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "8 runs, 0 to run (8 done: skipped)" in again.stdout and "| PCL |" in again.stdout
    imported = {line.split("|")[-1].strip() for line in again.stderr.splitlines() if line.startswith("import time")}
    assert "torch" not in imported and "matplotlib" not in imported and "bench.config" in imported
    assert {p: p.stat().st_mtime_ns for p in plots} == drawn
    # a setting that changes the sweep takes the normal path (and its checks): here a config clash
    assert main([*args, "optim.lr=0.05"]) == 2
    # a run touched since: the normal path, which finds nothing to draw again
    summary = sweep / "digits" / "cifar_resnet8" / "dml" / "seed0" / "summary.json"
    summary.write_text(json.dumps(json.loads(summary.read_text())))
    touched = bench_importtime(*args)
    assert touched.returncode == 0 and "torch" in touched.stderr and "(unchanged since drawn)" not in touched.stdout
    assert {p: p.stat().st_mtime_ns for p in plots} != drawn  # redrawn: a run changed since they were drawn
