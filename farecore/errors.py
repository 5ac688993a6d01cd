"""Every exception farecore raises, in one tree.

Callers catch the narrowest class they can act on. The gate never lets one of these
reach the rider: the validator turns card-side failures into a DENY reason, and the
gate runtime turns reader failures into a recovery.

    FarecoreError
     ├── MalformedInput (ValueError)          bytes from outside do not parse
     │    ├── MalformedCredential
     │    ├── MalformedApdu
     │    ├── MalformedFile                   key, keyring, table, journal or batch file
     │    │    └── BatchRejected              a batch is malformed or its chain is broken
     │    └── BuildError                      rows that cannot make a revocation table
     ├── BadSignature                         a signature did not verify
     ├── KeyFileError                         a key file is unreadable or of the wrong kind
     ├── KeyringError (ValueError)            keyring misuse: duplicate id, unknown id
     ├── ConfigError (ValueError)             a gate or settlement configuration is wrong
     ├── TableRejected                        a revocation table failed a check
     │    ├── TableChanged                    ... because it changed while read: retry
     │    └── IssuedListError                 an issued-credentials list failed a check
     ├── JournalError                         the ride journal cannot be written or read
     ├── SettlementError                      the settlement cannot proceed
     │    └── LedgerDamaged                   the ledger holds what no night wrote
     └── ReaderError                          raised by reader adapters
          ├── ReaderIOError                   the reader itself failed (unplugged, pcscd gone)
          └── CardIOError                     the card failed (removed, mute, garbled)
"""

from __future__ import annotations

__all__ = [
    "BadSignature",
    "BatchRejected",
    "BuildError",
    "CardIOError",
    "ConfigError",
    "FarecoreError",
    "IssuedListError",
    "JournalError",
    "KeyFileError",
    "KeyringError",
    "LedgerDamaged",
    "MalformedApdu",
    "MalformedCredential",
    "MalformedFile",
    "MalformedInput",
    "ReaderError",
    "ReaderIOError",
    "SettlementError",
    "TableChanged",
    "TableRejected",
]


class FarecoreError(Exception):
    """Root of every farecore exception."""


class MalformedInput(FarecoreError, ValueError):
    """Bytes from outside the process do not parse."""


class MalformedCredential(MalformedInput):
    """A card credential has the wrong length, version, algorithm or field values."""


class MalformedApdu(MalformedInput):
    """An APDU, or a card's response to one, does not have the expected shape."""


class MalformedFile(MalformedInput):
    """A file farecore reads (key, keyring, table, journal, batch) is not well formed."""


class BatchRejected(MalformedFile):
    """A batch file is malformed, inconsistent, or its chain does not verify."""


class BuildError(MalformedInput):
    """The input rows cannot make a revocation table; the message names the row and the problem."""


class BadSignature(FarecoreError):
    """A signature did not verify against the message and key it was checked with."""


class KeyFileError(FarecoreError):
    """A key file cannot be read, or holds a key of another role or kind than required."""


class KeyringError(FarecoreError, ValueError):
    """An issuer keyring operation is invalid (duplicate key id, unknown key id, …)."""


class ConfigError(FarecoreError, ValueError):
    """A configuration file or option is missing, inconsistent or out of range."""


class TableRejected(FarecoreError):
    """A revocation table failed verification and must not be put in force."""


class TableChanged(TableRejected):
    """The table file was replaced or rewritten while it was being verified; try again later."""


class IssuedListError(TableRejected):
    """An issued-credentials list failed a check and must not be used."""


class JournalError(FarecoreError):
    """The ride journal cannot be opened, written or verified."""


class SettlementError(FarecoreError):
    """The settlement cannot proceed (unreadable inputs, inconsistent configuration)."""


class ReaderError(FarecoreError):
    """Base of the two errors a reader adapter may raise."""


class ReaderIOError(ReaderError):
    """The reader failed: it is gone, unplugged, or its daemon stopped answering."""


class CardIOError(ReaderError):
    """The card failed: removed mid-transaction, mute, or answering garbage."""


class LedgerDamaged(SettlementError):
    """The settlement ledger holds a value no night could have written (edited or corrupt)."""
