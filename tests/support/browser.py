"""A real browser for tests: Debian's headless Chromium driven through its ChromeDriver with selenium.

One helper for every browser test (the dashboard, the viewer): a fresh profile folder per browser, flags that
work on a machine without a display, GPU or outside network, and a screenshot helper for test artefacts.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

#: Headless without a display, a GPU, a sandbox or outside connections (no background networking, no
#: component updates, no sync), and the same pixel size everywhere.
CHROMIUM_FLAGS: tuple[str, ...] = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--force-device-scale-factor=1",
)
#: Extra flags for pages that render with WebGL (ANGLE's software renderer).
WEBGL_FLAGS: tuple[str, ...] = ("--use-angle=swiftshader", "--enable-unsafe-swiftshader")


def require_chromium() -> None:
    """Fail with what to install when the browser or its driver is missing."""
    missing = [
        f"{binary} (apt-get install {package})"
        for binary, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver"))
        if not binary.is_file()
    ]
    if missing:
        raise AssertionError("browser missing: " + "; ".join(missing) + " (deploy/install-debian-deps.sh)")


@contextmanager
def chromium(
    profile: Path, width: int = 1400, height: int = 1000, extra_flags: Sequence[str] = ()
) -> Iterator[Any]:
    """A headless Chromium (selenium WebDriver) with a fresh profile folder; quit on exit. The driver's
    log is written beside the profile folder."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    require_chromium()
    if profile.exists():
        shutil.rmtree(profile)
    profile.mkdir(parents=True)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    flags = (*CHROMIUM_FLAGS, *extra_flags, f"--user-data-dir={profile}", f"--window-size={width},{height}")
    for flag in flags:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(profile.parent / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: Any, what: str, condition: Any, timeout_s: float = 120) -> Any:
    """Wait until ``condition(driver)`` is truthy (polled by selenium); fail naming ``what`` and the page."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout_s, poll_frequency=0.25).until(condition)
    except TimeoutException:
        body = driver.find_element("tag name", "body").text[:2000]
        raise AssertionError(
            f"timed out after {timeout_s:g} s waiting for {what}; page shows:\n{body}"
        ) from None


def screenshot(driver: Any, *paths: Path, full_page: bool = False) -> None:
    """Save a PNG of the page to each path (test artefacts, and the pictures in docs/); ``full_page``: the
    whole page, not only the window."""
    size = driver.get_window_size()
    if full_page:
        height = int(driver.execute_script("return document.documentElement.scrollHeight"))
        driver.set_window_size(size["width"], max(size["height"], height + 140))
    try:
        data = driver.get_screenshot_as_png()
    finally:
        if full_page:
            driver.set_window_size(size["width"], size["height"])
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
