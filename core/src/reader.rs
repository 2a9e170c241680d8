//! Capture files in one streaming pass: pcap (both byte orders, micro/nanosecond) and
//! pcapng (sections, interfaces with their own link type, `if_tsresol`, `if_tsoffset`,
//! enhanced, simple and obsolete packet blocks), plain or gzip'd.
//!
//! Parsing is `pcap-parser`'s (rusticata; the reader Suricata uses), over a bounded buffer
//! that grows only up to `MAX_BUFFER`: a record claiming more than that is damage, reported
//! with the byte offset where it starts, and the records before it are kept.
//! Timestamps are computed with the same floating-point operations as the Python reader
//! (`detector/capture/pcap.py`), so both paths hand the detector identical times.

use std::fs::File;
use std::io::{BufReader, Read};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use pcap_parser::pcapng::Block;
use pcap_parser::traits::PcapReaderIterator;
use pcap_parser::{create_reader, PcapBlockOwned, PcapError};

const START_BUFFER: usize = 1 << 20;
/// Python's reader refuses records above 1 MiB; the buffer needs room for one and its header.
const MAX_RECORD: usize = 1 << 20;
const MAX_BUFFER: usize = 4 << 20;

/// One captured frame, borrowed from the reader's buffer.
pub struct Frame<'a> {
    pub ts: f64,
    pub linktype: u32,
    pub data: &'a [u8],
}

pub struct CaptureReader {
    inner: Box<dyn PcapReaderIterator + Send>,
    /// Uncompressed files are mapped and parsed in place (no copy, no buffer shifts).
    mapped: Option<Mapped>,
    pub format: &'static str,
    pub compressed: bool,
    pub records: u64,
    pub warning: Option<String>,
    /// pcap: (linktype, ts unit) of the file; pcapng: per interface of the current section.
    legacy: (u32, f64),
    interfaces: Vec<(u32, f64, i64)>,
    ng_big_endian: bool,
    done: bool,
    grown: usize,
    /// Bytes handed back by `consume` so far (the offset of the next block in the stream).
    offset: u64,
    pending_consume: usize,
    broken: Arc<AtomicBool>,
    bomb: Arc<AtomicBool>,
}

/// Mapped files are read through a window that slides along the file, so the pages of
/// what was read are dropped (bounded RSS on captures of many GB).
const WINDOW: usize = 16 << 20;
const SLACK: usize = MAX_RECORD + 64 * 1024; // a whole record always fits past the position

struct Mapped {
    file: File,
    file_len: u64,
    win_start: u64,
    map: memmap2::Mmap,
    pos: usize,
    /// None until the file header; Some(true) pcapng, Some(false) pcap.
    ng: Option<bool>,
    big_endian: bool,
}

/// Map a capture file read-only. The one `unsafe` of the crate: a mapping is undefined
/// behaviour only if another process truncates or rewrites the file while it is read
/// (analysts replay finished captures; a file still being written goes through `--exact`
/// or the gzip stream path unaffected). No parsing code is unsafe.
#[allow(unsafe_code)]
fn map_file(f: &File, offset: u64, len: usize) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: read-only private mapping of a regular file; see the note above.
    let m = unsafe { memmap2::MmapOptions::new().offset(offset).len(len).map(f)? };
    let _ = m.advise(memmap2::Advice::Sequential);
    Ok(m)
}

/// A decompressor whose errors end the stream (flagged) instead of failing the reader, so
/// that every record before a cut in a compressed capture is still read; and which ends a
/// stream that expands more than `MAX_RATIO`:1 once `RATIO_AFTER` bytes came out (a
/// decompression bomb), as the Python reader does.
struct Tolerant<R> {
    inner: R,
    broken: Arc<AtomicBool>,
    bomb: Arc<AtomicBool>,
    packed: Arc<AtomicU64>,
    out: u64,
}

const MAX_RATIO: u64 = 200;
const RATIO_AFTER: u64 = 16 << 20;

