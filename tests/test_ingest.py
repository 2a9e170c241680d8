"""detector ingest: Suricata EVE (dns v2 and v3, tls, quic, http, flow, alert) and Zeek logs
(TSV and JSON writers), gzip, standard input, malformed lines.  The end-to-end comparison
with replay over real Suricata output is in test_suricata_engine.py."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import threading

from detector.capture.logs import LogStats, read_log
from detector.capture.logs.eve import dns_name
from detector.ingest import Feeder, ingest
from detector.pipeline import Detector
from tests.helpers import REPO

T = "2024-06-24T12:00:00.000000+0000"
C, S = "198.18.0.10", "198.18.0.1"


def eve(etype: str, body: dict | None = None, **kw) -> str:
    rec = {"timestamp": T, "flow_id": kw.pop("flow_id", 1), "event_type": etype, "src_ip": kw.pop("src", C),
           "src_port": kw.pop("sport", 40000), "dest_ip": kw.pop("dst", S), "dest_port": kw.pop("dport", 53),
           "proto": kw.pop("proto", "UDP")}
    if body is not None:
        rec[etype if etype != "alert" else kw.pop("app")] = body
    rec.update(kw)
    return json.dumps(rec)


def run(tmp_path, text: str, name: str = "eve.json"):
    p = tmp_path / name
    p.write_text(text)
    det = Detector()
    alerts: list = []
    stats = LogStats()
    failed = ingest(det, [str(p)], alerts.extend, stats)
    alerts.extend(det.flush())
    return alerts, stats, failed


def keys(alerts):
    return sorted((a.observation.client, a.observation.hostname, a.observation.evidence.value, a.strength.label, a.count)
                  for a in alerts)


def test_eve_dns_v2_query_and_answer_with_cname(tmp_path):
    lines = [
        eve("dns", {"version": 2, "type": "query", "id": 7, "rrname": "updates.example.net", "rrtype": "A", "tx_id": 0}),
        eve("dns", {"version": 2, "type": "answer", "id": 7, "rrname": "updates.example.net", "rrtype": "A",
                    "rcode": "NOERROR", "answers": [
                        {"rrname": "updates.example.net", "rrtype": "CNAME", "ttl": 60, "rdata": "downloads.upd.kaspersky.com"},
                        {"rrname": "downloads.upd.kaspersky.com", "rrtype": "A", "ttl": 60, "rdata": "198.18.0.1"}]}),
        eve("dns", {"version": 2, "type": "query", "id": 8, "rrname": "s05.upd.kaspersky.com", "rrtype": "A", "tx_id": 1}),
    ]
    alerts, stats, failed = run(tmp_path, "\n".join(lines) + "\n")
    assert not failed and stats.malformed == 0
    assert keys(alerts) == [(C, "downloads.upd.kaspersky.com", "dns-answer", "completed", 1),
                            (C, "s05.upd.kaspersky.com", "dns-query", "weak", 1)]


def test_eve_dns_v3_request_response(tmp_path):
    lines = [
        eve("dns", {"version": 3, "type": "request", "id": 9, "queries": [{"rrname": "activation-v2.kaspersky.com", "rrtype": "A"}]}),
        eve("dns", {"version": 3, "type": "response", "id": 9, "rcode": "NOERROR",
                    "queries": [{"rrname": "activation-v2.kaspersky.com", "rrtype": "A"}],
                    "answers": [{"rrname": "activation-v2.kaspersky.com", "rrtype": "A", "ttl": 300, "rdata": "198.18.0.1"}]}),
    ]
    alerts, _, _ = run(tmp_path, "\n".join(lines))
    assert keys(alerts) == [(C, "activation-v2.kaspersky.com", "dns-query", "completed", 1)]


def test_eve_tls_quic_http_and_alert_counted_once(tmp_path):
    lines = [
        eve("tls", {"sni": "crl.kaspersky.com", "version": "TLS 1.2"}, flow_id=2, proto="TCP", dport=443),
        eve("alert", {"sni": "crl.kaspersky.com"}, app="tls", flow_id=2, proto="TCP", dport=443, app_proto="tls",
            alert={"signature_id": 1}),
        eve("quic", {"version": "1"}, flow_id=3, dport=443),
        eve("quic", {"version": "1", "sni": "ksn-url-geo.kaspersky-labs.com"}, flow_id=3, dport=443),
        eve("http", {"hostname": "p03.upd.kaspersky.com", "url": "http://p03.upd.kaspersky.com/index/u.xml",
                     "http_method": "GET", "protocol": "HTTP/1.1", "status": 200}, flow_id=4, proto="TCP", dport=8888, tx_id=0),
        eve("http", {"hostname": "cm.k.kaspersky-labs.com", "url": "cm.k.kaspersky-labs.com:443", "http_method": "CONNECT"},
            flow_id=5, proto="TCP", dport=8888, tx_id=0),
        eve("http", {"hostname": "touch.kaspersky.com", "url": "/", "http_method": "GET"}, flow_id=6, proto="TCP", dport=80, tx_id=0),
    ]
    alerts, stats, _ = run(tmp_path, "\n".join(lines))
    assert keys(alerts) == [
        (C, "cm.k.kaspersky-labs.com", "http-connect", "weak", 1),
        (C, "crl.kaspersky.com", "tls-sni", "completed", 1),
        (C, "ksn-url-geo.kaspersky-labs.com", "quic-sni", "weak", 1),
        (C, "p03.upd.kaspersky.com", "http-absolute-uri", "completed", 1),
        (C, "touch.kaspersky.com", "http-host", "weak", 1),
    ]
    assert stats.records["alert"] == 1


def test_eve_flow_port_and_learned_address(tmp_path):
    lines = [
        eve("dns", {"version": 2, "type": "query", "id": 7, "rrname": "activation-v2.kaspersky.com", "rrtype": "A", "tx_id": 0}),
        eve("dns", {"version": 2, "type": "answer", "id": 7, "rrname": "activation-v2.kaspersky.com", "rrtype": "A",
                    "rcode": "NOERROR", "answers": [{"rrname": "activation-v2.kaspersky.com", "rrtype": "A", "ttl": 60,
                                                     "rdata": "198.18.0.7"}]}),
        eve("tls", {"version": "TLS 1.3"}, flow_id=11, dst="198.18.0.7", proto="TCP", dport=443),  # no SNI
        eve("flow", None, flow_id=11, dst="198.18.0.7", proto="TCP", dport=443, app_proto="tls",
            flow={"pkts_toserver": 5, "pkts_toclient": 5, "start": T}),
        eve("flow", None, flow_id=12, dst="198.18.0.9", proto="TCP", dport=13000, app_proto="tls",
            flow={"pkts_toserver": 5, "pkts_toclient": 5, "start": T}),
        eve("flow", None, flow_id=13, dst="198.18.0.9", proto="ICMP", dport=0),
    ]
    alerts, stats, _ = run(tmp_path, "\n".join(lines))
    got = keys(alerts)
    assert (C, "activation-v2.kaspersky.com", "ip-from-dns", "completed", 1) in got
    assert any(k[1] == "tcp/13000" and k[2] == "ksc-port" for k in got)
    assert stats.ignored["flow"] == 1 and stats.malformed == 0


def test_malformed_lines_are_counted_with_line_numbers(tmp_path):
    good = eve("dns", {"version": 2, "type": "query", "id": 1, "rrname": "s05.upd.kaspersky.com", "rrtype": "A", "tx_id": 0})
    text = "\n".join([good, "{not json", '["a list"]', json.dumps({"event_type": "dns", "timestamp": "yesterday", "x": "kaspersky"}),
                      eve("dns", {"version": 2, "type": "query", "rrname": 5}, note="kaspersky"), good[: len(good) // 2],
                      good.replace('"tx_id": 0', '"tx_id": 1')]) + "\n"
    alerts, stats, failed = run(tmp_path, text)
    assert not failed and len(alerts) == 1 and alerts[0].count == 2
    assert stats.malformed == 4
    assert [m.split(": ", 1)[0].rsplit(":", 1)[1] for m in stats.malformed_lines] == ["2", "3", "4", "6"]


def test_gzip_and_unknown_format(tmp_path):
    good = eve("dns", {"version": 2, "type": "query", "id": 1, "rrname": "s05.upd.kaspersky.com", "rrtype": "A", "tx_id": 0})
    gz = tmp_path / "eve.json.gz"
    gz.write_bytes(gzip.compress((good + "\n").encode()))
    det = Detector()
    stats = LogStats()
    assert sum(1 for _ in read_log(str(gz), stats)) == 1
    (tmp_path / "x.log").write_text("hello world\n")
    failed = ingest(det, [str(tmp_path / "x.log"), str(tmp_path / "missing.json")], lambda a: None, stats)
    assert len(failed) == 2 and "neither Suricata EVE JSON nor a Zeek log" in failed[0] and "cannot open" in failed[1]


def test_suricata_rrname_text_becomes_replays_canonical_form():
    assert dns_name("s05.upd.kaspersky.com") == "s05.upd.kaspersky.com"
    # bytes that are not UTF-8 stay \xNN; bytes Suricata escaped that are UTF-8 become characters
    assert dns_name("bad\\xff\\xfe\\x80utf8.s05.upd.kaspersky.com") == "bad\\xff\\xfe\\x80utf8.s05.upd.kaspersky.com"
    assert dns_name("bidi\\xe2\\x80\\xae.x") == "bidi\u202e.x"
    assert dns_name("cr\rlf.x") == "cr\rlf.x"


ZEEK_DNS_TSV = """#separator \\x09
#set_separator\t,
#empty_field\t(empty)
#unset_field\t-
#path\tdns
#open\t2024-06-24-12-00-00
#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\ttrans_id\trtt\tquery\tqclass\tqclass_name\tqtype\tqtype_name\trcode\trcode_name\tAA\tTC\tRD\tRA\tZ\tanswers\tTTLs\trejected
#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tcount\tinterval\tstring\tcount\tstring\tcount\tstring\tcount\tstring\tbool\tbool\tbool\tbool\tcount\tvector[string]\tvector[interval]\tbool
1719230400.000000\tC1\t198.18.0.10\t40000\t198.18.0.1\t53\tudp\t7\t0.001\tupdates.example.net\t1\tC_INTERNET\t1\tA\t0\tNOERROR\tF\tF\tT\tT\t0\tdownloads.upd.kaspersky.com,198.18.0.1\t60.000000,60.000000\tF
1719230401.000000\tC2\t198.18.0.11\t40001\t198.18.0.1\t53\tudp\t8\t-\ts05.upd.kaspersky.com\t1\tC_INTERNET\t1\tA\t-\t-\tF\tF\tT\tF\t0\t-\t-\tF
1719230402.000000\tC3\tbroken line
#close\t2024-06-24-12-00-10
"""

ZEEK_CONN_TSV = """#separator \\x09
#set_separator\t,
#empty_field\t(empty)
#unset_field\t-
#path\tconn
#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\tservice\tduration\torig_bytes\tresp_bytes\tconn_state
#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tstring\tinterval\tcount\tcount\tstring
1719230403.000000\tC4\t198.18.0.10\t40010\t198.18.0.1\t8081\ttcp\t-\t1.0\t100\t200\tSF
1719230403.000000\tC5\t198.18.0.10\t40011\t198.18.0.1\t13000\ttcp\tssl\t1.0\t100\t200\tSF
"""


def test_zeek_tsv_dns_and_conn(tmp_path):
    (tmp_path / "dns.log").write_text(ZEEK_DNS_TSV)
    (tmp_path / "conn.log").write_text(ZEEK_CONN_TSV)
    det = Detector()
    alerts: list = []
    stats = LogStats()
    assert ingest(det, [str(tmp_path / "dns.log"), str(tmp_path / "conn.log")], alerts.extend, stats) == []
    alerts.extend(det.flush())
    got = keys(alerts)
    assert ("198.18.0.10", "downloads.upd.kaspersky.com", "dns-answer", "completed", 1) in got
    assert ("198.18.0.11", "s05.upd.kaspersky.com", "dns-query", "weak", 1) in got
    # 2 flows with no name of their own, to two server ports: two alerts (evidence on different
    # ports is not merged)
    assert got.count(("198.18.0.10", "downloads.upd.kaspersky.com", "ip-from-dns", "completed", 1)) == 2
    assert any(k[1] == "tcp/13000" for k in got)
    assert stats.malformed == 1 and stats.malformed_lines[0].endswith("dns.log:11: 3 fields, the header names 24")
    assert stats.formats["zeek-tsv"] == 2


def test_zeek_json_ssl_and_http(tmp_path):
    lines = [
        {"ts": 1719230400.0, "uid": "C1", "id.orig_h": "2001:db8::10", "id.orig_p": 50000, "id.resp_h": "2001:db8::1",
         "id.resp_p": 443, "version": "TLSv13", "server_name": "dc1-cert.ksn.kaspersky-labs.com", "established": True},
        {"ts": "2024-06-24T12:00:01.000000Z", "uid": "C2", "id.orig_h": C, "id.orig_p": 50001, "id.resp_h": S,
         "id.resp_p": 8080, "method": "GET", "host": "dnl-08.geo.kaspersky.com:8080", "uri": "/", "version": "1.1",
         "status_code": 200},
    ]
    alerts, stats, _ = run(tmp_path, "\n".join(json.dumps(x) for x in lines), "zeek.json")
    assert keys(alerts) == [("198.18.0.10", "dnl-08.geo.kaspersky.com", "http-host", "completed", 1),
                            ("2001:db8::10", "dc1-cert.ksn.kaspersky-labs.com", "tls-sni", "completed", 1)]
    assert stats.formats["zeek-json"] == 1


def test_feeder_flow_table_is_bounded():
    f = Feeder(Detector(), max_flows=10)
    for i in range(100):
        f._flow(str(i))
    assert len(f.flows) == 10


def test_cli_reads_standard_input(tmp_path):
    good = eve("dns", {"version": 2, "type": "query", "id": 1, "rrname": "s05.upd.kaspersky.com", "rrtype": "A", "tx_id": 0})
    p = subprocess.run([sys.executable, "-m", "detector", "ingest", "-"], input=(good + "\nnot json\n").encode(),
                       capture_output=True, cwd=REPO, timeout=60)
    assert p.returncode == 0
    out = [json.loads(x) for x in p.stdout.splitlines()]
    assert [o["alert"]["metadata"]["hostname"] for o in out] == [["s05.upd.kaspersky.com"]]
    assert b"malformed lines skipped: 1" in p.stderr and b"-:2: not JSON" in p.stderr


def test_standard_input_writes_an_alert_before_the_stream_ends():
    """tail -F eve.json | detector ingest -: the alert comes out --settle after its record,
    while the stream is still open (not at the end of the window, as for files)."""
    good = eve("dns", {"version": 2, "type": "query", "id": 1, "rrname": "s05.upd.kaspersky.com", "rrtype": "A", "tx_id": 0})
    other = eve("dns", {"version": 2, "type": "query", "id": 2, "rrname": "www.example.org", "rrtype": "A", "tx_id": 1})
    p = subprocess.Popen([sys.executable, "-m", "detector", "ingest", "--settle", "0.2", "-"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    guard = threading.Timer(60, p.kill)  # a run that holds the alert back fails instead of hanging
    guard.start()
    try:
        assert p.stdin is not None and p.stdout is not None
        p.stdin.write((other + "\n" + good + "\n").encode())
        p.stdin.flush()
        line = p.stdout.readline()  # held to the end of the stream, this would hang (the suite's timeout)
        assert json.loads(line)["alert"]["metadata"]["hostname"] == ["s05.upd.kaspersky.com"]
        p.stdin.write((good.replace('"tx_id": 0', '"tx_id": 5') + "\n").encode())
        p.stdin.close()
        assert p.wait(timeout=60) == 0
        assert p.stdout.read() == b""  # the repeat inside the window only counts
    finally:
        guard.cancel()
        if p.poll() is None:
            p.kill()


def test_prefiltered_named_flow_is_not_hostless(tmp_path):
    """DNS records holding no signature label are not parsed; a TLS record with a name of
    its own (not ours) still keeps its flow from being attributed to an address learned
    from DNS (a shared CDN address); an IP-literal Host does not."""
    lines = [
        eve("dns", {"version": 2, "type": "query", "id": 7, "rrname": "activation-v2.kaspersky.com", "rrtype": "A", "tx_id": 0}),
        eve("dns", {"version": 2, "type": "answer", "id": 7, "rrname": "activation-v2.kaspersky.com", "rrtype": "A",
                    "rcode": "NOERROR", "answers": [{"rrname": "activation-v2.kaspersky.com", "rrtype": "A", "ttl": 60,
                                                     "rdata": "198.18.0.7"}]}),
        eve("tls", {"sni": "www.example.org", "version": "TLS 1.3"}, flow_id=11, dst="198.18.0.7", proto="TCP", dport=443),
        eve("flow", None, flow_id=11, dst="198.18.0.7", proto="TCP", dport=443, app_proto="tls",
            flow={"pkts_toserver": 5, "pkts_toclient": 5, "start": T}),
        eve("http", {"hostname": "198.18.0.7", "url": "/", "http_method": "GET"}, flow_id=12, dst="198.18.0.7",
            proto="TCP", dport=80, tx_id=0),
        eve("flow", None, flow_id=12, dst="198.18.0.7", proto="TCP", dport=80, app_proto="http",
            flow={"pkts_toserver": 5, "pkts_toclient": 5, "start": T}),
    ]
    alerts, stats, _ = run(tmp_path, "\n".join(lines))
    learned = [a for a in alerts if a.observation.evidence.value == "ip-from-dns"]
    assert [a.observation.server_port for a in learned] == [80]
