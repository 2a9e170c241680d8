"""Bytes -> somewhere, one module per transport.  ``SINKS`` maps a scheme to an opener."""
