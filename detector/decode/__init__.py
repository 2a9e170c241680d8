"""Bytes -> packets: link layers (link.py), IP with fragment reassembly (ip.py),
TCP/UDP (transport.py), and the bounded per-flow stream table (flows.py)."""
