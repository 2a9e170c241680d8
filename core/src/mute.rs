//! Alert-storm muting: DNS names that Python's storm control already folds stay here.
//!
//! When one client floods one signature with distinct names (a random-subdomain flood),
//! Python's storm control (`detector/storm.py`) folds every name past its threshold into one
//! aggregate alert. Each folded name still costs a trip through Python. Once a (client,
//! signature) window folds, Python asks the core to *mute* it: until the window ends, a
//! plain DNS message (one question, no answer records) from or to that client whose name
//! lies under one of the signature's suffixes, where no other signature can claim it
//! (Python checks that), is counted here instead of handed up: hits, distinct names (by the
//! same 64-bit key Python uses, `name_key`), first and last seen, and a sample of names.
//! Python takes the counts when it closes the window and folds them into its aggregate.
//!
//! What is never muted: names Python has already alerted or folded in the window (their
//! keys come with the request, so their repeats still reach the de-duplication), messages
//! with answer records (Python learns addresses from them), names with bytes other than
//! ASCII letters, digits, `-` and `_` (their text form is Python's to write), compressed
//! or cut questions, and everything after the window's end.

use ahash::{AHashMap, AHashSet};

use crate::decode::Addr;

/// Distinct names counted over all mutes (8 bytes each); past it every hit counts as new.
pub const MAX_NAMES_TOTAL: usize = 500_000;
/// Mutes at once (Python's storm control holds at most 10,000 windows).
pub const MAX_MUTES: usize = 16_384;

