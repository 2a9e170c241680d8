//! Frames to (addresses, ports, payload): link layers by hand (a few fixed offsets), IP and
//! transport by `etherparse` (every length checked, IPv6 extension headers walked).
//!
//! Anything this module does not take apart completely (tunnels, MPLS, PPPoE, IP fragments,
//! malformed or cut headers, non-IP frames) is `Decoded::Whole`: the detector's Python
//! decoders get the frame as captured and do what they do on the pure-Python path.

use etherparse::{IpNumber, IpSlice, TcpSlice, UdpSlice};

/// An IP address in 16 bytes (IPv4 mapped into the first 4, with `v6 == false`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Addr {
    pub v6: bool,
    pub b: [u8; 16],
}

impl Addr {
    pub fn last_byte(&self) -> u8 {
        if self.v6 {
            self.b[15]
        } else {
            self.b[3]
        }
    }
}

pub struct Tcp<'a> {
    pub seq: u32,
    pub sport: u16,
    pub dport: u16,
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
    pub payload: &'a [u8],
}

pub enum L4<'a> {
    Tcp(Tcp<'a>),
    Udp {
        sport: u16,
        dport: u16,
        payload: &'a [u8],
    },
    /// An IP protocol the detector does not inspect (ICMP, ESP, ...): nothing to hand up.
    Other,
}

pub struct Ip<'a> {
    pub src: Addr,
    pub dst: Addr,
    /// IPv4 total length, or IPv6 40 + payload length: the flow's byte counters.
    pub len: u32,
    pub l4: L4<'a>,
}

/// One IP fragment: the frame goes to Python whole; the core only accounts the datagram
/// in its flow once all its bytes have passed.
pub struct Fragment<'a> {
    pub src: Addr,
    pub dst: Addr,
    pub id: u32,
    pub proto: u8,
    /// Byte offset of this fragment's data in the datagram's fragmentable part.
    pub offset: u32,
    pub more: bool,
    pub data: &'a [u8],
    /// IPv4 header length, or 40 + the IPv6 unfragmentable extension headers.
    pub base_len: u32,
}

