"""Open a report in headless Chromium and check what a reader would see.

    python -m synaprune.report.browser report/index.html --screenshot docs/report.png

Needs Debian's ``chromium`` and ``chromium-driver`` (``make browser`` installs them) and the
``selenium`` package (the ``dev`` extra), driven with ``/usr/bin/chromedriver``: nothing is
downloaded, and the browser runs with its network features off. :func:`check_page` loads the
page from disk and reports every image that did not load (natural width 0), every console
error (a failed load, a script error, a CSP violation) and every internal link that leads
nowhere (``#id`` without that id, a relative file that does not exist), and saves a screenshot.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

__all__ = ["CHROMEDRIVER", "CHROMIUM", "CHROMIUM_FLAGS", "PageCheck", "check_page"]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Headless, and nothing that talks to the network on its own (updates, sync, QUIC probes).
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage")

_PAGE_FACTS = """
const images = Array.from(document.images).map(i => ({
  src: i.getAttribute('src'), complete: i.complete, width: i.naturalWidth}));
const links = Array.from(document.querySelectorAll('a[href]')).map(a => ({
  href: a.getAttribute('href'), url: a.href}));
const ids = Array.from(document.querySelectorAll('[id]')).map(e => e.id);
const resources = performance.getEntriesByType('resource').map(r => r.name);
return {images, links, ids, resources, title: document.title,
        height: document.documentElement.scrollHeight};
"""


@dataclass
class PageCheck:
    """What :func:`check_page` found.

    Attributes:
        problems: One line per defect (empty: the page is fine).
        images: Images on the page.
        links: Links on the page.
        console: Console messages at level SEVERE (errors).
        external: URLs the page loaded from outside its folder's file system (none expected).
        screenshot: The screenshot written, or None.
        title: The page's title.
    """

    problems: list[str] = field(default_factory=list)
    images: int = 0
    links: int = 0
    console: list[str] = field(default_factory=list)
    external: list[str] = field(default_factory=list)
    screenshot: Path | None = None
    title: str = ""


def _driver(width: int, height: int, profile: str) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if shutil.which(path) is None:
            raise FileNotFoundError(f"{path} not found: install Debian's {package} (make browser)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # given, so that selenium never looks for a browser
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


def check_page(index: str | Path, *, screenshot: str | Path | None = None, width: int = 1280,
               height: int = 1600, full_page: bool = False, anchor: str = "") -> PageCheck:
    """Load ``index`` from disk in headless Chromium and check images, console and links.

    Args:
        index: The HTML file.
        screenshot: PNG to save of the page as shown (None: no screenshot).
        width, height: The window's size in CSS pixels.
        full_page: Screenshot the whole page's height instead of the window.
        anchor: An id to scroll to before the screenshot (``"problem-2"``); "" for the top.

    Returns:
        A :class:`PageCheck`.

    Raises:
        FileNotFoundError: If ``index``, chromium or chromedriver is missing.
    """
    index = Path(index).resolve()
    if not index.is_file():
        raise FileNotFoundError(f"No such page: {index}")
    out = PageCheck()
    profile = tempfile.mkdtemp(prefix="synaprune-chromium-")
    driver = _driver(width, height, profile)
    try:
        driver.set_page_load_timeout(60)
        driver.get(index.as_uri() + (f"#{anchor}" if anchor else ""))
        facts = driver.execute_script(_PAGE_FACTS)
        out.title = facts["title"]
        out.images, out.links = len(facts["images"]), len(facts["links"])
        for image in facts["images"]:
            if not image["complete"] or image["width"] <= 0:
                out.problems.append(f"image did not load: {image['src']}")
        ids = set(facts["ids"])
        for link in facts["links"]:
            href, url = link["href"], urlparse(link["url"])
            if href.startswith("#"):
                if unquote(href[1:]) not in ids:
                    out.problems.append(f"link to a missing anchor: {href}")
            elif url.scheme == "file":
                if not Path(unquote(url.path)).exists():
                    out.problems.append(f"link to a missing file: {href}")
            else:
                out.problems.append(f"link leaves the report: {href}")
        out.external = [u for u in facts["resources"] if not u.startswith("file:")]
        out.problems.extend(f"loaded from outside the folder: {u}" for u in out.external)
        out.console = [f"{e.get('level')}: {e.get('message')}" for e in driver.get_log("browser")
                       if e.get("level") == "SEVERE"]
        out.problems.extend(f"console error: {m}" for m in out.console)
        if screenshot is not None:
            screenshot = Path(screenshot)
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            if full_page:
                driver.set_window_size(width, int(facts["height"]) + 100)
            if not driver.save_screenshot(str(screenshot)):
                out.problems.append(f"screenshot not saved: {screenshot}")
            else:
                out.screenshot = screenshot
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("index", help="the report's index.html")
    parser.add_argument("--screenshot", default=None, help="PNG to save")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1600)
    parser.add_argument("--anchor", default="", help="id to scroll to before the screenshot")
    args = parser.parse_args(argv)
    try:
        result = check_page(args.index, screenshot=args.screenshot, width=args.width,
                            height=args.height, anchor=args.anchor)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for line in result.problems:
        print(line)
    print(f"{result.images} images, {result.links} links, {len(result.problems)} problems"
          + (f"; screenshot {result.screenshot}" if result.screenshot else ""))
    return 1 if result.problems else 0


if __name__ == "__main__":
    sys.exit(main())
