//! The prefilter: which frames can hold evidence, in capture order, with flow counters.
//!
//! Every frame is decoded once and counted in its flow. What reaches Python:
//! - frames this core does not take apart (tunnels, fragments, odd link layers), whole;
//! - DNS over UDP whose bytes hold an anchor label (case-insensitive), and all DNS over TCP;
//! - UDP datagrams that look like a QUIC long-header packet, and UDP to signature ports;
//! - the head of every TCP flow that is *interesting*: an anchor label in the payload of
//!   either direction (also across segment boundaries), a signature port, or an address its
//!   client learned from a DNS response holding an anchor. The head is the first
//!   `flow_head` packets with payload or SYN/FIN/RST in each direction, as on the libpcap
//!   path before; pure ACKs are counted, never handed up.
//!
//! A TCP flow's first packets come before it is known whether the flow is interesting (the
//! anchor may sit in the second segment of a ClientHello). They wait in an ordered queue:
//! the queue is released front to back, so Python sees a subsequence of the capture in
//! capture order. A flow is decided `Deliver` when it becomes interesting and `Shed` when
//! its head is complete (or it ends) without. A flow still undecided when the queue grows
//! past its bounds (or when the flow table evicts it) is handed up if Python may need what
//! waits (a message begun and not finished, a stream out of order); if every direction has
//! either sent nothing or already given Python all it reads (`Flow::needless`: a SYN flood,
//! one-segment flows of another protocol), its waiting packets are shed instead and the
//! flow goes on undecided, so a flood of flows that never finish stays in the core.
//! A SYN without ACK starts a new flow on the same ports.

use std::collections::VecDeque;

use ahash::{AHashMap, AHashSet};
use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

use crate::decode::{decode, Addr, Decoded, Fragment, Tcp, L4};
use crate::dns;
use crate::mute::Mutes;

