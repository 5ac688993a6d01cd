"""The card and its cryptography: APDUs, the credential, the proof of tap, the
transaction machine, signature schemes and keys.

The lowest layer of the core: it imports no other layer (docs/architecture.md).
"""
