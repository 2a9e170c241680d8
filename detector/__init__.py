"""Find Kaspersky software on a network by its traffic.

Public API::

    from detector import Detector, load_signatures, Alert
    det = Detector(load_signatures())
    for ts, linktype, frame in my_capture:
        for alert in det.feed(ts, linktype, frame):
            ...
    for alert in det.flush():
        ...
"""

from .model import Alert
from .pipeline import Detector
from .signatures import load_signatures

__version__ = "0.1.0"
__all__ = ["Alert", "Detector", "load_signatures", "__version__"]
