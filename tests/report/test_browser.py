"""The report in a real browser (headless Chromium): every image loads, the console shows no
error, every internal link resolves, and a screenshot is saved. Chromium is installed by the
Makefile's test set-up (make browser); nothing here is skipped."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

from report_cases import add_contract_columns

from synaprune.report.browser import check_page
from synaprune.report.build import write_report


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_a_real_report_loads_cleanly_in_chromium(lab_db, tmp_path):
    db = tmp_path / "r.db"
    shutil.copy(lab_db, db)
    add_contract_columns(db)  # every part of the page: kinds, equal cost
    index = write_report(db, tmp_path / "rep", progress=False)
    shot = tmp_path / "shot.png"
    result = check_page(index, screenshot=shot)
    assert result.problems == []
    assert result.title == "SynaPrune lab report"
    figures = len(list((tmp_path / "rep" / "fig").iterdir()))
    assert result.images == figures >= 7  # 3 per problem + the equal-cost views
    assert result.links > 5 and result.external == []
    width, height = _png_size(shot)
    assert width >= 1000 and height >= 1000


def test_the_check_finds_a_broken_image_a_dead_link_and_a_console_error(tmp_path):
    page = tmp_path / "index.html"
    page.write_text('<!DOCTYPE html><html><head><title>bad</title><link rel="icon" '
                    'href="data:,"></head><body><img src="missing.png"><a href="#nowhere">x</a>'
                    '<a href="other.html">y</a><p id="here"></p><a href="#here">ok</a>'
                    '<script>console.error("boom")</script></body></html>')
    problems = check_page(page).problems
    assert "image did not load: missing.png" in problems
    assert "link to a missing anchor: #nowhere" in problems
    assert "link to a missing file: other.html" in problems
    assert any("boom" in p for p in problems)
    assert any("ERR_FILE_NOT_FOUND" in p for p in problems)
    assert len(problems) == 5  # the good anchor is not among them
