"""Packets -> observations.  Each parser follows one contract for untrusted bytes: it
returns a value when the message is complete, ``None`` when it needs more bytes, and raises
``DecodeError`` when the bytes are malformed; nothing else escapes."""
