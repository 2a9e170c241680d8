//! Fixed-seed mutation fuzzing of the whole per-packet path: every capture under `pcaps/`
//! (the seeds) is mutated (bit flips, byte stores, truncations, splices, lying lengths) and
//! read and classified end to end, as files and as single frames. Any panic is a bug; the
//! run is bounded (a few seconds). `KD_FUZZ_ITERS` raises the count for a longer run.

use std::io::Write;
use std::path::PathBuf;

use _core::classify::{Classifier, Config};
use _core::reader::CaptureReader;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn seeds() -> Vec<(String, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../pcaps");
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .extension()
                .is_some_and(|x| x == "pcap" || x == "pcapng" || x == "gz")
            {
                if let Ok(b) = std::fs::read(&p) {
                    out.push((p.display().to_string(), b));
                }
            }
        }
    }
    out.sort();
    out
}

fn classifier() -> Classifier {
    Classifier::new(Config {
        anchors: Some(vec![b"\x09kaspersky".to_vec(), b"\x03avp".to_vec()]),
        tails: Some(vec![
            vec![b"kaspersky".to_vec(), b"com".to_vec()],
            vec![b"avp".to_vec(), b"ru".to_vec()],
        ]),
        tcp_ports: vec![13000, 14000],
        udp_ports: vec![13000],
        flow_head: 4,
        max_flows: 64,
        part: None,
    })
}

fn mutate(rng: &mut Rng, data: &mut Vec<u8>, pool: &[(String, Vec<u8>)]) {
    for _ in 0..1 + rng.below(8) {
        if data.is_empty() {
            return;
        }
        let at = rng.below(data.len());
        match rng.below(6) {
            0 => data[at] ^= 1 << rng.below(8),
            1 => data[at] = [0, 0xff, 0x7f, 0x80, 0x16, 0x45][rng.below(6)],
            2 => data.truncate(at),
            3 => {
                // a lying 32-bit length somewhere
                let v =
                    [0u32, 0xffff_ffff, 0x7fff_ffff, 1 << 20, 65535][rng.below(5)].to_le_bytes();
                for (i, b) in v.iter().enumerate() {
                    if at + i < data.len() {
                        data[at + i] = *b;
                    }
                }
            }
            4 => {
                let (_, other) = &pool[rng.below(pool.len())];
                if !other.is_empty() {
                    let from = rng.below(other.len());
                    let n = rng.below(other.len() - from).min(4096);
                    data.splice(at..at, other[from..from + n].iter().copied());
                }
            }
            _ => {
                let n = rng.below(64).min(data.len() - at);
                data.drain(at..at + n);
            }
        }
    }
}

fn run_file(path: &std::path::Path) {
    if let Ok(mut r) = CaptureReader::open(path.to_str().unwrap()) {
        let mut c = classifier();
        let mut out = Vec::new();
        let mut n = 0;
        while let Some(f) = r.next_frame() {
            let (ts, lt) = (f.ts, f.linktype);
            c.push(ts, lt, f.data);
            n += 1;
            if n > 100_000 {
                break;
            }
        }
        c.finish();
        c.drain(&mut out, usize::MAX);
    }
}