impl<R: Read> Read for Tolerant<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.broken.load(Ordering::Relaxed) || self.bomb.load(Ordering::Relaxed) {
            return Ok(0);
        }
        match self.inner.read(buf) {
            Ok(n) => {
                self.out += n as u64;
                if self.out > RATIO_AFTER
                    && self.out > MAX_RATIO * self.packed.load(Ordering::Relaxed).max(1)
                {
                    self.bomb.store(true, Ordering::Relaxed);
                    return Ok(0);
                }
                Ok(n)
            }
            Err(_) => {
                self.broken.store(true, Ordering::Relaxed);
                Ok(0)
            }
        }
    }
}

/// Counts the compressed bytes read from the file (for the bomb ratio).
struct Counting<R> {
    inner: R,
    n: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

fn le_or_be_u32(b: &[u8], be: bool) -> u32 {
    let a = [b[0], b[1], b[2], b[3]];
    if be {
        u32::from_be_bytes(a)
    } else {
        u32::from_le_bytes(a)
    }
}

fn ts_unit(resol: u8) -> f64 {
    if resol & 0x80 != 0 {
        2f64.powf(-((resol & 0x7f) as f64))
    } else {
        10f64.powf(-(resol as f64))
    }
}

impl CaptureReader {
    /// Open a capture; `Err` is one line naming what is wrong (the caller names the file).
    pub fn open(path: &str) -> Result<CaptureReader, String> {
        let mut f = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
        let mut magic = [0u8; 2];
        let n = f
            .read(&mut magic)
            .map_err(|e| format!("cannot read: {e}"))?;
        drop(f);
        let f = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
        let gz = n == 2 && magic == [0x1f, 0x8b];
        if !gz {
            let f = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
            let file_len = f
                .metadata()
                .map(|m| if m.is_file() { m.len() } else { 0 })
                .unwrap_or(0);
            if file_len > 0 {
                let first = file_len.min(WINDOW as u64) as usize;
                if let Ok(map) = map_file(&f, 0, first) {
                    let head: &[u8] = &map[..map.len().min(4)];
                    let ng = match head {
                        [0x0a, 0x0d, 0x0d, 0x0a] => Some(true),
                        [0xd4, 0xc3, 0xb2, 0xa1]
                        | [0xa1, 0xb2, 0xc3, 0xd4]
                        | [0x4d, 0x3c, 0xb2, 0xa1]
                        | [0xa1, 0xb2, 0x3c, 0x4d] => Some(false),
                        _ => None,
                    };
                    if ng.is_some() {
                        let empty: Box<dyn Read + Send> = Box::new(std::io::empty());
                        let mut r = Self::from_reader_unchecked(empty)?;
                        r.mapped = Some(Mapped {
                            file: f,
                            file_len,
                            win_start: 0,
                            map,
                            pos: 0,
                            ng: None,
                            big_endian: false,
                        });
                        return Ok(r);
                    }
                }
            }
        }
        let broken = Arc::new(AtomicBool::new(false));
        let bomb = Arc::new(AtomicBool::new(false));
        let source: Box<dyn Read + Send> = if gz {
            let packed = Arc::new(AtomicU64::new(0));
            let counted = Counting {
                inner: f,
                n: packed.clone(),
            };
            let z = flate2::read::MultiGzDecoder::new(BufReader::with_capacity(1 << 20, counted));
            Box::new(Tolerant {
                inner: z,
                broken: broken.clone(),
                bomb: bomb.clone(),
                packed,
                out: 0,
            })
        } else {
            Box::new(f)
        };
        let mut r = Self::from_reader(source, gz)?;
        r.broken = broken;
        r.bomb = bomb;
        Ok(r)
    }

    /// Bytes read so far (for gzip: of the decompressed stream).
    pub fn position(&self) -> u64 {
        self.offset
    }