pub enum Decoded<'a> {
    Ip(Ip<'a>),
    Fragment(Fragment<'a>, Option<(u8, u8)>),
    /// A UDP datagram the snaplen cut (IP header whole): addresses, ports, the IP length
    /// from the header, and what was captured of the payload.
    CutUdp {
        src: Addr,
        dst: Addr,
        sport: u16,
        dport: u16,
        len: u32,
    },
    /// Hand the frame to Python as captured; `share` are the outer addresses' last bytes
    /// when an IP header could be read (for `--jobs` shares), else None.
    Whole(Option<(u8, u8)>),
}

const ETH_IPV4: u16 = 0x0800;
const ETH_IPV6: u16 = 0x86dd;
const TAGS: [u16; 3] = [0x8100, 0x88a8, 0x9100];
const GRE: u8 = 47;

fn be16(d: &[u8], at: usize) -> Option<u16> {
    let b = d.get(at..at + 2)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

/// Where the IP header starts for the link types the detector reads, or None.
fn ip_offset(linktype: u32, d: &[u8]) -> Option<usize> {
    let (mut et, mut off) = match linktype {
        1 => (be16(d, 12)?, 14),
        113 => (be16(d, 14)?, 16),
        276 => (be16(d, 0)?, 20),
        0 | 108 => {
            let b: [u8; 4] = d.get(0..4)?.try_into().ok()?;
            let af = if linktype == 0 {
                // host byte order of the capturing machine: either reading is a family
                let le = u32::from_le_bytes(b);
                if le < 256 {
                    le
                } else {
                    u32::from_be_bytes(b)
                }
            } else {
                u32::from_be_bytes(b)
            };
            return match af {
                2 | 24 | 28 | 30 => Some(4),
                _ => None,
            };
        }
        12 | 14 | 101 | 228 | 229 => return Some(0),
        _ => return None,
    };
    let mut tags = 0;
    while TAGS.contains(&et) {
        tags += 1;
        if tags > 2 {
            return None;
        }
        et = be16(d, off + 2)?;
        off += 4;
    }
    match et {
        ETH_IPV4 | ETH_IPV6 => Some(off),
        _ => None,
    }
}

fn addr(v6: bool, s: &[u8]) -> Addr {
    let mut b = [0u8; 16];
    b[..s.len()].copy_from_slice(s);
    Addr { v6, b }
}

fn share_bytes(ip: &[u8]) -> Option<(u8, u8)> {
    match ip.first()? >> 4 {
        4 => Some((*ip.get(15)?, *ip.get(19)?)),
        6 => Some((*ip.get(23)?, *ip.get(39)?)),
        _ => None,
    }
}

pub fn decode(linktype: u32, data: &[u8]) -> Decoded<'_> {
    let off = match ip_offset(linktype, data) {
        Some(o) => o,
        None => return Decoded::Whole(None),
    };
    let ipb = &data[off.min(data.len())..];
    let share = share_bytes(ipb);
    let ip = match IpSlice::from_slice(ipb) {
        Ok(ip) => ip,
        Err(_) => return cut_udp(ipb).unwrap_or(Decoded::Whole(share)),
    };
    if ip.is_fragmenting_payload() {
        return match fragment(ipb, &ip) {
            Some(f) => Decoded::Fragment(f, share),
            None => Decoded::Whole(share),
        };
    }
    let (src, dst, len) = match &ip {
        IpSlice::Ipv4(v4) => {
            let h = v4.header();
            (
                addr(false, &h.source()),
                addr(false, &h.destination()),
                h.total_len() as u32,
            )
        }
        IpSlice::Ipv6(v6) => {
            let h = v6.header();
            (
                addr(true, &h.source()),
                addr(true, &h.destination()),
                40 + h.payload_length() as u32,
            )
        }
    };
    let payload = ip.payload();
    let l4 = match payload.ip_number {
        IpNumber::TCP => match TcpSlice::from_slice(payload.payload) {
            Ok(t) => L4::Tcp(Tcp {
                seq: t.sequence_number(),
                sport: t.source_port(),
                dport: t.destination_port(),
                syn: t.syn(),
                ack: t.ack(),
                fin: t.fin(),
                rst: t.rst(),
                payload: t.payload(),
            }),
            Err(_) => return Decoded::Whole(share),
        },
        IpNumber::UDP => match UdpSlice::from_slice(payload.payload) {
            Ok(u) => L4::Udp {
                sport: u.source_port(),
                dport: u.destination_port(),
                payload: u.payload(),
            },
            Err(_) => return Decoded::Whole(share),
        },
        n if n.0 == GRE => return Decoded::Whole(share),
        _ => L4::Other,
    };
    Decoded::Ip(Ip { src, dst, len, l4 })
}

fn fragment<'a>(ipb: &'a [u8], ip: &IpSlice<'a>) -> Option<Fragment<'a>> {
    let payload = ip.payload();
    let start = payload.payload.as_ptr() as usize - ipb.as_ptr() as usize;
    match ip {
        IpSlice::Ipv4(v4) => {
            let h = v4.header();
            Some(Fragment {
                src: addr(false, &h.source()),
                dst: addr(false, &h.destination()),
                id: h.identification() as u32,
                proto: payload.ip_number.0,
                offset: h.fragments_offset().value() as u32 * 8,
                more: h.more_fragments(),
                data: payload.payload,
                base_len: h.ihl() as u32 * 4,
            })
        }
        IpSlice::Ipv6(v6) => {
            let h = v6.header();
            let fh = ipb.get(start.checked_sub(8)?..start)?;
            let off_flags = u16::from_be_bytes([fh[2], fh[3]]);
            Some(Fragment {
                src: addr(true, &h.source()),
                dst: addr(true, &h.destination()),
                id: u32::from_be_bytes([fh[4], fh[5], fh[6], fh[7]]),
                proto: payload.ip_number.0,
                offset: (off_flags >> 3) as u32 * 8,
                more: off_flags & 1 == 1,
                data: payload.payload,
                base_len: (start - 8) as u32,
            })
        }
    }
}

fn cut_udp(ipb: &[u8]) -> Option<Decoded<'_>> {
    let (ip, _) = etherparse::LaxIpSlice::from_slice(ipb).ok()?;
    if ip.is_fragmenting_payload() {
        return None;
    }
    let p = ip.payload();
    if !p.incomplete || p.ip_number != IpNumber::UDP || p.payload.len() < 8 {
        return None;
    }
    let (src, dst, len) = match &ip {
        etherparse::LaxIpSlice::Ipv4(v4) => {
            let h = v4.header();
            (
                addr(false, &h.source()),
                addr(false, &h.destination()),
                h.total_len() as u32,
            )
        }
        etherparse::LaxIpSlice::Ipv6(v6) => {
            let h = v6.header();
            (
                addr(true, &h.source()),
                addr(true, &h.destination()),
                40 + h.payload_length() as u32,
            )
        }
    };
    let u = p.payload;
    Some(Decoded::CutUdp {
        src,
        dst,
        sport: u16::from_be_bytes([u[0], u[1]]),
        dport: u16::from_be_bytes([u[2], u[3]]),
        len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth_ipv4_udp(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        let total = 20 + 8 + payload.len();
        f.extend_from_slice(&[
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            0,
            0x40,
            0,
            64,
            17,
            0,
            0,
        ]);
        f.extend_from_slice(&[192, 0, 2, 1, 192, 0, 2, 53]);
        let ulen = 8 + payload.len();
        f.extend_from_slice(&[0x9c, 0x40, 0, 53, (ulen >> 8) as u8, ulen as u8, 0, 0]);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn udp_over_ethernet() {
        let f = eth_ipv4_udp(b"hello");
        match decode(1, &f) {
            Decoded::Ip(ip) => {
                assert_eq!(ip.len, 33);
                assert_eq!(ip.dst.last_byte(), 53);
                match ip.l4 {
                    L4::Udp { dport, payload, .. } => {
                        assert_eq!(dport, 53);
                        assert_eq!(payload, b"hello");
                    }
                    _ => panic!("not udp"),
                }
            }
            _ => panic!("not decoded"),
        }
    }

    #[test]
    fn every_prefix_is_handled() {
        let f = eth_ipv4_udp(b"hello");
        for n in 0..f.len() {
            let _ = decode(1, &f[..n]);
            let _ = decode(113, &f[..n]);
            let _ = decode(276, &f[..n]);
            let _ = decode(0, &f[..n]);
        }
    }

    #[test]
    fn fragments_go_whole() {
        let mut f = eth_ipv4_udp(b"hello");
        f[20] = 0x20; // more fragments
        assert!(matches!(decode(1, &f), Decoded::Fragment(_, Some(_))));
    }

    #[test]
    fn vlan_tags_are_followed() {
        let f = eth_ipv4_udp(b"x");
        let mut t = f[..12].to_vec();
        t.extend_from_slice(&[0x81, 0x00, 0x00, 0x0a]);
        t.extend_from_slice(&f[12..]);
        assert!(matches!(decode(1, &t), Decoded::Ip(_)));
    }
}
