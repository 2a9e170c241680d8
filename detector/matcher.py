"""The compiled hostname index: exact names, label-boundary suffixes and wildcards.

Built once from a ``SignatureSet``.  A lookup normalises the name once, tries the exact
table, then walks a reversed-label trie (``com`` -> ``kaspersky`` -> ``upd`` ...) a label at
a time, so its cost depends on the number of labels in the name, never on the number of
signatures.  The most specific match wins: exact name > wildcard > longest suffix.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass

from .signatures import Signature, SignatureSet, wildcard_regex

# Trie keys that are not labels (labels are str; these are ints, so no label, not even one
# made of a NUL byte, can reach them).
_TERMINAL = 0  # trie key holding (signature, pattern) for a suffix ending here
_WILD = 1  # trie key holding wildcard entries whose literal part ends here
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
# Text limits.  A name is written in the canonical form (``hostname.text``): its bytes as
# UTF-8, each byte that is not valid UTF-8 as ``\xNN`` (four characters), so a 63-byte
# label can take 252 characters and a 253-byte name 1012.
MAX_LABEL_TEXT = 63 * 4
MAX_NAME_TEXT = 253 * 4
# A dot byte inside a DNS label (sent as ``\.`` in presentation format) is not a label
# boundary.  The displayed name shows it as the dot it is, but the string the index is
# searched with writes it as this character, which no signature pattern holds: such a
# label can only stand left of a matched suffix, never spell one of its labels.
DOT_IN_LABEL = "\x00"


MAX_CACHED_LOOKUPS = 8192  # names whose lookup answer a Matcher keeps


def _lower(name: str) -> str:
    return name.translate(_ASCII_LOWER)


def normalise(name: str) -> str | None:
    """ASCII letters lower-cased, one trailing dot removed; None if not a usable name.

    ``name`` is a host name in the canonical form (a TLS/QUIC SNI, an HTTP Host, a
    certificate name): labels are separated by dots.  Only ASCII is folded: folding
    Unicode case would let look-alikes match (the Kelvin sign lower-cases to ``k``), so a
    name must spell the signature's labels in ASCII to match.  The labels *left* of a
    matched suffix may hold anything a hostile sender put there (``|``, ``=``, quotes,
    backslashes, control characters, invalid UTF-8 shown as ``\\xNN``): the name still
    lies under the vendor's domain, and every output format escapes it.
    """
    if not name or len(name) > MAX_NAME_TEXT:
        return None
    n = _lower(name)
    if n.endswith("."):
        n = n[:-1]
    if not n:
        return None
    for label in n.split("."):
        if not label or len(label) > MAX_LABEL_TEXT:
            return None
    return n


def normalise_labels(labels: Sequence[str]) -> tuple[str, str] | None:
    """A name given as its wire labels (DNS), each in the canonical form, the root label
    left out: (the displayed name, the key the index is searched with), both lower-cased;
    None if not a usable name.  The two differ only when a label holds a dot."""
    if not labels:
        return None
    low = [_lower(x) for x in labels]
    for label in low:
        if not label or len(label) > MAX_LABEL_TEXT:
            return None
    shown = ".".join(low)
    if len(shown) > MAX_NAME_TEXT:
        return None
    if any("." in x for x in low):
        return shown, ".".join(x.replace(".", DOT_IN_LABEL) for x in low)
    return shown, shown


@dataclass(frozen=True, slots=True)
class Hit:
    signature: Signature
    pattern: str
    kind: str  # "name", "wildcard", "suffix"
    name: str = ""  # the looked-up name, normalised


def _wildcard_regex(pattern: str) -> re.Pattern[str]:
    return re.compile(wildcard_regex(pattern))


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
        self._excl: dict[int, tuple[tuple[str, tuple[str, ...]], ...]] = {}  # exclusive_suffixes, per signature id
        # Answers of lookup() and lookup_labels() by name: the same names come again and
        # again (every client's queries, each answer).  The index never changes once built
        # and a Hit is frozen, so a cached answer is the answer; emptied when full.
        self._by_name: dict[str, Hit | None] = {}
        self._by_labels: dict[tuple[str, ...], Hit | None] = {}
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

    def dns_tails(self) -> list[list[bytes]] | None:
        """The last (at most three) literal labels each name pattern ends with: a DNS message
        none of whose names ends so cannot match (the core's DNS prefilter). None when a
        pattern has no literal label to end with."""
        tails: set[tuple[bytes, ...]] = set()
        for sig in self._sigs:
            for pattern in (*sig.names, *sig.suffixes, *sig.wildcards):
                labels = pattern.lower().split(".")
                literal: list[str] = []
                for label in reversed(labels):
                    if "*" in label or "?" in label:
                        break
                    literal.insert(0, label)
                if not literal:
                    return None
                tails.add(tuple(x.encode("ascii") for x in literal[-3:]))
                if len(tails) > MAX_TAILS:
                    return None
        return [list(t) for t in sorted(tails)]

    def ports(self, proto: int) -> list[int]:
        """Every port a signature names for this IP protocol (6 or 17), for the core's prefilter."""
        return sorted(p for (pr, p) in self._ports if pr == proto)

    def lookup_port(self, proto: int, port: int) -> Signature | None:
        """The port signature for (IP protocol number, port), if any."""
        return self._ports.get((proto, port)) if self._ports else None

    def exclusive_suffixes(self, sig: Signature) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """The suffixes of ``sig`` under which every name matches ``sig`` except a few exact
        names of other signatures: each with those names. A suffix qualifies when it is
        ``sig``'s in the index, no longer suffix or wildcard of another signature lies at or
        under it, no wildcard of another signature sits on its path (wildcards win over
        suffixes), and at most ``MAX_EXCEPTIONS`` exact names of others lie under it. The
        compiled core may count names under these for alert-storm control (``storm.py``)
        without asking the index. Cached per signature."""
        got = self._excl.get(sig.id)
        if got is None:
            got = self._excl[sig.id] = tuple(
                (x, names) for x in sig.suffixes if (names := self._exceptions(sig, x)) is not None
            )
        return got

    def _exceptions(self, sig: Signature, suffix: str) -> tuple[str, ...] | None:
        def other(entries: object) -> bool:
            if isinstance(entries, Hit):
                return entries.signature is not sig
            return any(hit.signature is not sig for _rx, hit in entries)  # type: ignore[attr-defined]

        node: dict | None = self._trie
        for label in reversed(suffix.split(".")):
            assert node is not None
            if _WILD in node and other(node[_WILD]):
                return None
            node = node.get(label)
            if node is None:
                return None
        assert node is not None
        if node.get(_TERMINAL) is None or other(node[_TERMINAL]):
            return None
        stack = [node]
        while stack:
            n = stack.pop()
            for k, v in n.items():
                if k in (_TERMINAL, _WILD):
                    if other(v):
                        return None
                else:
                    stack.append(v)
        tail = "." + suffix
        names = tuple(
            name for name, i in self._exact.items()
            if (name == suffix or name.endswith(tail)) and self._sigs[i] is not sig
        )
        return names if len(names) <= MAX_EXCEPTIONS else None

    def _node(self, labels: list[str]) -> dict:
        node = self._trie
        for label in reversed(labels):
            node = node.setdefault(label, {})
        return node

    def lookup(self, hostname: str) -> Hit | None:
        """The most specific signature for a raw hostname, or None."""
        cache = self._by_name
        try:
            return cache[hostname]
        except KeyError:
            pass
        name = normalise(hostname)
        hit = None if name is None else self.lookup_normalised(name)
        if len(cache) >= MAX_CACHED_LOOKUPS:
            cache.clear()
        cache[hostname] = hit
        return hit

    def lookup_labels(self, labels: Sequence[str]) -> Hit | None:
        """The most specific signature for a name given as its wire labels (DNS), or None.
        ``Hit.name`` is the displayed name (labels joined by dots)."""
        if type(labels) is not tuple:
            return self._lookup_labels(labels)
        cache = self._by_labels
        try:
            return cache[labels]
        except KeyError:
            pass
        hit = self._lookup_labels(labels)
        if len(cache) >= MAX_CACHED_LOOKUPS:
            cache.clear()
        cache[labels] = hit
        return hit

    def _lookup_labels(self, labels: Sequence[str]) -> Hit | None:
        norm = normalise_labels(labels)
        if norm is None:
            return None
        shown, key = norm
        hit = self.lookup_normalised(key)
        if hit is None or key == shown:
            return hit
        return Hit(hit.signature, hit.pattern, hit.kind, shown)

    def lookup_normalised(self, name: str) -> Hit | None:
        idx = self._exact.get(name)
        if idx is not None:
            return Hit(self._sigs[idx], name, "name", name)
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
                    return Hit(whit.signature, whit.pattern, whit.kind, name)
        return Hit(suffix_hit.signature, suffix_hit.pattern, suffix_hit.kind, name) if suffix_hit else None


MAX_ANCHORS = 64
MAX_EXCEPTIONS = 10_000  # exact names of other signatures under a storm-muted suffix
MAX_TAILS = 4096


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