pub const TUNNEL_PORTS: [u16; 2] = [4789, 6081];
const DNS_PORT: u16 = 53;
const DHCP_PORTS: [u16; 2] = [67, 68];
const CARRY: usize = 64;
/// Bounds of the ordered queue; past any of them the oldest undecided flow is handed up.
pub const MAX_QUEUE_SLOTS: usize = 50_000;
pub const MAX_QUEUE_BYTES: usize = 16 << 20;
pub const MAX_DELAY: u64 = 20_000; // packets behind the oldest undecided slot
pub const MAX_LEARNED: usize = 262_144;
pub const MAX_FRAGMENTED: usize = 8192; // datagrams being accounted at once (oldest dropped)
/// Capture-time seconds an undecided flow may hold the queue (live: alert latency).
pub const MAX_AGE: f64 = 2.0;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Decision {
    Pending,
    Deliver,
    Shed,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Counters {
    pub start: f64,
    pub pkts_fwd: u64,
    pub bytes_fwd: u64,
    pub pkts_rev: u64,
    pub bytes_rev: u64,
    /// This packet travels from the flow's initiator (first packet seen, or SYN sender).
    pub to_server: bool,
}

#[derive(Debug)]
pub struct Record {
    pub ts: f64,
    pub linktype: u32,
    pub data: Vec<u8>,
    pub counters: Option<Counters>,
    /// A DNS packet of another `--jobs` share: for learning addresses only.
    pub learn_only: bool,
}

#[derive(Default, Debug, Clone)]
pub struct Stats {
    pub packets: u64,
    pub delivered: u64,
    pub whole: u64,
    pub shed: u64,
    pub pure_acks: u64,
    pub dns_prefiltered: u64,
    pub other_share: u64,
    pub forced: u64,
    /// Undecided flows whose waiting packets were shed at a queue bound or an eviction:
    /// nothing in them Python could use (see `Flow::needless`).
    pub forced_shed: u64,
    /// IP datagrams whose fragments were shed: never complete (evicted, or past a bound).
    pub frags_shed: u64,
    /// DNS messages counted by an alert-storm mute instead of handed up (`mute.rs`).
    pub dns_muted: u64,
    /// Live batches: frames whose offset and length lay outside the batch (`push_batch`).
    pub bad_meta: u64,
    pub flows: u64,
    pub flows_evicted: u64,
    pub learned: u64,
    pub learned_evicted: u64,
    pub queue_peak: u64,
    pub flows_anchor: u64,
    pub flows_port: u64,
    pub flows_learned: u64,
}

pub struct Config {
    /// DNS wire anchors (length byte + label); None: no prefilter, everything is a candidate.
    pub anchors: Option<Vec<Vec<u8>>>,
    /// The last labels every signature pattern ends with (lower case); DNS messages with
    /// no name ending so stay in the core. None: no such filter.
    pub tails: Option<Vec<Vec<Vec<u8>>>>,
    pub tcp_ports: Vec<u16>,
    pub udp_ports: Vec<u16>,
    pub flow_head: u32,
    pub max_flows: usize,
    pub part: Option<(u32, u32)>,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct FlowKey {
    proto: u8,
    lo: (Addr, u16),
    hi: (Addr, u16),
}

struct Flow {
    inst: u64,
    /// The instance it was created as: its key in `order` (a flow that goes on as a new
    /// instance after a bound shed its waiting packets keeps its place).
    born: u64,
    initiator: (Addr, u16),
    start: f64,
    pkts: [u64; 2],
    bytes: [u64; 2],
    state: Decision,
    head: [u32; 2],
    fin: [bool; 2],
    /// None until the first payload; then whether it named its host (SNI, HTTP Host).
    named: Option<bool>,
    /// What each direction's stream is, for how much of it Python needs (see `Dir`).
    dirs: [Dir; 2],
    carry: [([u8; CARRY], u8); 2],
}

impl Flow {
    /// Nothing waiting for this flow is of use to Python: each direction has sent no
    /// payload yet, or has (in order) given Python every byte it reads of it with no anchor
    /// in them. A SYN-only flow qualifies (Python follows a stream from its first data
    /// segment); a message begun and not finished, or a gap, does not.
    fn needless(&self) -> bool {
        self.dirs
            .iter()
            .all(|d| d.kind == DirKind::Unknown || (d.synced && d.done))
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct FragKey {
    src: Addr,
    dst: Addr,
    id: u32,
    proto: u8,
}

#[derive(Default)]
struct FragAcc {
    /// The pending instance its fragments wait under in the queue.
    inst: u64,
    ports: Option<(u16, u16)>,
    total: Option<u32>,
    got: u32,
    base_len: u32,
}

struct Pend {
    decision: Decision,
    refs: u32,
    key: FlowKey,
    /// The fragments of one IP datagram (not a flow): handed up once it is whole.
    frag: bool,
}

struct Slot {
    rec: Record,
    ts: f64,
    inst: Option<u64>,
    seq: u64,
}

pub struct Classifier {
    cfg: Config,
    tcp_ports: AHashSet<u16>,
    udp_ports: AHashSet<u16>,
    dns_ac: Option<AhoCorasick>,
    text_ac: Option<AhoCorasick>,
    carry_len: usize,
    /// Boxed: a table slot stays small (key and pointer), so the slack a hash table keeps
    /// (up to half its slots empty after evictions) costs little.
    flows: AHashMap<FlowKey, Box<Flow>>,
    order: VecDeque<(FlowKey, u64)>,
    next_inst: u64,
    queue: VecDeque<Slot>,
    queue_bytes: usize,
    pending: AHashMap<u64, Pend>,
    seq: u64,
    /// The latest capture time seen (or given by `tick`).
    now: f64,
    learned: AHashSet<(Addr, Addr)>,
    learned_order: VecDeque<(Addr, Addr)>,
    frags: AHashMap<FragKey, FragAcc>,
    frag_order: VecDeque<FragKey>,
    pub stats: Stats,
    /// Alert-storm mutes Python asked for (`mute.rs`).
    pub mutes: Mutes,
}

fn automaton(patterns: &[Vec<u8>]) -> Option<AhoCorasick> {
    AhoCorasickBuilder::new()
        .ascii_case_insensitive(true)
        .match_kind(MatchKind::LeftmostFirst)
        .build(patterns)
        .ok()
}

fn looks_like_quic_long_header(p: &[u8]) -> bool {
    // Python's sniff wants a long header, a known version and the Initial type; any long
    // header is a superset of that.
    p.len() >= 7 && p[0] & 0x80 != 0
}

impl Classifier {
    pub fn new(cfg: Config) -> Classifier {
        let table = cfg.max_flows.min(1 << 20) * 2;
        let (dns_ac, text_ac, carry_len) = match &cfg.anchors {
            Some(a) if !a.is_empty() => {
                let text: Vec<Vec<u8>> = a
                    .iter()
                    .map(|x| x.get(1..).unwrap_or(&[]).to_vec())
                    .collect();
                let longest = text
                    .iter()
                    .map(|t| t.len())
                    .max()
                    .unwrap_or(1)
                    .clamp(1, CARRY);
                (automaton(a), automaton(&text), longest - 1)
            }
            _ => (None, None, 0),
        };
        Classifier {
            tcp_ports: cfg.tcp_ports.iter().copied().collect(),
            udp_ports: cfg.udp_ports.iter().copied().collect(),
            cfg,
            dns_ac,
            text_ac,
            carry_len,
            // Sized once, with room for the tombstones evictions leave (so it is rehashed
            // in place rather than doubled).
            flows: AHashMap::with_capacity(table),
            order: VecDeque::new(),
            next_inst: 1,
            queue: VecDeque::new(),
            queue_bytes: 0,
            pending: AHashMap::new(),
            seq: 0,
            now: f64::MIN,
            learned: AHashSet::new(),
            learned_order: VecDeque::new(),
            frags: AHashMap::new(),
            frag_order: VecDeque::new(),
            stats: Stats::default(),
            mutes: Mutes::default(),
        }
    }

    fn dns_anchored(&self, p: &[u8]) -> bool {
        let anchored = match &self.dns_ac {
            Some(ac) => ac.is_match(p),
            None => true,
        };
        anchored
            && match &self.cfg.tails {
                Some(t) => dns::may_name_a_tail(p, t),
                None => true,
            }
    }

    fn mine(&self, share: Option<(u8, u8)>) -> bool {
        match (self.cfg.part, share) {
            (None, _) => true,
            (Some((k, _)), None) => k == 0,
            (Some((k, n)), Some((a, b))) => (a as u32 + b as u32) % n == k,
        }
    }

    fn enqueue(&mut self, rec: Record, inst: Option<u64>) {
        self.queue_bytes += rec.data.len();
        if let Some(i) = inst {
            if let Some(p) = self.pending.get_mut(&i) {
                p.refs += 1;
            }
        }
        let ts = rec.ts;
        if ts > self.now {
            self.now = ts;
        }
        self.queue.push_back(Slot {
            rec,
            ts,
            inst,
            seq: self.seq,
        });
        if self.queue.len() as u64 > self.stats.queue_peak {
            self.stats.queue_peak = self.queue.len() as u64;
        }
    }

    fn record(ts: f64, linktype: u32, data: &[u8], counters: Option<Counters>) -> Record {
        Record {
            ts,
            linktype,
            data: data.to_vec(),
            counters,
            learn_only: false,
        }
    }

    fn learn(&mut self, client: Addr, payload: &[u8]) {
        for a in dns::answer_addresses(payload) {
            let addr = Addr {
                v6: a.len() == 16,
                b: {
                    let mut b = [0u8; 16];
                    b[..a.len()].copy_from_slice(&a);
                    b
                },
            };
            if self.learned.insert((client, addr)) {
                self.stats.learned += 1;
                self.learned_order.push_back((client, addr));
                if self.learned_order.len() > MAX_LEARNED {
                    if let Some(old) = self.learned_order.pop_front() {
                        self.learned.remove(&old);
                        self.stats.learned_evicted += 1;
                    }
                }
            }
        }
    }

    /// One captured frame.
    pub fn push(&mut self, ts: f64, linktype: u32, data: &[u8]) {
        self.stats.packets += 1;
        self.seq += 1;
        let ip = match decode(linktype, data) {
            Decoded::Whole(share) => {
                if self.mine(share) {
                    self.stats.whole += 1;
                    self.enqueue(Self::record(ts, linktype, data, None), None);
                } else {
                    self.stats.other_share += 1;
                }
                return;
            }
            Decoded::Fragment(frag, share) => {
                if self.mine(share) {
                    self.stats.whole += 1;
                    let (c, inst) = self.fragment(ts, &frag);
                    self.enqueue(Self::record(ts, linktype, data, c), inst);
                } else {
                    self.stats.other_share += 1;
                }
                return;
            }
            Decoded::CutUdp {
                src,
                dst,
                sport,
                dport,
                len,
            } => {
                if self.mine(Some((src.last_byte(), dst.last_byte()))) {
                    self.stats.whole += 1;
                    // Python reads what is left of a cut DNS datagram (and counts it); any
                    // other cut datagram is undecodable to it, and not counted.
                    let dns = sport == DNS_PORT || dport == DNS_PORT;
                    let c = (dns && !TUNNEL_PORTS.contains(&dport))
                        .then(|| self.count(17, src, sport, dst, dport, len, ts, false));
                    self.enqueue(Self::record(ts, linktype, data, c), None);
                } else {
                    self.stats.other_share += 1;
                }
                return;
            }
            Decoded::Ip(ip) => ip,
        };
        if !self.mine(Some((ip.src.last_byte(), ip.dst.last_byte()))) {
            self.stats.other_share += 1;
            // Another share's DNS: its answers name addresses this share's clients may use.
            if self.learn_dns(&ip) {
                let mut r = Self::record(ts, linktype, data, None);
                r.learn_only = true;
                self.enqueue(r, None);
            }
            return;
        }
        match ip.l4 {
            L4::Other => self.stats.shed += 1,
            L4::Udp {
                sport,
                dport,
                payload,
            } => {
                if TUNNEL_PORTS.contains(&dport) || TUNNEL_PORTS.contains(&sport) {
                    self.stats.whole += 1;
                    self.enqueue(Self::record(ts, linktype, data, None), None);
                    return;
                }
                let c = self.count(17, ip.src, sport, ip.dst, dport, ip.len, ts, false);
                let deliver = if sport == DNS_PORT || dport == DNS_PORT {
                    if self.dns_anchored(payload) {
                        if payload.len() > 2 && payload[2] & 0x80 != 0 {
                            self.learn(ip.dst, payload);
                        }
                        if !self.mutes.is_empty() && self.mutes.counts(ts, ip.src, ip.dst, payload)
                        {
                            self.stats.dns_muted += 1;
                            false
                        } else {
                            true
                        }
                    } else {
                        self.stats.dns_prefiltered += 1;
                        false
                    }
                } else {
                    looks_like_quic_long_header(payload)
                        || self.udp_ports.contains(&dport)
                        || self.udp_ports.contains(&sport)
                        || (DHCP_PORTS.contains(&sport) && DHCP_PORTS.contains(&dport))
                    // client names (inventory)
                };
                if deliver {
                    self.enqueue(Self::record(ts, linktype, data, Some(c)), None);
                } else {
                    self.stats.shed += 1;
                }
            }
            L4::Tcp(t) => self.tcp(ts, linktype, data, ip.src, ip.dst, ip.len, t),
        }
    }

    /// DNS that holds an anchor: learn the addresses its answers give (for the client, the
    /// destination). True if it was such DNS.
    fn learn_dns(&mut self, ip: &crate::decode::Ip<'_>) -> bool {
        let (p, tcp) = match &ip.l4 {
            L4::Udp {
                sport,
                dport,
                payload,
            } if *sport == DNS_PORT || *dport == DNS_PORT => (*payload, false),
            L4::Tcp(t) if (t.sport == DNS_PORT || t.dport == DNS_PORT) && !t.payload.is_empty() => {
                (t.payload, true)
            }
            _ => return false,
        };
        if !self.dns_anchored(p) {
            return false;
        }
        if !tcp {
            self.learn(ip.dst, p);
        } else if p.len() > 2 {
            self.learn(ip.dst, &p[2..]);
        }
        true
    }

    /// Live: one libpcap batch (see `PyClassifier::push_raw`): `meta` holds per frame four
    /// native-endian u32 (seconds, microseconds, offset into `pkts`, captured length). A
    /// frame whose bytes lie outside `pkts` is counted in `bad_meta` and skipped.
    pub fn push_batch(&mut self, linktype: u32, pkts: &[u8], meta: &[u8]) {
        for m in meta.chunks_exact(16) {
            let w = |i: usize| u32::from_ne_bytes([m[i], m[i + 1], m[i + 2], m[i + 3]]);
            let (sec, usec, off, len) = (w(0), w(4), w(8) as usize, w(12) as usize);
            match off.checked_add(len).and_then(|end| pkts.get(off..end)) {
                Some(data) => self.push(f64::from(sec) + f64::from(usec) * 1e-6, linktype, data),
                None => self.stats.bad_meta += 1,
            }
        }
    }

    /// A TCP or UDP fragment waits in the queue under its datagram's instance: when the
    /// datagram's bytes are all here, count it in its flow (as Python does once it has
    /// reassembled it), hand the counters up with this fragment and deliver all its
    /// fragments; a datagram that never completes (evicted, or waiting past a queue bound)
    /// is shed, as Python would drop it. Other protocols' fragments go up at once.
    fn fragment(&mut self, ts: f64, f: &Fragment<'_>) -> (Option<Counters>, Option<u64>) {
        if f.proto != 6 && f.proto != 17 {
            return (None, None);
        }
        let key = FragKey {
            src: f.src,
            dst: f.dst,
            id: f.id,
            proto: f.proto,
        };
        if !self.frags.contains_key(&key) {
            if self.frags.len() >= MAX_FRAGMENTED {
                if let Some(old) = self.frag_order.pop_front() {
                    if let Some(acc) = self.frags.remove(&old) {
                        self.frag_done(acc.inst, Decision::Shed);
                    }
                }
            }
            let inst = self.next_inst;
            self.next_inst += 1;
            let fk = flow_key(f.proto, f.src, 0, f.dst, 0);
            self.pending.insert(
                inst,
                Pend {
                    decision: Decision::Pending,
                    refs: 0,
                    key: fk,
                    frag: true,
                },
            );
            self.frags.insert(
                key,
                FragAcc {
                    inst,
                    ..FragAcc::default()
                },
            );
            self.frag_order.push_back(key);
        }
        let acc = self.frags.get_mut(&key).expect("inserted");
        let inst = acc.inst;
        if f.offset == 0 && f.data.len() >= 4 {
            acc.ports = Some((
                u16::from_be_bytes([f.data[0], f.data[1]]),
                u16::from_be_bytes([f.data[2], f.data[3]]),
            ));
            acc.base_len = f.base_len;
        }
        if !f.more {
            acc.total = Some(f.offset + f.data.len() as u32);
        }
        acc.got = acc.got.saturating_add(f.data.len() as u32);
        let (ports, total) = match (acc.ports, acc.total) {
            (Some(p), Some(t)) if acc.got >= t => (p, t),
            _ => return (None, Some(inst)),
        };
        let len = acc.base_len + total;
        self.frags.remove(&key);
        self.frag_done(inst, Decision::Deliver);
        if f.proto == 17 && TUNNEL_PORTS.contains(&ports.1) {
            return (None, Some(inst));
        }
        (
            Some(self.count(f.proto, f.src, ports.0, f.dst, ports.1, len, ts, false)),
            Some(inst),
        )
    }

    fn frag_done(&mut self, inst: u64, d: Decision) {
        if let Some(p) = self.pending.get_mut(&inst) {
            if p.decision == Decision::Pending {
                p.decision = d;
                if d == Decision::Shed {
                    self.stats.frags_shed += 1;
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn count(
        &mut self,
        proto: u8,
        src: Addr,
        sport: u16,
        dst: Addr,
        dport: u16,
        len: u32,
        ts: f64,
        restart: bool,
    ) -> Counters {
        self.count_key(
            flow_key(proto, src, sport, dst, dport),
            src,
            sport,
            len,
            ts,
            restart,
        )
    }

    fn count_key(
        &mut self,
        key: FlowKey,
        src: Addr,
        sport: u16,
        len: u32,
        ts: f64,
        restart: bool,
    ) -> Counters {
        let exists = self.flows.contains_key(&key);
        if exists && restart {
            self.end_instance_as(key, Decision::Shed); // restarted undecided: nothing of interest
        }
        if !exists || restart {
            self.new_flow(key, (src, sport), ts);
        }
        let f = self.flows.get_mut(&key).expect("flow just made");
        let d = if f.initiator == (src, sport) { 0 } else { 1 };
        f.pkts[d] += 1;
        f.bytes[d] += len as u64;
        Counters {
            start: f.start,
            pkts_fwd: f.pkts[d],
            bytes_fwd: f.bytes[d],
            pkts_rev: f.pkts[1 - d],
            bytes_rev: f.bytes[1 - d],
            to_server: d == 0,
        }
    }

    fn new_flow(&mut self, key: FlowKey, initiator: (Addr, u16), ts: f64) {
        while self.flows.len() >= self.cfg.max_flows.max(1) {
            match self.order.pop_front() {
                Some((k, inst)) => {
                    if let Some(f) = self.flows.get(&k).filter(|f| f.born == inst) {
                        let d = if f.state == Decision::Pending && f.needless() {
                            if self.pending.contains_key(&f.inst) {
                                self.stats.forced_shed += 1;
                            }
                            Decision::Shed
                        } else {
                            Decision::Deliver
                        };
                        self.end_instance_as(k, d);
                        self.flows.remove(&k);
                        self.stats.flows_evicted += 1;
                    }
                }
                None => break,
            }
        }
        let inst = self.next_inst;
        self.next_inst += 1;
        self.stats.flows += 1;
        self.flows.insert(
            key,
            Box::new(Flow {
                inst,
                born: inst,
                initiator,
                start: ts,
                pkts: [0; 2],
                bytes: [0; 2],
                state: Decision::Pending,
                head: [0; 2],
                fin: [false; 2],
                named: None,
                dirs: [Dir::default(), Dir::default()],
                carry: [([0; CARRY], 0); 2],
            }),
        );
        self.order.push_back((key, inst));
        if self.order.len() > 2 * self.cfg.max_flows.max(16) {
            // Drop entries of flows that were restarted since (stale), keeping the order.
            let flows = &self.flows;
            self.order
                .retain(|(k, i)| flows.get(k).map(|f| f.born) == Some(*i));
        }
    }

    /// A flow instance ends (restart, eviction): if still undecided, decide it `d`.
    fn end_instance_as(&mut self, key: FlowKey, d: Decision) {
        if let Some(f) = self.flows.get(&key) {
            if f.state == Decision::Pending {
                let inst = f.inst;
                self.decide(inst, key, d);
            }
        }
    }

    fn decide(&mut self, inst: u64, key: FlowKey, d: Decision) {
        if let Some(p) = self.pending.get_mut(&inst) {
            p.decision = d;
        }
        if let Some(f) = self.flows.get_mut(&key) {
            if f.inst == inst {
                f.state = d;
            }
        }
    }

    fn anchor_in(&mut self, key: FlowKey, d: usize, payload: &[u8]) -> bool {
        let ac = match &self.text_ac {
            Some(ac) => ac,
            None => return true, // no prefilter: every flow is a candidate
        };
        if ac.is_match(payload) {
            return true;
        }
        let keep = self.carry_len;
        let f = match self.flows.get_mut(&key) {
            Some(f) => f,
            None => return false,
        };
        let (buf, n) = &mut f.carry[d];
        let mut hit = false;
        if *n > 0 && keep > 0 {
            let mut joint = [0u8; 2 * CARRY];
            let head = payload.len().min(keep);
            joint[..*n as usize].copy_from_slice(&buf[..*n as usize]);
            joint[*n as usize..*n as usize + head].copy_from_slice(&payload[..head]);
            hit = ac.is_match(&joint[..*n as usize + head]);
        }
        // keep the last `keep` bytes of this direction's stream for the next segment
        if keep > 0 {
            if payload.len() >= keep {
                buf[..keep].copy_from_slice(&payload[payload.len() - keep..]);
                *n = keep as u8;
            } else {
                let old = *n as usize;
                let total = old + payload.len();
                let drop = total.saturating_sub(keep);
                let mut tmp = [0u8; 2 * CARRY];
                tmp[..old].copy_from_slice(&buf[..old]);
                tmp[old..total].copy_from_slice(payload);
                let kept = total - drop;
                buf[..kept].copy_from_slice(&tmp[drop..total]);
                *n = kept as u8;
            }
        }
        hit
    }

    /// After the flow's first payload: true unless the initiator named its host in it.
    fn hostless(&mut self, key: FlowKey, d: usize, payload: &[u8]) -> bool {
        let f = match self.flows.get_mut(&key) {
            Some(f) => f,
            None => return true,
        };
        if f.named.is_none() && !payload.is_empty() {
            f.named = Some(d == 0 && crate::heads::names_its_host(payload));
        }
        f.named == Some(false)
    }

    fn learned_pair(&self, a: Addr, b: Addr) -> bool {
        !self.learned.is_empty()
            && (self.learned.contains(&(a, b)) || self.learned.contains(&(b, a)))
    }

    #[allow(clippy::too_many_arguments)]
    fn tcp(
        &mut self,
        ts: f64,
        linktype: u32,
        data: &[u8],
        src: Addr,
        dst: Addr,
        len: u32,
        t: Tcp<'_>,
    ) {
        let restart = t.syn && !t.ack;
        let key = flow_key(6, src, t.sport, dst, t.dport);
        let c = self.count_key(key, src, t.sport, len, ts, restart);
        if t.payload.is_empty() && !(t.syn || t.fin || t.rst) {
            self.stats.pure_acks += 1;
            return;
        }
        if t.sport == DNS_PORT || t.dport == DNS_PORT {
            // DNS over TCP: any number of messages per connection, all handed up.
            if t.sport == DNS_PORT && t.payload.len() > 2 && self.dns_anchored(t.payload) {
                self.learn(dst, &t.payload[2..]);
            }
            self.enqueue(Self::record(ts, linktype, data, Some(c)), None);
            return;
        }
        let flow_head = self.cfg.flow_head;
        let (state, inst, d) = {
            let f = self.flows.get_mut(&key).expect("counted flow");
            let d = if f.initiator == (src, t.sport) { 0 } else { 1 };
            if t.fin {
                f.fin[d] = true;
            }
            (f.state, f.inst, d)
        };
        match state {
            Decision::Shed => self.stats.shed += 1,
            Decision::Deliver => {
                let f = self.flows.get_mut(&key).expect("counted flow");
                let within = f.head[d] < flow_head && f.dirs[d].wanted(t.seq, t.payload);
                f.head[d] = f.head[d].saturating_add(1);
                if within || t.syn {
                    self.enqueue(Self::record(ts, linktype, data, Some(c)), None);
                } else {
                    self.stats.shed += 1;
                }
            }
            Decision::Pending => {
                // Segments Python would ignore (its stream for this direction is already
                // decided) are neither queued nor searched.
                let wanted = {
                    let f = self.flows.get_mut(&key).expect("counted flow");
                    let w = f.head[d] < flow_head && f.dirs[d].wanted(t.seq, t.payload);
                    f.head[d] = f.head[d].saturating_add(1);
                    w || t.syn
                };
                let interesting = if !wanted {
                    false
                } else if self.tcp_ports.contains(&t.dport) || self.tcp_ports.contains(&t.sport) {
                    self.stats.flows_port += 1;
                    true
                } else if !t.payload.is_empty() && self.anchor_in(key, d, t.payload) {
                    self.stats.flows_anchor += 1;
                    true
                } else if self.hostless(key, d, t.payload) && self.learned_pair(src, dst) {
                    self.stats.flows_learned += 1;
                    true
                } else {
                    false
                };
                let f = self.flows.get_mut(&key).expect("counted flow");
                // A handshake still incomplete at the end of the flow head: hand the head up,
                // so the summary says the stream never completed (and --exact helps).
                let interesting =
                    interesting || (wanted && f.head[d] == flow_head && f.dirs[d].cut_short());
                let dir_done = |x: usize| f.head[x] >= flow_head || f.dirs[x].done;
                let complete = (dir_done(0) && dir_done(1)) || t.rst || (f.fin[0] && f.fin[1]);
                if interesting {
                    self.decide(inst, key, Decision::Deliver);
                    self.enqueue(Self::record(ts, linktype, data, Some(c)), None);
                } else {
                    if wanted {
                        self.pending.entry(inst).or_insert(Pend {
                            frag: false,
                            decision: Decision::Pending,
                            refs: 0,
                            key,
                        });
                        self.enqueue(Self::record(ts, linktype, data, Some(c)), Some(inst));
                    } else {
                        self.stats.shed += 1;
                    }
                    if complete {
                        self.decide(inst, key, Decision::Shed);
                    }
                }
            }
        }
    }

    /// Move every frame that is ready (front of the queue, decided) into `out`.
    pub fn drain(&mut self, out: &mut Vec<Record>, max: usize) {
        while out.len() < max {
            let (inst, seq, ts) = match self.queue.front() {
                Some(s) => (s.inst, s.seq, s.ts),
                None => return,
            };
            let mut decision = match inst {
                None => Decision::Deliver,
                Some(i) => self
                    .pending
                    .get(&i)
                    .map(|p| p.decision)
                    .unwrap_or(Decision::Deliver),
            };
            if decision == Decision::Pending {
                let over = self.queue.len() > MAX_QUEUE_SLOTS
                    || self.queue_bytes > MAX_QUEUE_BYTES
                    || self.seq.saturating_sub(seq) > MAX_DELAY
                    || self.now - ts > MAX_AGE;
                if !over {
                    return;
                }
                let i = inst.expect("pending slot has an instance");
                let (key, frag) = {
                    let p = self.pending.get(&i).expect("pending entry");
                    (p.key, p.frag)
                };
                if frag {
                    // A datagram still incomplete after the queue's bounds: shed, as Python
                    // drops one that never completes.
                    self.frag_done(i, Decision::Shed);
                    continue;
                }
                let needless = self
                    .flows
                    .get(&key)
                    .filter(|f| f.inst == i)
                    .is_some_and(|f| f.needless());
                if needless {
                    // Shed what waits; the flow goes on undecided as a new instance, so
                    // what it sends later is judged (and queued) afresh.
                    self.decide(i, key, Decision::Shed);
                    self.stats.forced_shed += 1;
                    let inst = self.next_inst;
                    self.next_inst += 1;
                    if let Some(f) = self.flows.get_mut(&key) {
                        f.inst = inst;
                        f.state = Decision::Pending;
                    }
                    decision = Decision::Shed;
                } else {
                    self.decide(i, key, Decision::Deliver);
                    self.stats.forced += 1;
                    decision = Decision::Deliver;
                }
            }
            let slot = self.queue.pop_front().expect("front exists");
            self.queue_bytes -= slot.rec.data.len();
            if let Some(i) = slot.inst {
                if let Some(p) = self.pending.get_mut(&i) {
                    p.refs -= 1;
                    if p.refs == 0 {
                        self.pending.remove(&i);
                    }
                }
            }
            if decision == Decision::Deliver {
                if !slot.rec.learn_only {
                    self.stats.delivered += 1;
                }
                out.push(slot.rec);
            } else {
                self.stats.shed += 1;
            }
        }
    }

    /// End of input: flows still undecided had nothing of interest.
    pub fn finish(&mut self) {
        let undecided: Vec<(u64, FlowKey, bool)> = self
            .pending
            .iter()
            .filter(|(_, p)| p.decision == Decision::Pending)
            .map(|(i, p)| (*i, p.key, p.frag))
            .collect();
        for (i, k, frag) in undecided {
            if frag {
                self.frag_done(i, Decision::Shed);
                continue;
            }
            self.decide(i, k, Decision::Shed);
        }
    }

    pub fn flows_open(&self) -> usize {
        self.flows.len()
    }
}

/// How much of one direction of a delivered flow Python needs. Python decides a stream
/// (and ignores the rest of it) once it has: a ClientHello or a server's handshake flight
/// (TLS: every record up to the first one that is not a handshake record), or 12 bytes of
/// anything that is neither TLS nor an HTTP request (an HTTP response, another protocol).
/// HTTP request streams keep going (keep-alive) up to the flow head. Tracking needs the
/// segments in order; on a gap the direction falls back to the whole flow head.
#[derive(Default, Clone, Copy)]
struct Dir {
    kind: DirKind,
    next_seq: u32,
    synced: bool,
    /// TLS: body bytes of the current record still to skip; header bytes gathered so far.
    need: u32,
    hdr: [u8; 5],
    hlen: u8,
    bytes: u32,
    done: bool,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum DirKind {
    #[default]
    Unknown,
    Tls,
    Http,
    Other,
}

const HTTP_METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"HEAD ",
    b"DELETE ",
    b"OPTIONS ",
    b"CONNECT ",
    b"PATCH ",
    b"TRACE ",
];
const DECIDED_AFTER: u32 = 12;

impl Dir {
    fn cut_short(&self) -> bool {
        self.kind == DirKind::Tls && self.synced && !self.done
    }

    /// Is this segment (of a delivered flow) still needed by Python? Updates the tracking.
    fn wanted(&mut self, seq: u32, payload: &[u8]) -> bool {
        if payload.is_empty() {
            return true;
        }
        if self.kind == DirKind::Unknown {
            self.kind = if payload[0] == 0x16 {
                DirKind::Tls
            } else if payload.len() < 8
                || HTTP_METHODS
                    .iter()
                    .any(|m| payload.starts_with(m) || m.starts_with(payload))
            {
                DirKind::Http // (or too short to tell: keep the whole head)
            } else {
                DirKind::Other
            };
            self.synced = true;
            self.next_seq = seq;
        }
        if self.synced && seq != self.next_seq {
            self.synced = false; // a gap, a retransmission, reordering: keep the whole head
        }
        self.next_seq = seq.wrapping_add(payload.len() as u32);
        if !self.synced {
            return true;
        }
        if self.done {
            return false;
        }
        match self.kind {
            DirKind::Tls => {
                let mut i = 0;
                while i < payload.len() {
                    if self.need > 0 {
                        let take = (self.need as usize).min(payload.len() - i);
                        self.need -= take as u32;
                        i += take;
                    } else {
                        self.hdr[self.hlen as usize] = payload[i];
                        self.hlen += 1;
                        i += 1;
                        if self.hlen == 5 {
                            self.hlen = 0;
                            if self.hdr[0] != 0x16 {
                                self.done = true; // this segment ends the handshake flight
                                break;
                            }
                            self.need = u16::from_be_bytes([self.hdr[3], self.hdr[4]]) as u32;
                        }
                    }
                }
                true
            }
            DirKind::Other => {
                self.bytes = self.bytes.saturating_add(payload.len() as u32);
                if self.bytes >= DECIDED_AFTER {
                    self.done = true;
                }
                true
            }
            DirKind::Http | DirKind::Unknown => true,
        }
    }
}

fn flow_key(proto: u8, a: Addr, ap: u16, b: Addr, bp: u16) -> FlowKey {
    if (a, ap) <= (b, bp) {
        FlowKey {
            proto,
            lo: (a, ap),
            hi: (b, bp),
        }
    } else {
        FlowKey {
            proto,
            lo: (b, bp),
            hi: (a, ap),
        }
    }
}

impl Classifier {
    /// Live capture, idle link: let time pass so waiting flows are not held back.
    pub fn tick(&mut self, now: f64) {
        if now > self.now {
            self.now = now;
        }
    }

    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }
}
