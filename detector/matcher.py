"""The compiled hostname index: exact names, label-boundary suffixes and wildcards.

Built once from a ``SignatureSet``.  A lookup normalises the name once, tries the exact
table, then walks a reversed-label trie (``com`` -> ``kaspersky`` -> ``upd`` ...) a label at
a time, so its cost depends on the number of labels in the name, never on the number of
signatures.  The most specific match wins: exact name > wildcard > longest suffix.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

from .signatures import Signature, SignatureSet

_TERMINAL = "\x00"  # trie key holding (signature, pattern) for a suffix ending here
_WILD = "\x01"  # trie key holding wildcard entries whose literal part ends here
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
# Text limits: a DNS name in presentation form writes an odd byte as \DDD (four characters),
# so a 63-byte label can take 252 characters and a 253-byte name 1012.
MAX_LABEL_TEXT = 63 * 4
MAX_NAME_TEXT = 253 * 4
_ESCAPED = re.compile(r"\\(?:\d{3}|.)", re.S)


def split_labels(name: str) -> list[str]:
    """Labels of a name; a dot written ``\\.`` (presentation format) stays inside its label."""
    if "\\" not in name:
        return name.split(".")
    labels, cur, pos = [], [], 0
    while pos < len(name):
        m = _ESCAPED.match(name, pos)
        if m:
            cur.append(m.group(0))
            pos = m.end()
        elif name[pos] == ".":
            labels.append("".join(cur))
            cur, pos = [], pos + 1
        else:
            cur.append(name[pos])
            pos += 1
    labels.append("".join(cur))
    return labels


def normalise(name: str) -> str | None:
    """ASCII letters lower-cased, one trailing dot removed; None if not a usable name.

    Only ASCII is folded: folding Unicode case would let look-alikes match (the Kelvin sign
    lower-cases to ``k``), so a name must spell the signature's labels in ASCII to match.
    The labels *left* of a matched suffix may hold anything a hostile sender put there
    (``|``, ``=``, quotes, control characters, invalid UTF-8 shown as ``\\xNN``): the name
    still lies under the vendor's domain, and every output format escapes it.
    """
    if not name or len(name) > MAX_NAME_TEXT:
        return None
    n = name.translate(_ASCII_LOWER)
    if n.endswith(".") and not n.endswith("\\."):
        n = n[:-1]
    if not n:
        return None
    for label in split_labels(n):
        if not label or len(label) > MAX_LABEL_TEXT:
            return None
    return n


@dataclass(frozen=True, slots=True)
class Hit:
    signature: Signature
    pattern: str
    kind: str  # "name", "wildcard", "suffix"
    name: str = ""  # the looked-up name, normalised


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
        self.dns_anchors = _anchors(signatures)
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

    def ports(self, proto: int) -> list[int]:
        """Every port a signature names for this IP protocol (6 or 17), for the core's prefilter."""
        return sorted(p for (pr, p) in self._ports if pr == proto)

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
            return Hit(self._sigs[idx], name, "name", name)
        node = self._trie
        suffix_hit: Hit | None = None
        wild_nodes = []
        labels = split_labels(name)
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
                    return Hit(whit.signature, whit.pattern, whit.kind, name)
        return Hit(suffix_hit.signature, suffix_hit.pattern, suffix_hit.kind, name) if suffix_hit else None


MAX_ANCHORS = 64


def _anchors(signatures: SignatureSet) -> tuple[bytes, ...] | None:
    """Wire-format labels (length byte + lower-case label) of which every name pattern
    holds at least one, e.g. ``b"\\x09kaspersky"``.  A DNS message whose lower-cased bytes
    contain none of them cannot hold a matching name, so it need not be parsed.  None when
    the packs are too varied for this to pay (then every DNS message is parsed)."""
    out: set[bytes] = set()
    for sig in signatures:
        for pattern in (*sig.names, *sig.suffixes, *sig.wildcards):
            labels = pattern.split(".")[:-1]  # never the top-level label alone
            literal = [x for x in labels if "*" not in x and "?" not in x]
            if not literal:
                return None
            best = next((x for x in reversed(literal) if len(x) >= 4), literal[-1])
            out.add(bytes([len(best)]) + best.encode("ascii"))
            if len(out) > MAX_ANCHORS:
                return None
    return tuple(sorted(out))
