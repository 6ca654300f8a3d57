"""Fixtures for the compat suite. The stack itself (Postgres, Synapse,
hungryserv) is started by compat-tests/run and described in stack.py."""

import pytest

import stack


@pytest.fixture
def user() -> stack.User:
    """A fresh user, registered through hungryserv."""
    return stack.register_user()


@pytest.fixture
def synapse_stopped():
    """Synapse is stopped for the test and always started again afterwards,
    so one failing test cannot take the rest of the suite down with it."""
    stack.stack_lib("synapse_stop")
    try:
        yield
    finally:
        stack.stack_lib("synapse_start")
