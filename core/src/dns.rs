//! The addresses in a DNS response: every A and AAAA record of the answer section.
//!
//! The core learns them from responses that hold an anchor label, so that a later flow from
//! the client to such an address reaches Python even when it carries no host name. Python
//! learns fewer (only addresses of names that match a signature), so the core's set is a
//! superset of Python's and no flow Python would attribute is shed. Every length is checked;
//! a malformed message yields the addresses read before the damage.

pub const MAX_RECORDS: usize = 256;
const MAX_LABELS: usize = 128;

fn skip_name(m: &[u8], mut p: usize) -> Option<usize> {
    for _ in 0..MAX_LABELS {
        let l = *m.get(p)? as usize;
        if l == 0 {
            return Some(p + 1);
        }
        if l & 0xc0 == 0xc0 {
            m.get(p + 1)?;
            return Some(p + 2);
        }
        if l & 0xc0 != 0 {
            return None;
        }
        p += 1 + l;
    }
    None
}

fn be16(m: &[u8], p: usize) -> Option<usize> {
    let b = m.get(p..p + 2)?;
    Some(u16::from_be_bytes([b[0], b[1]]) as usize)
}

/// Addresses (4 or 16 bytes) in the answer section of a response; empty for a query.
pub fn answer_addresses(m: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    if m.len() < 12 || m[2] & 0x80 == 0 {
        return out;
    }
    let (qd, an) = match (be16(m, 4), be16(m, 6)) {
        (Some(q), Some(a)) => (q, a),
        _ => return out,
    };
    let mut p = 12;
    for _ in 0..qd.min(MAX_RECORDS) {
        p = match skip_name(m, p) {
            Some(x) if x + 4 <= m.len() => x + 4,
            _ => return out,
        };
    }
    for _ in 0..an.min(MAX_RECORDS) {
        let q = match skip_name(m, p) {
            Some(x) => x,
            None => return out,
        };
        let (rtype, rdlen) = match (be16(m, q), be16(m, q + 8)) {
            (Some(t), Some(l)) => (t, l),
            _ => return out,
        };
        let rdata = match m.get(q + 10..q + 10 + rdlen) {
            Some(r) => r,
            None => return out,
        };
        if (rtype == 1 && rdlen == 4) || (rtype == 28 && rdlen == 16) {
            out.push(rdata.to_vec());
        }
        p = q + 10 + rdlen;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response() -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0];
        m.extend_from_slice(b"\x03upd\x09kaspersky\x03com\x00\x00\x01\x00\x01");
        // CNAME to a name, then an A record with a compressed owner
        m.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 4, 1, b'x', 0xc0, 16]);
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 198, 18, 0, 7]);
        m
    }

    #[test]
    fn a_records_are_found() {
        assert_eq!(answer_addresses(&response()), vec![vec![198, 18, 0, 7]]);
    }

    #[test]
    fn every_prefix_is_safe() {
        let m = response();
        for n in 0..m.len() {
            let got = answer_addresses(&m[..n]);
            assert!(got.is_empty());
        }
    }

    #[test]
    fn queries_learn_nothing() {
        let mut m = response();
        m[2] = 0x01;
        assert!(answer_addresses(&m).is_empty());
    }

    #[test]
    fn pointer_loops_end() {
        let mut m = vec![0, 0, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
        m.extend_from_slice(&[0x3f; 200]);
        assert!(answer_addresses(&m).is_empty());
    }
}

const MAX_NAME_HOPS: usize = 64;

/// The labels of the name at `p` (compression followed, loops cut), and where it ends.
fn read_name(m: &[u8], mut p: usize, out: &mut Vec<(usize, usize)>) -> Option<usize> {
    out.clear();
    let mut end = None;
    for _ in 0..MAX_NAME_HOPS {
        let l = *m.get(p)? as usize;
        if l == 0 {
            return Some(end.unwrap_or(p + 1));
        }
        if l & 0xc0 == 0xc0 {
            let lo = *m.get(p + 1)? as usize;
            if end.is_none() {
                end = Some(p + 2);
            }
            p = ((l & 0x3f) << 8) | lo;
            continue;
        }
        if l & 0xc0 != 0 || out.len() >= 128 {
            return None;
        }
        m.get(p + 1..p + 1 + l)?;
        out.push((p + 1, l));
        p += 1 + l;
    }
    None
}

