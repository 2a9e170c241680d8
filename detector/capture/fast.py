"""Link types libpcap hands the live capture, and where the IP header starts in each.

(The libpcap replay fast path that lived here was replaced by the compiled core,
``capture/core.py``; live capture still reads through libpcap.)
"""

from __future__ import annotations

# libpcap DLT value -> (where the IPv4 header starts, LINKTYPE number for our decoder)
LINKS = {
    1: (14, 1),  # Ethernet
    113: (16, 113),  # Linux cooked v1
    276: (20, 276),  # Linux cooked v2
    12: (0, 101),  # raw IP (DLT_RAW on Linux)
    14: (0, 101),
    101: (0, 101),
    0: (4, 0),  # BSD loopback
}
