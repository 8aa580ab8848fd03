"""A pytest plugin (loaded by tests/conftest.py): a test fails when the code under test caught an
exception of its own and only counted it.

Stage 1, stage 2 and the worker catch every exception in their guards (:mod:`streams.caught`) so
that a bug stops neither the other models nor the worker; a test that does not read the counters
(``internal_errors``) would pass over one. This plugin wraps :func:`streams.caught.report` for the
whole session, and fails a test whose setup or call reported an exception (the report names each
with its traceback), or errs in its teardown when that reported one, unless the test is marked
``@pytest.mark.expects_internal_errors`` (it provokes one on purpose: a detector made to fail).
"""

from __future__ import annotations

import traceback
from typing import Any, Generator

import pytest

import streams.caught as caught

MARKER = "expects_internal_errors"
REPORTED: list[str] = []
"""Every exception reported this session (its message and traceback), in order."""
_START = pytest.StashKey[int]()
_ORIGINAL = pytest.StashKey[Any]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARKER}: the test provokes exceptions that the pipeline's guards catch "
                                       "and count (internal_errors); without it, one fails the test")
    report = caught.report

    def recording(logger: Any, message: str, *args: Any) -> None:
        REPORTED.append(f"{message % args}\n{traceback.format_exc()}")
        report(logger, message, *args)

    caught.report = recording
    config.stash[_ORIGINAL] = report


def pytest_unconfigure(config: pytest.Config) -> None:
    if _ORIGINAL in config.stash:
        caught.report = config.stash[_ORIGINAL]


def _check(item: pytest.Item, since: int, phase: str) -> None:
    new = REPORTED[since:]
    if new and item.get_closest_marker(MARKER) is None:
        pytest.fail(f"{len(new)} exception(s) caught by the pipeline's guards during {phase} "
                    f"(streams.caught.report; mark the test @pytest.mark.{MARKER} if it provokes them):\n\n"
                    + "\n".join(new), pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    item.stash[_START] = len(REPORTED)  # before the fixtures: one a fixture's pipeline hits counts too
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    result = yield
    _check(item, item.stash[_START], "setup and call")
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, None, None]:
    since = len(REPORTED)
    result = yield
    _check(item, since, "teardown")
    return result

