//! Time the core alone on a capture: `cargo run --release --no-default-features --example scan -- FILE`.
use std::time::Instant;

use _core::classify::{Classifier, Config};
use _core::reader::CaptureReader;

fn main() {
    let path = std::env::args().nth(1).expect("usage: scan FILE");
    let anchors: Vec<Vec<u8>> = ["kaspersky", "kaspersky-labs", "avp", "ksn"]
        .iter()
        .map(|a| {
            let mut v = vec![a.len() as u8];
            v.extend_from_slice(a.as_bytes());
            v
        })
        .collect();
    let t = Instant::now();
    let mut r = CaptureReader::open(&path).expect("open");
    let mut c = Classifier::new(Config {
        anchors: Some(anchors),
        tails: Some(vec![vec![b"kaspersky".to_vec(), b"com".to_vec()]]),
        tcp_ports: vec![13000, 14000],
        udp_ports: vec![13000],
        flow_head: 16,
        max_flows: std::env::var("KD_MAX_FLOWS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000),
        part: None,
    });
    let mut out = Vec::new();
    let mut n = 0u64;
    while let Some(f) = r.next_frame() {
        let (ts, lt) = (f.ts, f.linktype);
        c.push(ts, lt, f.data);
        n += 1;
        if n % 4096 == 0 {
            c.drain(&mut out, usize::MAX);
            out.clear();
        }
    }
    c.finish();
    c.drain(&mut out, usize::MAX);
    let read_only = {
        let t2 = Instant::now();
        let mut r = CaptureReader::open(&path).expect("open");
        let mut m = 0u64;
        while let Some(f) = r.next_frame() {
            m += f.data.len() as u64;
        }
        (t2.elapsed(), m)
    };
    eprintln!(
        "{n} frames in {:?} (read alone {:?}); {:?}",
        t.elapsed(),
        read_only.0,
        c.stats
    );
}
