"""Fixtures every test area may use: the golden vectors and a keyring built from them."""

from __future__ import annotations

import signal
from typing import Any

import pytest
from card_vectors import load_vectors, vector_keyring, vector_policy

from farecore.card.keys import Keyring
from farecore.decide.validator import TerminalPolicy

# Tests that press Ctrl-C send SIGINT to a process they start. A shell without job
# control starts a background job with SIGINT ignored, and an ignored signal stays
# ignored across exec: Python would then install no KeyboardInterrupt handler, and such
# a test would fail for how pytest was launched. A handler here is reset to the default
# at exec, so every process a test starts can be interrupted.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def vectors() -> dict[str, Any]:
    return load_vectors()


@pytest.fixture(scope="session")
def keyring(vectors: dict[str, Any]) -> Keyring:
    return vector_keyring(vectors)


@pytest.fixture(scope="session")
def policy(vectors: dict[str, Any]) -> TerminalPolicy:
    return vector_policy(vectors)


@pytest.fixture(scope="session")
def now_ms(vectors: dict[str, Any]) -> int:
    return int(vectors["terminal"]["now_unix_ms"])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The suite runs on several xdist workers (scripts/test.sh); the PC/SC tests share one
    # session pcscd and its card servers, so they all go to one worker, in order.
    for item in items:
        if "tests/readers_pcsc/" in item.nodeid:
            item.add_marker(pytest.mark.xdist_group("pcscd"))
