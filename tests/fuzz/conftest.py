"""Hypothesis profiles of the fuzz suite, chosen by ``FARECORE_FUZZ`` (``ci`` by default).

``ci`` is small and derandomized, so CI runs the same examples every time and stays fast;
``nightly`` is large and random, and keeps what it finds in the example database. The
fuzz tests take their settings from :func:`fuzz_support.fuzz_settings`, so the profile
applies to them alone and never to the rest of the test suite.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pytest
from fuzz_support import PROFILE_ENV, PROFILES
from hypothesis import HealthCheck, settings

# Fuzz targets build their inputs from fixtures and big seeds; neither is a smell here.
_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

settings.register_profile(
    PROFILES["ci"],
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
    suppress_health_check=_QUIET,
)
settings.register_profile(
    PROFILES["nightly"],
    max_examples=4000,
    deadline=None,
    derandomize=False,
    print_blob=True,
    suppress_health_check=_QUIET,
)


def pytest_configure(config: pytest.Config) -> None:
    name = os.environ.get(PROFILE_ENV, "ci")
    if name not in PROFILES:
        raise pytest.UsageError(f"{PROFILE_ENV}={name!r}: expected one of {', '.join(PROFILES)}")


@pytest.fixture(autouse=True)
def _quiet_uint64_wrap() -> Iterator[None]:
    # The revocation kernels hash with intended uint64 wrap-around, which numpy scalars
    # warn about when the kernels run interpreted (NUMBA_DISABLE_JIT=1).
    with np.errstate(over="ignore"):
        yield