    /// True when the compressed stream ended early or was corrupt (records before it kept).
    pub fn compressed_damage(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    /// True when the compressed stream was stopped as a decompression bomb.
    pub fn decompression_bomb(&self) -> bool {
        self.bomb.load(Ordering::Relaxed)
    }

    fn from_reader_unchecked(source: Box<dyn Read + Send>) -> Result<CaptureReader, String> {
        // A placeholder stream reader (never read) beside a mapped file: a tiny valid header.
        let _ = source;
        let hdr: &'static [u8] = &[
            0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 1, 0, 0,
            0,
        ];
        Self::from_reader(Box::new(hdr), false)
    }

    pub fn from_reader(
        source: Box<dyn Read + Send>,
        compressed: bool,
    ) -> Result<CaptureReader, String> {
        let inner = match create_reader(START_BUFFER, source) {
            Ok(r) => r,
            Err(PcapError::Eof) => return Err("empty file, not a capture".into()),
            Err(PcapError::HeaderNotRecognized) => {
                return Err("not a pcap or pcapng capture".into())
            }
            Err(PcapError::ReadError) => {
                return Err(if compressed {
                    "compressed data is corrupt".into()
                } else {
                    "read error".into()
                })
            }
            Err(e) => return Err(format!("not a pcap or pcapng capture ({e:?})")),
        };
        Ok(CaptureReader {
            inner,
            mapped: None,
            format: "?",
            compressed,
            records: 0,
            warning: None,
            legacy: (1, 1e-6),
            interfaces: Vec::new(),
            ng_big_endian: false,
            done: false,
            grown: START_BUFFER,
            offset: 0,
            pending_consume: 0,
            broken: Arc::new(AtomicBool::new(false)),
            bomb: Arc::new(AtomicBool::new(false)),
        })
    }

    fn warn(&mut self, msg: String) {
        self.warning = Some(match self.warning.take() {
            Some(w) => format!("{w}; {msg}"),
            None => msg,
        });
        self.done = true;
    }

    /// The next frame, or None at the end of the file (or at damage: see `warning`).
    /// The frame borrows the buffer until the next call.
    pub fn next_frame(&mut self) -> Option<Frame<'_>> {
        if self.mapped.is_some() {
            return self.next_mapped();
        }
        loop {
            if self.done {
                return None;
            }
            if self.pending_consume > 0 {
                self.inner.consume(self.pending_consume);
                self.offset += self.pending_consume as u64;
                self.pending_consume = 0;
            }
            // A first look without holding the borrow: what to do with the next block.
            let base = self.inner.data().as_ptr() as usize;
            let be = self.ng_big_endian;
            let step = match self.inner.next() {
                Ok((used, block)) => Step::Block(used, describe(base, be, block)),
                Err(PcapError::Eof) => Step::End,
                Err(PcapError::Incomplete(_)) => Step::Refill,
                Err(PcapError::UnexpectedEof) => Step::Cut,
                Err(PcapError::BufferTooSmall) => Step::Grow,
                Err(e) => Step::Damaged(format!("{e:?}")),
            };
            match step {
                Step::End => {
                    self.done = true;
                    return None;
                }
                Step::Refill => {
                    let before = self.inner.data().len();
                    if !self.inner.reader_exhausted() {
                        let refilled = self.inner.refill().map_err(|e| format!("{e:?}"));
                        if let Err(e) = refilled {
                            self.warn(format!("read error after {} records ({e})", self.records));
                            return None;
                        }
                    }
                    let now = self.inner.data().len();
                    if self.inner.reader_exhausted() && now == before {
                        if now == 0 {
                            self.done = true;
                        } else {
                            let what = if self.format == "pcapng" {
                                "a block"
                            } else {
                                "a packet"
                            };
                            self.warn(format!(
                                "file cut inside {what} after {} records (offset {})",
                                self.records, self.offset
                            ));
                        }
                        return None;
                    }
                    // Full buffer and still incomplete: the record is larger than the buffer.
                    if now == before {
                        if self.grown >= MAX_BUFFER || !self.inner.grow(self.grown * 2) {
                            self.warn(self.impossible());
                            return None;
                        }
                        self.grown *= 2;
                    }
                }
                Step::Grow => {
                    if self.grown >= MAX_BUFFER || !self.inner.grow(self.grown * 2) {
                        self.warn(self.impossible());
                        return None;
                    }
                    self.grown *= 2;
                    let _ = self.inner.refill();
                }
                Step::Cut => {
                    self.warn(format!(
                        "file cut inside a record after {} records (offset {})",
                        self.records, self.offset
                    ));
                    return None;
                }
                Step::Damaged(e) => {
                    self.warn(format!(
                        "damaged record after {} records at offset {} ({e}); rest of file skipped",
                        self.records, self.offset
                    ));
                    return None;
                }
                Step::Block(used, kind) => {
                    self.pending_consume = used;
                    match self.apply(kind) {
                        Applied::Packet(p) => return self.frame_of(p), // (consume is deferred: the bytes stay put)
                        Applied::Stop => return None,
                        Applied::Next => {}
                    }
                }
            }
        }
    }

