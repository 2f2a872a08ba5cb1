"""Fixtures shared by the integration tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def session(broker_stack, session_factory):
    """A connected session of user ``alice`` with a worker registered for her."""
    token = broker_stack.add_user("alice")
    broker_stack.start_worker("alice")
    return session_factory(broker_stack.profile(token))
