"""The suite's fixtures: models and servers started once per session. Helpers are in helpers.py."""

from __future__ import annotations

import pytest

from helpers import FACE_FUNCTION, postgres_database, serve_function


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
