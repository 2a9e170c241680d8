"""The exception hierarchy.  Only ``cli.py`` maps these to exit codes."""

from __future__ import annotations


class DetectorError(Exception):
    """Base of every error the detector raises on purpose."""


class DecodeError(DetectorError, ValueError):
    """Bytes from the wire (or a capture file) are malformed.

    Parsers raise only this for bad input; the pipeline counts it by ``reason`` and moves on.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class CaptureError(DetectorError):
    """A capture file cannot be opened or is not a capture at all (names the file)."""


class SignatureError(DetectorError):
    """One or more problems in signature files, each as ``file:line: message``."""

    def __init__(self, problems: list[tuple[str, int, str]]) -> None:
        self.problems = problems
        super().__init__("\n".join(f"{p}:{ln}: {msg}" for p, ln, msg in problems))


class ConfigError(DetectorError):
    """A bad command-line option or configuration value."""


class SinkError(DetectorError):
    """An output destination cannot be opened or written."""
