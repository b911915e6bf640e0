"""Shared pieces of the Open Inference Protocol v2 tests (tests/oip).

The largest |OIP probabilities - /v1 posterior| difference seen by the tests is recorded through
the `record_v1_diff` fixture and printed in pytest's closing summary, so that CI logs show it.
"""

import pytest

_V1_DIFFS = pytest.StashKey[dict]()


def _diffs(config):
    if _V1_DIFFS not in config.stash:
        config.stash[_V1_DIFFS] = {"worst": 0.0, "where": None, "count": 0}
    return config.stash[_V1_DIFFS]


@pytest.fixture(scope="session")
def record_v1_diff(pytestconfig):
    """record(diff, where): remember the largest difference between OIP and /v1 probabilities."""
    state = _diffs(pytestconfig)

    def record(diff, where, count=1):
        state["count"] += count
        if diff >= state["worst"]:
            state["worst"] = float(diff)
            state["where"] = where

    return record


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    state = _diffs(config)
    if state["count"]:
        terminalreporter.write_line(
            "OIP v2 vs /v1: largest |probability difference| {:.3e} over {} values ({})".format(
                state["worst"], state["count"], state["where"]
            )
        )
