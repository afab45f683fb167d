"""The example protocols import as their own top-level modules, as the edge loads them; the
``simulated_workcell`` fixture comes from praxis_sdk's pytest plugin (a project of your own
loads it with ``pytest_plugins = ["praxis_sdk.testing"]`` in its root conftest, or
``-p praxis_sdk.testing``)."""

from __future__ import annotations

import sys
from pathlib import Path

from praxis_sdk.testing import simulated_workcell

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "protocols"))

__all__ = ["simulated_workcell"]