    fn next_mapped(&mut self) -> Option<Frame<'_>> {
        loop {
            if self.done {
                return None;
            }
            let m = self.mapped.as_mut().expect("mapped source");
            if m.map.len() - m.pos < SLACK && m.win_start + (m.map.len() as u64) < m.file_len {
                let at = m.win_start + m.pos as u64;
                let start = at & !4095;
                let len = (m.file_len - start).min(WINDOW as u64) as usize;
                match map_file(&m.file, start, len) {
                    Ok(map) => {
                        m.map = map;
                        m.win_start = start;
                        m.pos = (at - start) as usize;
                    }
                    Err(e) => return self.stop(format!("cannot map the file at offset {at}: {e}")),
                }
            }
            let base = m.map.as_ptr() as usize;
            let rest = &m.map[m.pos..];
            if rest.is_empty() {
                self.done = true;
                return None;
            }
            let (used, kind) = match m.ng {
                None => match pcap_parser::parse_pcap_header(rest) {
                    Ok((r, h)) if !h.is_modified_format() => {
                        m.ng = Some(false);
                        m.big_endian = h.is_bigendian();
                        (
                            rest.len() - r.len(),
                            Kind::LegacyHeader(h.network.0 as u32, h.is_nanosecond_precision()),
                        )
                    }
                    _ if rest.starts_with(&[0x0a, 0x0d, 0x0d, 0x0a]) => {
                        m.ng = Some(true);
                        continue;
                    }
                    Ok(_) => {
                        return self.stop("a modified pcap format this reader does not take".into())
                    }
                    Err(_) => return self.stop("file ends inside the pcap file header".into()),
                },
                Some(false) => {
                    let res = if m.big_endian {
                        pcap_parser::parse_pcap_frame_be(rest)
                    } else {
                        pcap_parser::parse_pcap_frame(rest)
                    };
                    match res {
                        Ok((r, b)) => (
                            rest.len() - r.len(),
                            describe(base, false, PcapBlockOwned::Legacy(b)),
                        ),
                        Err(_)
                            if rest.len() >= 16
                                && le_or_be_u32(&rest[8..12], m.big_endian) as usize
                                    > MAX_RECORD =>
                        {
                            let off = m.win_start as usize + m.pos;
                            self.offset = off as u64;
                            return self.stop(self.impossible());
                        }
                        Err(_) => {
                            let (n, off) = (self.records, m.win_start + m.pos as u64);
                            let what = if rest.len() < 16 {
                                "a record header"
                            } else {
                                "a packet"
                            };
                            return self.stop(format!(
                                "file cut inside {what} after {n} records (offset {off})"
                            ));
                        }
                    }
                }
                Some(true) => {
                    let be = m.big_endian;
                    let res = if rest.starts_with(&[0x0a, 0x0d, 0x0d, 0x0a]) {
                        pcap_parser::pcapng::parse_sectionheaderblock(rest)
                            .map(|(r, s)| (r, Block::SectionHeader(s)))
                    } else if be {
                        pcap_parser::pcapng::parse_block_be(rest)
                    } else {
                        pcap_parser::pcapng::parse_block_le(rest)
                    };
                    match res {
                        Ok((r, b)) => {
                            let k = describe(base, be, PcapBlockOwned::NG(b));
                            if let Kind::Section(sbe) = k {
                                m.big_endian = sbe;
                            }
                            (rest.len() - r.len(), k)
                        }
                        Err(e) => {
                            let (n, off) = (self.records, m.win_start + m.pos as u64);
                            let msg = match e {
                                pcap_parser::nom::Err::Incomplete(_) => format!("file cut inside a block after {n} records (offset {off})"),
                                _ => format!("damaged pcapng block after {n} records at offset {off}; rest of file skipped"),
                            };
                            return self.stop(msg);
                        }
                    }
                }
            };
            m.pos += used;
            self.offset = m.win_start + m.pos as u64;
            match self.apply(kind) {
                Applied::Packet(p) => return self.frame_of(p),
                Applied::Stop => return None,
                Applied::Next => {}
            }
        }
    }

    /// What a block means for the reader's state (both the mapped and the stream path).
    fn apply(&mut self, kind: Kind) -> Applied {
        match kind {
            Kind::LegacyHeader(lt, nano) => {
                self.format = "pcap";
                self.legacy = (lt & 0xffff, if nano { 1e-9 } else { 1e-6 });
            }
            Kind::Section(be) => {
                self.format = "pcapng";
                self.ng_big_endian = be;
                self.interfaces.clear();
            }
            Kind::Interface(lt, resol, off) => {
                if self.interfaces.len() < 65536 {
                    self.interfaces.push((lt, ts_unit(resol), off));
                }
            }
            Kind::Packet(p) => {
                if self.frame_ok(p) {
                    return Applied::Packet(p);
                }
                self.bad_block();
            }
            Kind::BadPacket(legacy) => {
                if legacy {
                    self.warn(self.impossible());
                    return Applied::Stop;
                }
                self.bad_block();
            }
            Kind::Other => {}
        }
        Applied::Next
    }

    fn stop(&mut self, msg: String) -> Option<Frame<'_>> {
        self.warn(msg);
        None
    }

    fn frame_ok(&self, p: Packet) -> bool {
        match p.source {
            Source::Iface(ifid, _) => (ifid as usize) < self.interfaces.len(),
            Source::First => !self.interfaces.is_empty(),
            Source::Legacy(..) => true,
        }
    }

    fn bad_block(&mut self) {
        if self.warning.is_none() {
            self.warning = Some(format!(
                "pcapng packet block with a bad interface or length after {} records",
                self.records
            ));
        }
    }

    fn impossible(&self) -> String {
        format!(
            "damaged record after {} records at offset {} (a record longer than {} bytes is impossible); rest of file skipped",
            self.records, self.offset, MAX_RECORD
        )
    }

    /// A packet block: check it against the interfaces, then hand out its bytes.
    fn frame_of(&mut self, p: Packet) -> Option<Frame<'_>> {
        let (ts, linktype) = match p.source {
            Source::Legacy(sec, frac) => (sec as f64 + frac as f64 * self.legacy.1, self.legacy.0),
            Source::Iface(ifid, raw) => {
                let (lt, unit, off) = *self.interfaces.get(ifid as usize)?;
                (raw as f64 * unit + off as f64, lt)
            }
            Source::First => (0.0, self.interfaces.first()?.0),
        };
        let data = match &self.mapped {
            Some(m) => m.map.get(p.start..p.start + p.len)?,
            None => self.inner.data().get(p.start..p.start + p.len)?,
        };
        self.records += 1;
        Some(Frame { ts, linktype, data })
    }
}

