"""Fixtures of the chart tests (tests/helm): the helm binary, installed on demand."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helm.tools import tools_dir


@pytest.fixture(scope="session")
def helm() -> Path:
    return tools_dir() / "helm"
