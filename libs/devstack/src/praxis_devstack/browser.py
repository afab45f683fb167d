"""A real browser for the dashboard's tests: Debian's Chromium, driven by Playwright.

Playwright's own browser downloads are never used (they come from a CDN, not a package
registry): its driver launches ``/usr/bin/chromium`` (``PRAXIS_CHROMIUM`` to choose another).
``python -m praxis_devstack.browser`` (run by ``make test``) installs Debian's ``chromium``
where it is missing and this user may (root, apt-get present); otherwise it says what to do and
exits 0: the tests then skip, or fail under ``CI=true``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

DEBIAN_CHROMIUM = Path("/usr/bin/chromium")

LAUNCH_ARGS = (
    # As root (a container, CI) Chromium refuses to start with its sandbox.
    "--no-sandbox",
    "--disable-gpu",
    # This machine's network is closed: without these, Chromium keeps opening connections
    # to Google's services, refused one after another, and looks up their hosts at each start.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
)


def chromium() -> Path | None:
    """The Chromium to drive, if there is one."""
    chosen = os.environ.get("PRAXIS_CHROMIUM")
    if chosen:
        return Path(chosen) if Path(chosen).exists() else None
    if DEBIAN_CHROMIUM.exists():
        return DEBIAN_CHROMIUM
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    return Path(found) if found else None


def ensure() -> int:
    if chromium() is not None:
        return 0
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        print(
            "praxis: no Chromium for the dashboard's tests; install Debian's 'chromium' "
            "(or set PRAXIS_CHROMIUM). They skip without it, and fail under CI=true.",
            file=sys.stderr,
        )
        return 0
    print("praxis: installing Debian's chromium for the dashboard's tests ...", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
    done = subprocess.run(install, env=env, check=False, capture_output=True, text=True)
    if done.returncode != 0:  # the package lists may be stale or missing
        subprocess.run(["apt-get", "update", "-q"], env=env, check=False, capture_output=True)
        done = subprocess.run(install, env=env, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        print(
            f"praxis: apt-get could not install chromium:\n{done.stderr[-2000:]}", file=sys.stderr
        )
    return 0


if __name__ == "__main__":
    sys.exit(ensure())
