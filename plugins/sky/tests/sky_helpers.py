"""Helpers for rh-sky's tests (a module of its own: test modules and conftest both import it)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from rh_sky.testing import FakeSkyPilot


def use_fake_sky(patch: pytest.MonkeyPatch, directory: Path, **cloud: Any) -> FakeSkyPilot:
    """A fake SkyPilot cloud in ``directory``, made the SDK of every provisioner (RH_SKY_SDK)."""
    from rh_sky.testing import FakeSkyPilot

    fake = FakeSkyPilot.create(directory, **cloud)
    patch.setenv("RH_SKY_SDK", "rh_sky.testing:FakeSkyPilot")
    patch.setenv("RH_SKY_FAKE_DIR", str(directory))
    return fake


