"""Headless Chromium (Debian's chromium and chromium-driver) driven by selenium.

For tests/report/test_html.py, and as a script for the README's screenshot:
    .venv/bin/python tests/browser.py tests/data/run-6.1.json busy-target-module docs/x.png
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
DRIVER = "/usr/bin/chromedriver"


def missing() -> str:
    """Why the browser cannot run here ('' when it can)."""
    for path, pkg in ((CHROMIUM, "chromium"), (DRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} is missing: `make test` installs Debian's {pkg}"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: `make test` installs the test extra"
    return ""


@contextlib.contextmanager
def chromium(width: int = 1240, height: int = 1000) -> Iterator[Any]:
    """A headless Chromium with a fresh profile, nothing fetched; quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="klptrace-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    # this machine's network is closed: nothing to update, sync or fetch
    for arg in ("--headless=new", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--hide-scrollbars", "--force-device-scale-factor=1",
                f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        opts.add_argument(arg)
    if os.geteuid() == 0:
        opts.add_argument("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    # a driver path given: selenium does not look for (or download) one of its own
    os.environ.setdefault("SE_AVOID_STATS", "true")
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def screenshot(page: Path, element_id: str, out: Path, width: int = 1240,
               driver: Any = None) -> None:
    """A PNG of one element of an HTML file, as Chromium draws it (in driver, if given)."""
    from selenium.webdriver.common.by import By

    with contextlib.nullcontext(driver) if driver else chromium(width) as d:
        d.set_window_size(width, 1000)
        d.get(page.resolve().as_uri())
        el = d.find_element(By.ID, element_id)
        # a window as tall as the page, so that the element is drawn whole
        tall = d.execute_script("return document.documentElement.scrollHeight")
        d.set_window_size(width, int(tall) + 100)
        out.write_bytes(el.screenshot_as_png)


def main(argv: list[str]) -> int:
    """RUN.json SCENARIO OUT.png: the HTML report of that one scenario, as a PNG."""
    import json

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from klptrace import results
    from klptrace.report import html

    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    run, sid, out = Path(argv[0]), argv[1], Path(argv[2])
    why = missing()
    if why:
        print(f"browser.py: {why}", file=sys.stderr)
        return 1
    doc = json.loads(run.read_text())
    # the page of a run of that one scenario: header, table, legend, its section
    doc["scenarios"] = [s for s in doc["scenarios"] if s["id"] == sid]
    if not doc["scenarios"]:
        print(f"browser.py: no scenario {sid!r} in {run}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "report.html"
        page.write_text(html.render(results.Matrix.of(results.load(doc, str(run)))))
        screenshot(page, "report", out, width=1180)
    print(f"{out}: {out.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
