"""The suite's fixtures: models and servers started once per session. Helpers are in helpers.py."""

from __future__ import annotations

import pytest

from helpers import FACE_FUNCTION, postgres_database, serve_function

# pytest-xdist runs the modules side by side (pyproject.toml's addopts: --dist loadfile), each module
# whole on one worker: its module-scoped servers start once, and the Redis database it uses is its
# own while it runs (the fuzz test shares database 1 with the hardening tests, so it is one of them).
# The modules that take a minute or more start first, so that none is left running alone at the end.
LONGEST_FIRST = ("test_many_hosts.py", "test_cvat_backend.py", "test_compose_stack.py", "test_dispatcher_api.py",
                 "test_dispatcher_recovery.py", "test_dispatcher_resilience.py", "test_web_ui.py")


def pytest_collection_modifyitems(items):
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest as collected


@pytest.fixture(scope="session")
def face_models():
    """The face function's weights must be in place (scripts/setup.sh mirrors them)."""
    from serverless.common import model_files

    try:
        return {name: model_files.resolve(name) for name in
                ("face-detection-0205", "age-gender-recognition-retail-0013", "emotions-recognition-retail-0003")}
    except model_files.ModelFilesMissing as error:
        pytest.fail(f"{error}\nRun the setup command from the README first.")


@pytest.fixture(scope="session")
def face_function(face_models):
    with serve_function(FACE_FUNCTION) as running:
        yield running


@pytest.fixture(scope="session")
def postgres_url():
    """The task store tests' database (they empty its tables after each test)."""
    with postgres_database("store") as url:
        yield url