fn ends_with_tail(m: &[u8], labels: &[(usize, usize)], tails: &[Vec<Vec<u8>>]) -> bool {
    tails.iter().any(|t| {
        t.len() <= labels.len()
            && t.iter()
                .rev()
                .zip(labels.iter().rev())
                .all(|(want, &(at, n))| m[at..at + n].eq_ignore_ascii_case(want))
    })
}

/// Could any name in the question or answer section (owners, and the names CNAME, DNAME,
/// NS, PTR, MX, SRV, SVCB and HTTPS records point at) match a signature? `tails` are the
/// last labels every signature pattern ends with. True also when the message cannot be
/// walked to the end (cut, damaged): Python decides those.
pub fn may_name_a_tail(m: &[u8], tails: &[Vec<Vec<u8>>]) -> bool {
    if m.len() < 12 {
        return true;
    }
    let qd = u16::from_be_bytes([m[4], m[5]]) as usize;
    let an = if m[2] & 0x80 != 0 {
        u16::from_be_bytes([m[6], m[7]]) as usize
    } else {
        0
    };
    let mut labels = Vec::with_capacity(8);
    let mut p = 12;
    for _ in 0..qd.min(MAX_RECORDS) {
        p = match read_name(m, p, &mut labels) {
            Some(e) => e,
            None => return true,
        };
        if ends_with_tail(m, &labels, tails) {
            return true;
        }
        p += 4;
        if p > m.len() {
            return true;
        }
    }
    if qd > MAX_RECORDS {
        return true;
    }
    for _ in 0..an.min(MAX_RECORDS) {
        let q = match read_name(m, p, &mut labels) {
            Some(e) => e,
            None => return true,
        };
        if ends_with_tail(m, &labels, tails) {
            return true;
        }
        let (rtype, rdlen) = match (be16(m, q), be16(m, q + 8)) {
            (Some(t), Some(l)) => (t, l),
            _ => return true,
        };
        let rd = q + 10;
        if rd + rdlen > m.len() {
            return true;
        }
        let skip = match rtype {
            5 | 39 | 2 | 12 => Some(0),
            15 | 64 | 65 => Some(2),
            33 => Some(6),
            _ => None,
        };
        if let Some(s) = skip {
            if rdlen > s {
                if read_name(m, rd + s, &mut labels).is_none() {
                    return true;
                }
                if ends_with_tail(m, &labels, tails) {
                    return true;
                }
            }
        }
        p = rd + rdlen;
    }
    an > MAX_RECORDS
}

#[cfg(test)]
mod tail_tests {
    use super::*;

    fn tails() -> Vec<Vec<Vec<u8>>> {
        vec![vec![b"kaspersky".to_vec(), b"com".to_vec()]]
    }

    fn query(name: &[u8]) -> Vec<u8> {
        let mut m = vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(name);
        m.extend_from_slice(&[0, 1, 0, 1]);
        m
    }

    #[test]
    fn tails_are_label_boundaries() {
        assert!(may_name_a_tail(
            &query(b"\x03upd\x09KASPERSKY\x03com\x00"),
            &tails()
        ));
        assert!(!may_name_a_tail(
            &query(b"\x09kaspersky\x03com\x04evil\x00"),
            &tails()
        ));
        assert!(!may_name_a_tail(
            &query(b"\x0cnotkaspersky\x03com\x00"),
            &tails()
        ));
    }

    #[test]
    fn a_cname_into_the_vendor_is_seen() {
        let mut m = vec![0, 1, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
        m.extend_from_slice(b"\x03www\x07example\x03org\x00\x00\x01\x00\x01");
        let target = b"\x03upd\x09kaspersky\x03com\x00";
        m.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, target.len() as u8]);
        m.extend_from_slice(target);
        assert!(may_name_a_tail(&m, &tails()));
        let n = m.len();
        m[n - 4] = b'x'; // "com" -> "xom"
        assert!(!may_name_a_tail(&m, &tails()));
    }

    #[test]
    fn cut_or_looping_messages_go_to_python() {
        let q = query(b"\x03upd\x09example\x03com\x00");
        for n in 12..q.len() - 4 {
            assert!(may_name_a_tail(&q[..n], &tails()));
        }
        let mut m = vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12];
        m.extend_from_slice(&[0, 1, 0, 1]);
        assert!(may_name_a_tail(&m, &tails()));
    }
}
