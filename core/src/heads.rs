//! Does a flow's first payload name its host? Only then is an address learned from DNS
//! irrelevant to it: the detector's Python side attributes a flow to a learned name only
//! when the flow carries no host name of its own (no SNI, ECH, no Host or an IP literal,
//! another protocol). The answer here is conservative: `true` only for a ClientHello that
//! is whole in this segment with a non-empty host_name SNI and no ECH/ESNI, or an HTTP
//! request head (not CONNECT) whole in this segment with a Host that is not an IP literal.
//! Everything else counts as hostless, and hostless flows to learned addresses go to Python.
//!
//! Parsing is `tls-parser` (rusticata, Suricata's) and `httparse` (hyper's).

use std::net::IpAddr;

use tls_parser::{
    parse_tls_client_hello_extensions, parse_tls_plaintext, SNIType, TlsExtension, TlsMessage,
    TlsMessageHandshake,
};

const ECH: u16 = 0xfe0d;
const MAX_HEADERS: usize = 64;

pub fn names_its_host(p: &[u8]) -> bool {
    match p.first() {
        Some(0x16) => tls_named(p),
        Some(_) => http_named(p),
        None => false,
    }
}

fn tls_named(p: &[u8]) -> bool {
    let rec = match parse_tls_plaintext(p) {
        Ok((_, r)) => r,
        Err(_) => return false,
    };
    for msg in &rec.msg {
        if let TlsMessage::Handshake(TlsMessageHandshake::ClientHello(ch)) = msg {
            let exts = match ch.ext.map(parse_tls_client_hello_extensions) {
                Some(Ok((_, e))) => e,
                _ => return false,
            };
            let mut named = false;
            for e in &exts {
                match e {
                    TlsExtension::SNI(names) => {
                        named = names
                            .iter()
                            .any(|(t, n)| *t == SNIType::HostName && !n.is_empty());
                    }
                    TlsExtension::EncryptedServerName { .. } => return false,
                    TlsExtension::Unknown(t, _) if t.0 == ECH => return false,
                    _ => {}
                }
            }
            return named;
        }
    }
    false
}

fn http_named(p: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(p) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return false,
    }
    if req.method.is_none_or(|m| m.eq_ignore_ascii_case("CONNECT")) {
        return false;
    }
    let hosts: Vec<&[u8]> = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"))
        .map(|h| h.value)
        .collect();
    if hosts.len() != 1 {
        return false; // none, or several: leave it to Python
    }
    let host = match std::str::from_utf8(hosts[0]) {
        Ok(h) => h.trim(),
        Err(_) => return false,
    };
    !host.is_empty() && !is_ip_literal(host)
}

/// `192.0.2.1`, `192.0.2.1:80`, `[2001:db8::1]`, `[2001:db8::1]:80`, a bare IPv6 address.
fn is_ip_literal(host: &str) -> bool {
    if let Some(rest) = host.strip_prefix('[') {
        return rest
            .split(']')
            .next()
            .is_some_and(|a| a.parse::<IpAddr>().is_ok());
    }
    if host.parse::<IpAddr>().is_ok() {
        return true;
    }
    host.rsplit_once(':')
        .is_some_and(|(a, _)| a.parse::<IpAddr>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(ext: &[u8]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[0x11; 32]);
        body.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(ext);
        let mut hs = vec![1, 0, (body.len() >> 8) as u8, body.len() as u8];
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 3, 1, (hs.len() >> 8) as u8, hs.len() as u8];
        rec.extend_from_slice(&hs);
        rec
    }

    fn sni(name: &[u8]) -> Vec<u8> {
        let mut list = vec![0];
        list.extend_from_slice(&(name.len() as u16).to_be_bytes());
        list.extend_from_slice(name);
        let mut e = vec![0, 0];
        e.extend_from_slice(&((list.len() + 2) as u16).to_be_bytes());
        e.extend_from_slice(&(list.len() as u16).to_be_bytes());
        e.extend_from_slice(&list);
        e
    }

    #[test]
    fn sni_names_the_flow_ech_does_not() {
        assert!(names_its_host(&hello(&sni(b"example.com"))));
        assert!(!names_its_host(&hello(&[])));
        let mut with_ech = sni(b"example.com");
        with_ech.extend_from_slice(&[0xfe, 0x0d, 0, 1, 0]);
        assert!(!names_its_host(&hello(&with_ech)));
    }

    #[test]
    fn a_cut_hello_is_hostless() {
        let h = hello(&sni(b"example.com"));
        for n in 0..h.len() {
            assert!(!names_its_host(&h[..n]));
        }
    }

    #[test]
    fn http_host() {
        assert!(names_its_host(
            b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
        ));
        assert!(!names_its_host(
            b"GET / HTTP/1.1\r\nHost: 192.0.2.1:80\r\n\r\n"
        ));
        assert!(!names_its_host(
            b"GET / HTTP/1.1\r\nHost: [2001:db8::1]\r\n\r\n"
        ));
        assert!(!names_its_host(b"GET / HTTP/1.1\r\nUser-Agent: x\r\n\r\n"));
        assert!(!names_its_host(
            b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n"
        ));
        assert!(!names_its_host(b"GET / HTTP/1.1\r\nHost: example.com\r\n"));
        assert!(!names_its_host(b"\x00\x01binary"));
    }
}
