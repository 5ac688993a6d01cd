"""Deciding a tap: the validator and its decision, the revocation table, the issued list,
the passback and clock checks.

Above ``farecore.card``; it never writes a journal or drives a reader.
"""
