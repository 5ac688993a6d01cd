"""farecore: the open validation engine for the Rongjun card.

The core decides taps, keeps the revocation table, journals rides and settles them. It
does no device I/O: readers (``readers/``) and the simulator (``sim/``) plug into it.
"""

from farecore.checks import InMemoryRevocation, NoPassback, RevocationEntry
from farecore.credential import Credential, CredentialFields, build_credential, parse_unverified
from farecore.crypto import Algorithm, PrivateKey, load_public_key
from farecore.decision import Decision, Reason, Timings
from farecore.keys import IssuerKey, Keyring
from farecore.proof import ProofOfTap, make_challenge
from farecore.tap import run_tap
from farecore.transaction import Transaction, TransactionResult
from farecore.validator import TerminalPolicy, Validator

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
