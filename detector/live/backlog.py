"""The whole packets a live worker holds while its heads threads are busy (``worker.py``).

The main thread reads the whole handle; while a heads thread fed a packet in the last
0.2 s, the batches it reads wait here and the heads callbacks feed them between their own
packets, so neither thread starves the other for the GIL.  Bounded in packets and in
bytes (frame + ``BACKLOG_OVERHEAD`` each; 50,000 full-size frames would be 75 MB); when
there is no room for another batch the worker stops reading, and the packets wait in the
kernel ring (whose overflow the kernel counts) instead of being read to be dropped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from ..capture.live import BACKLOG_FRAME, BACKLOG_OVERHEAD, BATCH, MAX_BACKLOG, MAX_BACKLOG_BYTES

Batch = list[tuple[float, int, bytes]]  # (timestamp, link type, frame)


class Backlog:
    def __init__(self, max_packets: int = MAX_BACKLOG, max_bytes: int = MAX_BACKLOG_BYTES) -> None:
        self.max_packets, self.max_bytes = max_packets, max_bytes
        self.batches: deque[Batch] = deque()
        self.packets = 0
        self.bytes = 0

    def __bool__(self) -> bool:
        return bool(self.batches)

    def room(self) -> bool:
        """Room for one more batch of ``BATCH`` frames of up to ``BACKLOG_FRAME`` bytes."""
        return (self.packets + BATCH <= self.max_packets
                and self.bytes + BATCH * (BACKLOG_FRAME + BACKLOG_OVERHEAD) <= self.max_bytes)

    def add(self, batch: Batch) -> bool:
        """Queue ``batch``; False (nothing queued) when it does not fit."""
        size = _size(batch)
        if self.packets + len(batch) > self.max_packets or self.bytes + size > self.max_bytes:
            return False
        self.batches.append(batch)
        self.packets += len(batch)
        self.bytes += size
        return True

    def take(self) -> Iterator[Batch]:
        """The queued batches, oldest first, each removed as it is handed out."""
        while self.batches:
            batch = self.batches.popleft()
            self.packets -= len(batch)
            self.bytes -= _size(batch)
            yield batch


def _size(batch: Batch) -> int:
    return sum(len(d) for _, _, d in batch) + BACKLOG_OVERHEAD * len(batch)
