"""The HTML inventory in a real headless Chromium (Debian ``chromium``, installed by
tests/run.sh): it loads with no console error and no network request, the host table
shows the expected hosts (read back from the DOM), sorting and filtering work, the
screenshot is not blank, and hostile wire strings render as text.

``UPDATE_DOCS=1`` copies the screenshot of the bundled captures' report to
docs/report.png (the one the README shows)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter

import pytest
from chromium import Chromium, find, png_pixels
from helpers import PCAPS, REPO
from test_report_inventory import T0, eve

pytestmark = pytest.mark.skipif(find() is None, reason="chromium is not installed (tests/run.sh installs it as root)")

CAPTURES = [str(PCAPS / p) for p in ("tls-sni.pcap", "dns-udp-tcp.pcap", "http-host-proxy.pcap", "issue4", "quic", "names")]


def _not_blank(png: bytes) -> None:
    w, h, rows = png_pixels(png)
    assert w == 1400 and h >= 1000
    bpp = len(rows[0]) // w
    colours = Counter(row[x * bpp:x * bpp + 3] for row in rows[::10] for x in range(0, w, 5))
    assert len(colours) > 20, f"only {len(colours)} colours: blank page?"
    assert colours.most_common(1)[0][1] < 0.9 * sum(colours.values()), "one colour fills the page"


def _checked_page(b: Chromium, path) -> object:
    page = b.open(path.as_uri())
    assert page.errors() == []
    assert page.requests() == [path.as_uri()], "the page fetched something besides itself"
    return page


def test_report_of_bundled_captures_in_chromium(tmp_path):
    report = tmp_path / "inventory.html"
    subprocess.run([sys.executable, "-m", "detector", "replay", "-q", "-o", os.devnull, "--report", str(report), *CAPTURES],
                   check=True, cwd=REPO)  # fmt: skip
    as_json = tmp_path / "inventory.json"
    subprocess.run([sys.executable, "-m", "detector", "replay", "-q", "-o", os.devnull, "--report", str(as_json), *CAPTURES],
                   check=True, cwd=REPO)  # fmt: skip
    expected = [h["ip"] for h in json.loads(as_json.read_text())["hosts"]]
    assert {"198.18.0.10", "198.18.0.1", "2001:db8::10"} <= set(expected)
    with Chromium() as b:
        page = _checked_page(b, report)
        ips = page.eval("Array.from(document.querySelectorAll('#host-table tbody tr td.host-ip')).map(td => td.textContent)")
        assert ips == expected
        assert page.eval("document.getElementById('n-product').textContent") == str(len(expected))
        assert page.eval("document.querySelectorAll('#timeline svg rect[fill-opacity]').length") > 0
        assert page.eval("document.querySelectorAll('#evidence details').length") == len(expected)
        # filter, then sort by alerts
        shown = page.eval("""(() => { const f = document.getElementById('filter'); f.value = '2001:db8';
            f.dispatchEvent(new Event('input')); return Array.from(document.querySelectorAll('#host-table tbody tr'))
            .filter(r => !r.hidden).map(r => r.cells[0].textContent); })()""")
        assert shown == [ip for ip in expected if "2001:db8" in ip]
        page.eval("document.getElementById('filter').value=''; document.getElementById('filter').dispatchEvent(new Event('input'))")
        alerts = page.eval("""(() => { const th = document.querySelectorAll('#host-table th')[9]; th.click(); th.click();
            return Array.from(document.querySelectorAll('#host-table tbody tr')).map(r => +r.cells[9].textContent); })()""")
        assert alerts == sorted(alerts, reverse=True) and len(alerts) == len(expected)
        page.eval("document.querySelectorAll('#host-table th')[0].click()")
        page.eval("window.scrollTo(0, 0)")
        height = min(int(page.eval("document.documentElement.scrollHeight")), 2400)
        page.call("Emulation.setDeviceMetricsOverride", {"width": 1400, "height": height, "deviceScaleFactor": 1, "mobile": False})
        png = page.screenshot()
        assert page.errors() == [] and page.requests() == [report.as_uri()]
    _not_blank(png)
    (tmp_path / "report.png").write_bytes(png)
    if os.environ.get("UPDATE_DOCS"):
        shutil.copy(tmp_path / "report.png", REPO / "docs" / "report.png")


HOSTILE_NAME = "<script>window.__pwned=1</script><img src=x onerror=window.__pwned=2>\"'&amp;\u202egnp.exe\u2066x"


def test_hostile_strings_render_as_text(tmp_path):
    alerts = tmp_path / "alerts.json"
    recs = [
        eve("10.0.0.5", "activation-v2.kaspersky.com", t=T0, mac="02:00:00:00:00:05",
            extra={"client_hostname": [HOSTILE_NAME], "client_hostname_source": ["dhcp"]}),
        eve("10.0.0.6", "<b>x</b>.kaspersky.com", t=T0 + 60, category="vendor-domain\u202e<i>", product_only=False,
            extra={"client_hostname": ["\"><svg onload=window.__pwned=3>"], "client_hostname_source": ["dns-ptr"]}),
    ]  # fmt: skip
    alerts.write_text("".join(json.dumps(r) + "\n" for r in recs))
    report = tmp_path / "hostile.html"
    subprocess.run([sys.executable, "-m", "detector", "report", "-q", "-o", str(report), str(alerts)], check=True, cwd=REPO)
    with Chromium() as b:
        page = _checked_page(b, report)
        assert page.eval("typeof window.__pwned") == "undefined"
        assert page.eval("document.scripts.length") == 1, "only the page's own script"
        assert page.eval("document.querySelectorAll('img, #hosts b, #website i, svg[onload]').length") == 0
        name = page.eval("document.querySelector('#host-table td.host-name').textContent")
        assert name == HOSTILE_NAME.replace("\u202e", "\\u202e").replace("\u2066", "\\u2066") + " (dhcp)"
        site = page.eval("document.querySelector('#website-table td.host-name').textContent")
        assert site == "\"><svg onload=window.__pwned=3> (dns-ptr)"
        assert "<b>x</b>.kaspersky.com" in page.eval("document.querySelector('#website-table').textContent")
        _not_blank(page.screenshot())