/// Where a packet block's bytes are in the reader's buffer and how to time them.
#[derive(Clone, Copy)]
struct Packet {
    start: usize,
    len: usize,
    source: Source,
}

#[derive(Clone, Copy)]
enum Source {
    Legacy(u32, u32),
    Iface(u32, u64),
    First,
}

fn span(base: usize, data: &[u8], len: usize) -> Option<(usize, usize)> {
    if len > data.len() || len > MAX_RECORD {
        return None;
    }
    Some((data.as_ptr() as usize - base, len))
}

/// Obsolete packet block (type 2): interface id u16, drops u16, ts high, ts low, caplen, wirelen.
fn obsolete(base: usize, body: &[u8], be: bool) -> Option<Packet> {
    let u16_at = |p: usize| -> Option<u32> {
        let b = body.get(p..p + 2)?;
        Some(if be {
            u16::from_be_bytes([b[0], b[1]])
        } else {
            u16::from_le_bytes([b[0], b[1]])
        } as u32)
    };
    let u32_at = |p: usize| -> Option<u32> {
        let b: [u8; 4] = body.get(p..p + 4)?.try_into().ok()?;
        Some(if be {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    };
    let ifid = u16_at(0)?;
    let (tsh, tsl, cap) = (u32_at(4)?, u32_at(8)?, u32_at(12)? as usize);
    let (start, len) = span(base, body.get(20..)?, cap)?;
    Some(Packet {
        start,
        len,
        source: Source::Iface(ifid, ((tsh as u64) << 32) | tsl as u64),
    })
}

enum Applied {
    Packet(Packet),
    Stop,
    Next,
}

enum Step {
    Block(usize, Kind),
    End,
    Refill,
    Grow,
    Cut,
    Damaged(String),
}

#[derive(Clone, Copy)]
enum Kind {
    LegacyHeader(u32, bool),
    Section(bool),
    Interface(u32, u8, i64),
    Packet(Packet),
    /// A packet block that cannot be read (bad interface or length): skipped, warned.
    BadPacket(bool),
    Other,
}

fn describe(base: usize, be: bool, block: PcapBlockOwned<'_>) -> Kind {
    match block {
        PcapBlockOwned::LegacyHeader(h) => {
            Kind::LegacyHeader(h.network.0 as u32, h.is_nanosecond_precision())
        }
        PcapBlockOwned::Legacy(b) => match span(base, b.data, b.caplen as usize) {
            Some((start, len)) => Kind::Packet(Packet {
                start,
                len,
                source: Source::Legacy(b.ts_sec, b.ts_usec),
            }),
            None => Kind::BadPacket(true),
        },
        PcapBlockOwned::NG(Block::SectionHeader(s)) => Kind::Section(s.big_endian()),
        PcapBlockOwned::NG(Block::InterfaceDescription(i)) => {
            Kind::Interface(i.linktype.0 as u32 & 0xffff, i.if_tsresol, i.if_tsoffset)
        }
        PcapBlockOwned::NG(Block::EnhancedPacket(b)) => match span(base, b.data, b.caplen as usize)
        {
            Some((start, len)) => Kind::Packet(Packet {
                start,
                len,
                source: Source::Iface(b.if_id, ((b.ts_high as u64) << 32) | b.ts_low as u64),
            }),
            None => Kind::BadPacket(false),
        },
        PcapBlockOwned::NG(Block::SimplePacket(b)) => {
            let cap = (b.origlen as usize).min(b.data.len());
            match span(base, b.data, cap) {
                Some((start, len)) => Kind::Packet(Packet {
                    start,
                    len,
                    source: Source::First,
                }),
                None => Kind::BadPacket(false),
            }
        }
        PcapBlockOwned::NG(Block::Unknown(u)) if u.block_type == 2 => {
            match obsolete(base, u.data, be) {
                Some(p) => Kind::Packet(p),
                None => Kind::BadPacket(false),
            }
        }
        PcapBlockOwned::NG(_) => Kind::Other,
    }
}
