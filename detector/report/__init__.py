"""The host inventory report (``detector report``, ``replay --report``): alerts ->
``Inventory`` -> table, CSV, JSON or a self-contained HTML page."""

from __future__ import annotations

from .contact import Contact, NotAnAlert, from_alert, from_record
from .inventory import DEFAULT_HOME_NET, HomeNet, Host, Inventory

__all__ = ["Contact", "NotAnAlert", "from_alert", "from_record", "DEFAULT_HOME_NET", "HomeNet", "Host", "Inventory"]
