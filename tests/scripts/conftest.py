"""A private stack directory for a test; whatever the test started there is stopped when it ends."""

from __future__ import annotations

import pytest

from tests.scripts.stack_run import stack, stack_dir_env


@pytest.fixture
def private_stack(tmp_path):
    stack_dir = tmp_path / "stack"
    yield stack_dir
    stopped = stack("down", env=stack_dir_env(stack_dir), timeout=180)
    assert stopped.returncode == 0, stopped.stderr
