"""Session-wide fixtures: the expensive things (model, engines, servers) are built once."""

from __future__ import annotations

from pathlib import Path

import pytest

from oblivio.gateway.config import default_model_path


@pytest.fixture(scope="session")
def model_path() -> Path:
    """The verified default model; fetched on first use so the test command needs no extra step."""
    from oblivio.gateway.serving.model_fetch import fetch_default_model

    return fetch_default_model(default_model_path())

# Each area keeps its shared fixtures in its own plugin module beside this file.
pytest_plugins: list[str] = ["fixtures_backends", "fixtures_serving", "fixtures_gate", "fixtures_registration", "fixtures_detector", "fixtures_reliability", "fixtures_postgres", "fixtures_openai_port"]
