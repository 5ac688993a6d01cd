"""The durable record of rides: the record codec and hash chain, a terminal's journal, a
station's journal, the passback state kept with them, and the signed daily batches.

Above ``farecore.decide``; it never reads a reader or decides a tap.
"""
