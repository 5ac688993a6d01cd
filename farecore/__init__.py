"""farecore: the open validation engine for the Rongjun card.

The core decides taps, keeps the revocation table, journals rides and settles them. It
does no device I/O: readers (``readers/``) and the simulator (``sim/``) plug into it.
"""

from farecore.card.credential import (
    Credential,
    CredentialFields,
    build_credential,
    parse_unverified,
)
from farecore.card.crypto import Algorithm, PrivateKey, load_public_key
from farecore.card.keys import IssuerKey, Keyring
from farecore.card.proof import ProofOfTap, make_challenge
from farecore.card.transaction import Transaction, TransactionResult
from farecore.decide.checks import InMemoryRevocation, NoPassback, RevocationEntry
from farecore.decide.decision import Decision, Reason, Timings
from farecore.decide.validator import TerminalPolicy, Validator
from farecore.gate.tap import run_tap

__all__ = [
    "Algorithm",
    "Credential",
    "CredentialFields",
    "Decision",
    "InMemoryRevocation",
    "IssuerKey",
    "Keyring",
    "NoPassback",
    "PrivateKey",
    "ProofOfTap",
    "Reason",
    "RevocationEntry",
    "TerminalPolicy",
    "Timings",
    "Transaction",
    "TransactionResult",
    "Validator",
    "build_credential",
    "load_public_key",
    "make_challenge",
    "parse_unverified",
    "run_tap",
]

__version__ = "0.1.0"
