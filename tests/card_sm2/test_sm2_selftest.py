"""``farecore selftest`` with the SM2 backend: the §4a known answers run, and pass."""

from __future__ import annotations

import pytest

pytest.importorskip("gmssl_pyx", reason="the SM2 backend: pip install 'farecore[sm]'")

from farecore import selftest
from farecore.card import sm2


def test_the_sm2_known_answers_run_and_pass() -> None:
    checks, _ = selftest.run_selftest(taps=20)
    names = [c.name for c in checks if c.name.startswith("SM2")]
    assert not [c for c in checks if c.skipped or not c.passed]
    assert "SM2 public key of a private scalar (d·G): Annex A" in names
    assert "SM2 decision: sm2-issuer/sm2-card" in names
    assert sum(n.startswith("SM2 decision:") for n in names) >= 25


def test_a_wrong_sm2_answer_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    real = sm2.public_from_secret
    monkeypatch.setattr(sm2, "public_from_secret", lambda s: real(s)[:-1] + b"\x00")
    checks = selftest._sm2_known_answers(selftest.load_sm2_vectors())
    assert any(not c.passed and "d·G" in c.name for c in checks)
