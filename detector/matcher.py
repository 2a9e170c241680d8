"""The compiled hostname index: exact names, label-boundary suffixes and wildcards.

Built once from a ``SignatureSet``.  A lookup normalises the name once, tries the exact
table, then walks a reversed-label trie (``com`` -> ``kaspersky`` -> ``upd`` ...) a label at
a time, so its cost depends on the number of labels in the name, never on the number of
signatures.  The most specific match wins: exact name > wildcard > longest suffix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .signatures import Signature, SignatureSet

_VALID_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
_TERMINAL = "\x00"  # trie key holding (signature, pattern) for a suffix ending here
_WILD = "\x01"  # trie key holding wildcard entries whose literal part ends here


def normalise(name: str) -> str | None:
    """Lower-case ASCII, one trailing dot removed, labels checked; None if not a hostname.

    Non-ASCII text never matches: names on the wire are A-labels (``xn--``), and folding
    Unicode case would let look-alikes (the Kelvin sign lower-cases to ``k``) match.
    """
    if not name or len(name) > 254 or not name.isascii():
        return None
    n = name.lower()
    if n.endswith("."):
        n = n[:-1]
    if not n or len(n) > 253:
        return None
    for label in n.split("."):
        if not _VALID_LABEL.match(label):
            return None
    return n


@dataclass(frozen=True, slots=True)
class Hit:
    signature: Signature
    pattern: str
    kind: str  # "name", "wildcard", "suffix"


def _wildcard_regex(pattern: str) -> re.Pattern[str]:
    parts = []
    for ch in pattern:
        if ch == "*":
            parts.append("[^.]+")
        elif ch == "?":
            parts.append("[^.]")
        else:
            parts.append(re.escape(ch))
    return re.compile("".join(parts))


class Matcher:
    def __init__(self, signatures: SignatureSet) -> None:
        self.signatures = signatures
        # Exact names map to an index into _sigs (a small int, no object per name): a
        # million names cost the dict entry and the name string only.
        self._sigs: list[Signature] = list(signatures)
        self._exact: dict[str, int] = {}
        self._trie: dict = {}
        self.size = 0
        self._ports: dict[tuple[int, int], Signature] = {}
        for i, sig in enumerate(self._sigs):
            self._exact.update(dict.fromkeys(sig.names, i))
            self.size += len(sig.names)
            for proto, lo, hi in sig.ports:
                for port in range(lo, hi + 1):
                    self._ports[(6 if proto == "tcp" else 17, port)] = sig
            for suffix in sig.suffixes:
                self._node(suffix.split("."))[_TERMINAL] = Hit(sig, suffix, "suffix")
                self.size += 1
            for wild in sig.wildcards:
                labels = wild.split(".")
                literal: list[str] = []
                for label in reversed(labels):
                    if "*" in label or "?" in label:
                        break
                    literal.insert(0, label)
                node = self._node(literal)
                node.setdefault(_WILD, []).append((_wildcard_regex(wild), Hit(sig, wild, "wildcard")))
                self.size += 1

    def lookup_port(self, proto: int, port: int) -> Signature | None:
        """The port signature for (IP protocol number, port), if any."""
        return self._ports.get((proto, port)) if self._ports else None

    def _node(self, labels: list[str]) -> dict:
        node = self._trie
        for label in reversed(labels):
            node = node.setdefault(label, {})
        return node

    def lookup(self, hostname: str) -> Hit | None:
        """The most specific signature for a raw hostname, or None."""
        name = normalise(hostname)
        if name is None:
            return None
        return self.lookup_normalised(name)

    def lookup_normalised(self, name: str) -> Hit | None:
        idx = self._exact.get(name)
        if idx is not None:
            return Hit(self._sigs[idx], name, "name")
        node = self._trie
        suffix_hit: Hit | None = None
        wild_nodes = []
        labels = name.split(".")
        for i in range(len(labels) - 1, -1, -1):
            node = node.get(labels[i])  # type: ignore[assignment]
            if node is None:
                break
            t = node.get(_TERMINAL)
            if t is not None:
                suffix_hit = t
            w = node.get(_WILD)
            if w is not None and i > 0:
                wild_nodes.append(w)
        for entries in reversed(wild_nodes):  # deepest literal part first
            for regex, whit in entries:
                if regex.fullmatch(name):
                    return whit
        return suffix_hit
