"""Shared fixtures: the anyio backend; factories live beside the tests that use them."""

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
