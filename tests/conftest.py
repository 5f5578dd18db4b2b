"""The test suite's shared fixtures and tiers.

Tiers: tests/unit/ (one sub-folder per sub-package of captioner; no DVC, make, Ray, uvicorn,
browser or package index) and tests/system/ (everything that runs those). Every test gets the
marker of its tier; `make test` runs the unit tier and the system smoke (`-m "unit or smoke"`),
`make test-all` every tier. Each test has a time limit (pytest-timeout): 300 s in the unit tier,
900 s in the system tier, so a hung `dvc` or server fails its test instead of hanging the suite.
Builders shared by several test modules live in tests/helpers/; no test module imports another.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.helpers.toy import make_toy, make_toy_attention  # noqa: E402

TESTS = Path(__file__).resolve().parent
TIME_LIMIT = {"unit": 300, "system": 900}  # seconds per test


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its tier (its folder) and time limit; system tests first, so that the
    two xdist workers start on the long ones and finish together (order within a tier kept)."""
    for item in items:
        tier = Path(item.fspath).resolve().relative_to(TESTS).parts[0]
        if tier not in TIME_LIMIT:
            raise pytest.UsageError(f"{item.nodeid}: tests live in tests/unit/ or tests/system/")
        item.add_marker(getattr(pytest.mark, tier))
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TIME_LIMIT[tier]))
    items.sort(key=lambda item: item.get_closest_marker("system") is None)


@pytest.fixture(scope="session")
def toy() -> dict:
    """A 4-class toy task: the feature says the colour, the caption names it (merge model)."""
    return make_toy()


@pytest.fixture(scope="session")
def toy_attention() -> dict:
    """The colour task over a grid of 4 regions (attention model)."""
    return make_toy_attention()


@pytest.fixture(scope="session")
def workspace(tmp_path_factory, worker_id: str):
    """The reproduced tiny workspace (tests/helpers/workspace.py), built once per test run."""
    from tests.helpers.workspace import tiny_workspace

    base = tmp_path_factory.getbasetemp()
    return tiny_workspace(base.parent if worker_id != "master" else base)
