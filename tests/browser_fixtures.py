"""Headless Chromium for the browser tests (Debian's chromium + chromedriver, driven by
Selenium). Missing: a visible skip on a laptop, a failure under CI."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import missing

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(scope="session")
def chrome():
    """A factory of headless Chromium drivers; all are quit at the end."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        missing(f"selenium is not installed ({exc})")
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (Path(path).exists() or shutil.which(path)):
            missing(f"{path} not found: install Debian's chromium and chromium-driver to run browser tests")
    drivers = []

    def make():
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--window-size=1400,1000", "--lang=en-US"):
            opts.add_argument(arg)
        try:
            driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
        except Exception as exc:  # noqa: BLE001 - any start failure means "no browser here"
            missing(f"Chromium would not start: {type(exc).__name__}: {exc}")
        driver.set_page_load_timeout(60)
        drivers.append(driver)
        return driver

    yield make
    for d in drivers:
        d.quit()


# What chromedriver says when a script meets a page that is being replaced (a reload, an SPA route).
NAVIGATING = ("unhandled inspector error", "execution context was destroyed", "target frame detached",
              "cannot find context with specified id")


def wait(driver, condition, timeout=30, message=""):
    from selenium.common.exceptions import (NoSuchElementException, StaleElementReferenceException,
                                            WebDriverException)
    from selenium.webdriver.support.ui import WebDriverWait

    def check(d):
        try:
            return condition(d)
        except (NoSuchElementException, StaleElementReferenceException):
            return False
        except WebDriverException as exc:
            if any(text in str(exc.msg).lower() for text in NAVIGATING):
                return False  # the page is mid-reload: ask again on the next poll
            raise

    return WebDriverWait(driver, timeout).until(check, message)
