"""Debian's headless Chromium driven through chromedriver (selenium), for the status page.

``Browser`` starts chromedriver (which starts chromium) with a profile in a temp dir and
stops both by PID at ``close()``. Screenshots go to ``screenshot_dir`` (the test's tmp dir,
or ``$PULLTHROUGH_SCREENSHOTS`` when set, e.g. for CI artifacts)."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def available() -> str | None:
    """Why the browser tests cannot run here (None: they can)."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.exists(path) or shutil.which(os.path.basename(path))):
            return f"{path} is not installed (apt-get install chromium chromium-driver)"
    return None


class Browser:
    def __init__(self, profile: Path, screenshot_dir: Path) -> None:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in (
            "--headless=new",
            "--no-sandbox",  # the tests run as root
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",  # nothing leaves loopback
            "--disable-extensions",
            "--window-size=1400,1000",
            f"--user-data-dir={profile}",
        ):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.service = Service(executable_path=CHROMEDRIVER, log_output=os.devnull)
        self.driver = webdriver.Chrome(service=self.service, options=options)
        self.driver.set_page_load_timeout(30)
        self.screenshot_dir = screenshot_dir
        screenshot_dir.mkdir(parents=True, exist_ok=True)

    def login(self, user: str, password: str) -> None:
        """Send Basic credentials with every request from now on (as a browser does once
        the user answered its login prompt)."""
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.driver.execute_cdp_cmd("Network.enable", {})
        self.driver.execute_cdp_cmd(
            "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}}
        )

    def open(self, url: str) -> float:
        """Navigate and return the seconds until the page's load event (the browser's own
        navigation timing: first byte, HTML parsed, styles and scripts loaded, first paint)."""
        self.driver.get(url)
        timing: Any = self.driver.execute_script(
            "const n = performance.getEntriesByType('navigation')[0];"
            "return [n.startTime, n.loadEventEnd];"
        )
        return float(timing[1] - timing[0]) / 1000

    def wait_for(self, script: str, timeout: float = 10.0) -> Any:
        """Poll a JavaScript expression until it is truthy (bounded)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.driver.execute_script(f"return ({script});")
            if value or time.monotonic() > deadline:
                return value
            time.sleep(0.05)

    def console(self) -> list[dict[str, Any]]:
        return list(self.driver.get_log("browser"))

    def screenshot(self, name: str) -> Path:
        path = self.screenshot_dir / f"{name}.png"
        height = self.driver.execute_script("return document.body.scrollHeight")
        self.driver.set_window_size(1400, min(max(1000, int(height)), 6000))
        self.driver.save_screenshot(str(path))
        print(f"screenshot: {path}")
        return path

    def close(self) -> None:
        """Quit chromium and chromedriver; chromedriver is killed by its PID if it is
        still running after that (poll() reaps it, so the PID is never one reused)."""
        process = self.service.process
        try:
            self.driver.quit()
        finally:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=10)
