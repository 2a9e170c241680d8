"""The I/O edge in: capture files (pcap.py); live capture and logs come later."""