#[test]
fn mutated_captures_never_panic() {
    let pool = seeds();
    assert!(!pool.is_empty(), "seed captures under pcaps/");
    let iters: usize = std::env::var("KD_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let dir = std::env::temp_dir().join(format!("kd-core-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for i in 0..iters {
        let (_name, seed) = &pool[i % pool.len()];
        let mut data = seed.clone();
        mutate(&mut rng, &mut data, &pool);
        let p = dir.join(format!("m{}.pcap", i % 8));
        std::fs::File::create(&p).unwrap().write_all(&data).unwrap();
        run_file(&p);
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn mutated_frames_never_panic() {
    let pool = seeds();
    let iters: usize = std::env::var("KD_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600)
        * 50;
    let mut rng = Rng(0xfeed_0000_1111_2222);
    // frames from the seeds, mutated one by one through one classifier (state carries over)
    let mut frames: Vec<(u32, Vec<u8>)> = Vec::new();
    let dir = std::env::temp_dir();
    for (name, _) in pool.iter().filter(|(n, _)| !n.contains("damaged")) {
        if let Ok(mut r) = CaptureReader::open(name) {
            while let Some(f) = r.next_frame() {
                frames.push((f.linktype, f.data.to_vec()));
            }
        }
    }
    let _ = dir;
    assert!(!frames.is_empty());
    let mut c = classifier();
    // Alert-storm mutes on the seeds' addresses, so mutated DNS goes through mute.rs too.
    let mut muted = 0;
    for (lt, f) in &frames {
        if let _core::decode::Decoded::Ip(ip) = _core::decode::decode(*lt, f) {
            for a in [ip.src, ip.dst] {
                if muted < 64
                    && c.mutes.add(
                        a,
                        1,
                        f64::INFINITY,
                        vec![b"com".to_vec(), b"kaspersky.com".to_vec()],
                        vec![],
                        4,
                        muted % 2 == 0,
                    )
                {
                    muted += 1;
                }
            }
        }
    }
    let mut out = Vec::new();
    for i in 0..iters {
        let (lt, f) = &frames[rng.below(frames.len())];
        let mut f = f.clone();
        let empty: Vec<(String, Vec<u8>)> =
            vec![(String::new(), frames[rng.below(frames.len())].1.clone())];
        mutate(&mut rng, &mut f, &empty);
        c.push(i as f64, *lt, &f);
        if i % 64 == 0 {
            c.drain(&mut out, usize::MAX);
            out.clear();
        }
    }
    c.finish();
    c.drain(&mut out, usize::MAX);
    assert!(
        muted > 0 && c.stats.dns_muted > 0,
        "the mutes were never reached"
    );
}

/// Live batches (`push_batch`): the frames of the seeds laid end to end with libpcap's
/// meta give the same records as pushing them one by one; meta pointing outside the batch
/// (hostile or garbled) is counted and skipped, never read.
#[test]
fn live_batches_match_frame_by_frame() {
    let mut frames: Vec<(u32, f64, Vec<u8>)> = Vec::new();
    for (name, _) in seeds().iter().filter(|(n, _)| !n.contains("damaged")) {
        if let Ok(mut r) = CaptureReader::open(name) {
            while let Some(f) = r.next_frame() {
                if f.linktype == 1 {
                    frames.push((f.linktype, f.ts, f.data.to_vec()));
                }
            }
        }
    }
    assert!(frames.len() > 100);
    let (mut one, mut batched) = (classifier(), classifier());
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for chunk in frames.chunks(37) {
        let (mut pkts, mut meta) = (Vec::new(), Vec::new());
        for (lt, ts, data) in chunk {
            let ts = ts.max(0.0).floor() + (ts.fract() * 1e6).round() * 1e-6;
            one.push(ts, *lt, data);
            let (sec, usec) = (ts.floor() as u32, ((ts - ts.floor()) * 1e6).round() as u32);
            for v in [sec, usec, pkts.len() as u32, data.len() as u32] {
                meta.extend_from_slice(&v.to_ne_bytes());
            }
            pkts.extend_from_slice(data);
        }
        batched.push_batch(1, &pkts, &meta);
        one.drain(&mut a, usize::MAX);
        batched.drain(&mut b, usize::MAX);
    }
    assert!(!a.is_empty());
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((x.linktype, &x.data), (y.linktype, &y.data));
        assert!((x.ts - y.ts).abs() < 1e-5);
    }
    // offsets past the end, a length that overflows, a short trailing meta entry
    let mut meta = Vec::new();
    for v in [[1u32, 0, 10, 5], [1, 0, 0, u32::MAX], [1, 0, u32::MAX, 2]] {
        for x in v {
            meta.extend_from_slice(&x.to_ne_bytes());
        }
    }
    meta.extend_from_slice(&[1, 2, 3]);
    let before = batched.stats.packets;
    batched.push_batch(1, &[0u8; 12], &meta);
    assert_eq!(batched.stats.bad_meta, 3);
    assert_eq!(batched.stats.packets, before);
}
