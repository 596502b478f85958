"""The daily report: terminal tables and the offline HTML page, rendered in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from settlement_day import Day, scripted_day

from ledger.report import places, render_html
from ledger.settlement import figures_for_report
from ledger.store import Store
from switch.cli import main

from conftest import service_missing

SCREENSHOTS = Path(tempfile.gettempdir()) / "honar-report-screenshots"


@pytest.fixture(scope="module")
def day() -> Day:
    return scripted_day()


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    service_missing("Chromium (apt-get install -y chromium)")
    raise AssertionError("unreachable")


def render(page: Path, screenshot: Path) -> list[str]:
    """Open ``page`` headless, save a screenshot; return the console lines Chromium logged."""
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [
                chromium(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--enable-logging=stderr",
                "--v=0",
                "--window-size=1000,1400",
                f"--screenshot={screenshot}",
                page.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 0, result.stderr[-2000:]
    return [line for line in result.stderr.splitlines() if ":CONSOLE" in line]


def test_the_console_check_sees_errors(tmp_path: Path) -> None:
    page = tmp_path / "bad.html"
    page.write_text("<html><body><script>console.error('boom'); nope();</script></body></html>")
    console = render(page, tmp_path / "bad.png")
    assert any("boom" in line for line in console) and any("nope" in line for line in console)


def test_html_report_renders_in_chromium_without_errors(
    day: Day, capsys: pytest.CaptureFixture[str]
) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = SCREENSHOTS / f"report-{day.business_date}.html"
    code = main(
        [
            "settle",
            "report",
            "--date",
            day.business_date.isoformat(),
            "--html",
            str(page),
            "--ledger-url",
            day.ledger_url,
        ]
    )
    assert code == 0
    text = page.read_text(encoding="utf-8")
    # offline: nothing to fetch (the only URL is the SVG namespace name)
    assert re.findall(r"https?://[^\"]+", text) == ["http://www.w3.org/2000/svg"] * 3
    assert " src=" not in text and "<link" not in text and "<script" not in text
    screenshot = SCREENSHOTS / f"report-{day.business_date}.png"
    console = render(page, screenshot)
    assert console == []
    assert screenshot.stat().st_size > 10_000
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_terminal_table_shows_the_same_figures(
    day: Day, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "settle",
                "report",
                "--date",
                day.business_date.isoformat(),
                "--ledger-url",
                day.ledger_url,
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    store = Store(day.ledger_url)
    figures = figures_for_report(store, day.business_date)
    store.close()
    for m in figures.merchants:
        assert f"{m.net_payable:,}" in out and m.merchant_id in out
    for p in figures.programs:
        assert p.program in out and f"{p.outstanding:,}" in out
    assert {(p.province, p.city) for p in places(figures)} == {
        ("Isfahan", "Isfahan"),
        ("Tehran", "Tehran"),
    }
    assert "Provinces and cities" in out
    assert "MOC-BOOK" in render_html(figures)