/// FNV-1a, 64 bits, over the name as lower-case ASCII text: `storm.name_key` in Python.
pub fn name_key(name: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in name {
        h ^= b.to_ascii_lowercase() as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

pub struct Mute {
    pub key: u64,
    pub until: f64,
    /// Lower-case dotted suffixes ("upd.kaspersky.com").
    suffixes: Vec<Vec<u8>>,
    except: AHashSet<u64>,
    pub hits: u64,
    names: AHashSet<u64>,
    pub overflow: u64,
    pub first: f64,
    pub last: f64,
    pub sample: Vec<String>,
    sample_max: usize,
    /// Count a repeated name as a hit (Python without de-duplication admits every match;
    /// with it, a name's repeats join its one key).
    repeats: bool,
}

/// What a mute counted, handed to Python when it closes the window.
pub struct Counted {
    pub hits: u64,
    pub distinct: u64,
    pub exact: bool,
    pub first: f64,
    pub last: f64,
    pub sample: Vec<String>,
}

#[derive(Default)]
pub struct Mutes {
    by_client: AHashMap<Addr, Vec<Mute>>,
    count: usize,
    names_total: usize,
}

impl Mutes {
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Start muting (client, key) until `until`; false if the table is full or the request
    /// names no suffix. A second request for the same pair replaces its bounds, keeping counts.
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        client: Addr,
        key: u64,
        until: f64,
        suffixes: Vec<Vec<u8>>,
        except: Vec<u64>,
        sample_max: usize,
        repeats: bool,
    ) -> bool {
        if suffixes.is_empty() {
            return false;
        }
        let suffixes: Vec<Vec<u8>> = suffixes
            .into_iter()
            .map(|s| s.to_ascii_lowercase())
            .collect();
        let list = self.by_client.entry(client).or_default();
        if let Some(m) = list.iter_mut().find(|m| m.key == key) {
            m.until = until;
            m.suffixes = suffixes;
            m.except.extend(except);
            return true;
        }
        if self.count >= MAX_MUTES {
            if list.is_empty() {
                self.by_client.remove(&client);
            }
            return false;
        }
        list.push(Mute {
            key,
            until,
            suffixes,
            except: except.into_iter().collect(),
            hits: 0,
            names: AHashSet::new(),
            overflow: 0,
            first: f64::INFINITY,
            last: f64::NEG_INFINITY,
            sample: Vec::new(),
            sample_max,
            repeats,
        });
        self.count += 1;
        true
    }

    /// Stop muting (client, key); what it counted, if it counted anything.
    pub fn take(&mut self, client: Addr, key: u64) -> Option<Counted> {
        let list = self.by_client.get_mut(&client)?;
        let i = list.iter().position(|m| m.key == key)?;
        let m = list.swap_remove(i);
        if list.is_empty() {
            self.by_client.remove(&client);
        }
        self.count -= 1;
        self.names_total -= m.names.len();
        (m.hits > 0).then(|| Counted {
            hits: m.hits,
            distinct: m.names.len() as u64 + m.overflow,
            exact: m.overflow == 0,
            first: m.first,
            last: m.last,
            sample: m.sample,
        })
    }

    /// A DNS message over UDP (`payload`) between `src` and `dst` at `ts`: true if a mute
    /// counted it (it is not to be handed up).
    pub fn counts(&mut self, ts: f64, src: Addr, dst: Addr, payload: &[u8]) -> bool {
        let (response, name) = match plain_question(payload) {
            Some(x) => x,
            None => return false,
        };
        let client = if response { dst } else { src };
        let list = match self.by_client.get_mut(&client) {
            Some(l) => l,
            None => return false,
        };
        let text = &name.buf[..name.len];
        let key = name_key(text);
        for m in list.iter_mut() {
            if ts >= m.until || !m.suffixes.iter().any(|s| under(text, s)) {
                continue;
            }
            if m.except.contains(&key) {
                return false; // alerted or folded by Python already: its repeats go up
            }
            if m.names.contains(&key) {
                // A repeat is a hit of its own only without de-duplication, and only as a
                // query (an answer to a query seen is evidence only with that query).
                if m.repeats && !response {
                    m.hit(ts);
                }
            } else if self.names_total < MAX_NAMES_TOTAL {
                m.hit(ts);
                m.names.insert(key);
                self.names_total += 1;
                if m.sample.len() < m.sample_max {
                    m.sample.push(String::from_utf8_lossy(text).into_owned());
                }
            } else {
                m.hit(ts);
                m.overflow += 1; // past the bound every hit counts as a new name
            }
            return true;
        }
        false
    }
}

impl Mute {
    fn hit(&mut self, ts: f64) {
        self.hits += 1;
        self.first = self.first.min(ts);
        self.last = self.last.max(ts);
    }
}

/// `name` equals `suffix` or ends with `.suffix` (both lower case).
fn under(name: &[u8], suffix: &[u8]) -> bool {
    name.len() >= suffix.len()
        && name.ends_with(suffix)
        && (name.len() == suffix.len() || name[name.len() - suffix.len() - 1] == b'.')
}

pub struct Name {
    buf: [u8; 256],
    len: usize,
}

/// A standard query or a response without answer records, with exactly one question whose
/// name is written out whole (no compression) in letters, digits, `-` and `_`: whether it
/// is a response, and the name in lower case, dotted.
fn plain_question(p: &[u8]) -> Option<(bool, Name)> {
    if p.len() < 12 {
        return None;
    }
    let response = p[2] & 0x80 != 0;
    let opcode = (p[2] >> 3) & 0x0F;
    let qd = u16::from_be_bytes([p[4], p[5]]);
    let an = u16::from_be_bytes([p[6], p[7]]);
    if opcode != 0 || qd != 1 || an != 0 {
        return None;
    }
    let mut name = Name {
        buf: [0; 256],
        len: 0,
    };
    let mut i = 12;
    loop {
        let n = *p.get(i)? as usize;
        i += 1;
        if n == 0 {
            break;
        }
        if n > 63 || i + n > p.len() || name.len + n + 1 > 254 {
            return None; // a pointer, a bad length, a cut name, a name over 253 bytes
        }
        if name.len > 0 {
            name.buf[name.len] = b'.';
            name.len += 1;
        }
        for &b in &p[i..i + n] {
            if !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return None;
            }
            name.buf[name.len] = b.to_ascii_lowercase();
            name.len += 1;
        }
        i += n;
    }
    if name.len == 0 || i + 4 > p.len() {
        return None; // the root, or the question's type and class cut off
    }
    Some((response, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(id: u16, flags: u16, name: &str, an: u16) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&id.to_be_bytes());
        v.extend_from_slice(&flags.to_be_bytes());
        v.extend_from_slice(&[0, 1]);
        v.extend_from_slice(&an.to_be_bytes());
        v.extend_from_slice(&[0, 0, 0, 0]);
        for l in name.split('.') {
            v.push(l.len() as u8);
            v.extend_from_slice(l.as_bytes());
        }
        v.extend_from_slice(&[0, 0, 1, 0, 1]);
        v
    }

    fn a(x: u8) -> Addr {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&[192, 0, 2, x]);
        Addr { v6: false, b }
    }

    #[test]
    fn key_matches_python_fnv1a() {
        // storm.name_key("upd.kaspersky.com") in Python gives the same value.
        assert_eq!(name_key(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(
            name_key(b"UPD.kaspersky.com"),
            name_key(b"upd.kaspersky.com")
        );
    }

    #[test]
    fn counts_only_plain_questions_under_the_suffix_for_that_client() {
        let mut m = Mutes::default();
        let except = vec![name_key(b"seen.upd.kaspersky.com")];
        assert!(m.add(
            a(1),
            7,
            100.0,
            vec![b"upd.kaspersky.com".to_vec()],
            except,
            2,
            false
        ));
        let (c, r) = (a(1), a(53));
        assert!(m.counts(1.0, c, r, &q(1, 0x0100, "x1.UPD.kaspersky.com", 0)));
        assert!(m.counts(1.5, r, c, &q(1, 0x8183, "x1.upd.kaspersky.com", 0))); // NXDOMAIN back
        assert!(m.counts(2.0, c, r, &q(2, 0x0100, "x2.upd.kaspersky.com", 0)));
        assert!(m.counts(2.5, c, r, &q(3, 0x0100, "x3.upd.kaspersky.com", 0)));
        assert!(
            !m.counts(3.0, c, r, &q(4, 0x0100, "seen.upd.kaspersky.com", 0)),
            "alerted already"
        );
        assert!(
            !m.counts(3.0, r, c, &q(5, 0x8180, "x4.upd.kaspersky.com", 1)),
            "answers teach addresses"
        );
        assert!(
            !m.counts(3.0, a(2), r, &q(6, 0x0100, "x5.upd.kaspersky.com", 0)),
            "another client"
        );
        assert!(
            !m.counts(3.0, c, r, &q(7, 0x0100, "xupd.kaspersky.com", 0)),
            "not at a label boundary"
        );
        assert!(
            !m.counts(3.0, c, r, &q(8, 0x0100, "a b.upd.kaspersky.com", 0)),
            "a byte Python writes"
        );
        assert!(
            !m.counts(100.0, c, r, &q(9, 0x0100, "x6.upd.kaspersky.com", 0)),
            "the window is over"
        );
        let got = m.take(a(1), 7).expect("counted");
        assert_eq!(
            (got.hits, got.distinct, got.exact),
            (3, 3, true),
            "the NXDOMAIN joins its name's hit"
        );
        assert_eq!(
            (got.first, got.last),
            (1.0, 2.5),
            "the NXDOMAIN at 1.5 is no hit of its own"
        );
        assert_eq!(
            got.sample,
            vec![
                "x1.upd.kaspersky.com".to_string(),
                "x2.upd.kaspersky.com".to_string()
            ]
        );
        assert!(m.is_empty() && m.take(a(1), 7).is_none());
    }

    #[test]
    fn hostile_questions_are_never_counted() {
        let mut m = Mutes::default();
        m.add(
            a(1),
            7,
            100.0,
            vec![b"kaspersky.com".to_vec()],
            vec![],
            2,
            true,
        );
        let good = q(1, 0x0100, "x.kaspersky.com", 0);
        for cut in 0..good.len() - 1 {
            assert!(!m.counts(1.0, a(1), a(53), &good[..cut]), "cut at {cut}");
        }
        let mut ptr = good.clone();
        ptr[12] = 0xC0;
        assert!(!m.counts(1.0, a(1), a(53), &ptr));
        assert!(m.counts(1.0, a(1), a(53), &good));
    }
}
