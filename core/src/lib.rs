//! kd-core: the per-packet path of the Kaspersky traffic detector.
//!
//! One pass over a capture (`reader`), every frame decoded once (`decode`), counted in its
//! flow and classified (`classify`); only the frames that can hold evidence cross into
//! Python, in batches, in capture order, each with its flow's counters. Python keeps the
//! meaning: protocol parsers of those frames, matching, evidence, aggregation, outputs.
//!
//! No `unsafe` in any parsing code: the one `unsafe` is the read-only file mapping in
//! `reader::map_file`.
#![deny(unsafe_code)]

pub mod classify;
pub mod decode;
pub mod dns;
pub mod heads;
pub mod mute;
pub mod reader;

#[cfg(feature = "python")]
mod python {
    use pyo3::exceptions::{PyOSError, PyValueError};
    use pyo3::prelude::*;
    use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc::{sync_channel, Receiver};
    use std::sync::Arc;
    use std::thread::JoinHandle;

    use crate::classify::{Classifier, Config, Record, Stats};
    use crate::reader::CaptureReader;

    #[allow(clippy::too_many_arguments)]
    fn config(
        anchors: Option<Vec<Vec<u8>>>,
        tails: Option<Vec<Vec<Vec<u8>>>>,
        tcp_ports: Vec<u16>,
        udp_ports: Vec<u16>,
        flow_head: u32,
        max_flows: usize,
        part: Option<(u32, u32)>,
    ) -> PyResult<Config> {
        if let Some((k, n)) = part {
            if n == 0 || k >= n {
                return Err(PyValueError::new_err("part must be (k, n) with 0 <= k < n"));
            }
        }
        if flow_head == 0 || max_flows == 0 {
            return Err(PyValueError::new_err(
                "flow_head and max_flows must be positive",
            ));
        }
        Ok(Config {
            anchors,
            tails,
            tcp_ports,
            udp_ports,
            flow_head,
            max_flows,
            part,
        })
    }

    fn to_py<'py>(py: Python<'py>, recs: Vec<Record>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for r in recs {
            let counters: Bound<'py, PyAny> = match r.counters {
                Some(c) => (
                    c.start,
                    c.pkts_fwd,
                    c.bytes_fwd,
                    c.pkts_rev,
                    c.bytes_rev,
                    c.to_server,
                )
                    .into_pyobject(py)?
                    .into_any(),
                None => py.None().into_bound(py),
            };
            let t = PyTuple::new(
                py,
                [
                    r.ts.into_pyobject(py)?.into_any(),
                    r.linktype.into_pyobject(py)?.into_any(),
                    PyBytes::new(py, &r.data).into_any(),
                    counters,
                    pyo3::types::PyBool::new(py, r.learn_only)
                        .to_owned()
                        .into_any(),
                ],
            )?;
            list.append(t)?;
        }
        Ok(list)
    }

    fn stats_dict<'py>(py: Python<'py>, s: &Stats, open: usize) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("packets", s.packets)?;
        d.set_item("delivered", s.delivered)?;
        d.set_item("whole", s.whole)?;
        d.set_item("shed", s.shed)?;
        d.set_item("pure_acks", s.pure_acks)?;
        d.set_item("dns_prefiltered", s.dns_prefiltered)?;
        d.set_item("other_share", s.other_share)?;
        d.set_item("forced", s.forced)?;
        d.set_item("forced_shed", s.forced_shed)?;
        d.set_item("frags_shed", s.frags_shed)?;
        d.set_item("flows", s.flows)?;
        d.set_item("flows_open", open)?;
        d.set_item("flows_evicted", s.flows_evicted)?;
        d.set_item("learned", s.learned)?;
        d.set_item("learned_evicted", s.learned_evicted)?;
        d.set_item("queue_peak", s.queue_peak)?;
        d.set_item("flows_anchor", s.flows_anchor)?;
        d.set_item("flows_port", s.flows_port)?;
        d.set_item("flows_learned", s.flows_learned)?;
        d.set_item("dns_muted", s.dns_muted)?;
        d.set_item("bad_meta", s.bad_meta)?;
        Ok(d)
    }

    fn addr_of(raw: &[u8]) -> PyResult<crate::decode::Addr> {
        let mut b = [0u8; 16];
        match raw.len() {
            4 | 16 => b[..raw.len()].copy_from_slice(raw),
            n => {
                return Err(pyo3::exceptions::PyValueError::new_err(format!(
                    "an address is 4 or 16 bytes, not {n}"
                )))
            }
        }
        Ok(crate::decode::Addr {
            v6: raw.len() == 16,
            b,
        })
    }

    type Counted = (u64, u64, bool, f64, f64, Vec<String>);

    /// The reading half of a `Scanner`: the file and the classifier.
    struct Inner {
        reader: CaptureReader,
        cls: Classifier,
        finished: bool,
    }

    impl Inner {
        /// Up to `max` ready records into `out`, after reading at most `read` more frames.
        fn fill(&mut self, out: &mut Vec<Record>, max: usize, read: usize) {
            let mut budget = read.max(1);
            loop {
                self.cls.drain(out, max);
                if out.len() >= max || self.finished || budget == 0 {
                    break;
                }
                for _ in 0..budget.min(4096) {
                    budget -= 1;
                    match self.reader.next_frame() {
                        Some(f) => {
                            let (ts, lt) = (f.ts, f.linktype);
                            let data = f.data;
                            self.cls.push(ts, lt, data);
                        }
                        None => {
                            self.cls.finish();
                            self.finished = true;
                            break;
                        }
                    }
                }
            }
            if self.finished {
                self.cls.drain(out, max);
            }
        }

        fn done(&self) -> bool {
            self.finished && self.cls.queue_len() == 0
        }
    }

    /// One batch of a read-ahead thread, with where the file stood after it.
    struct Ahead {
        recs: Vec<Record>,
        position: u64,
        packets: u64,
        done: bool,
    }

    /// The reading half on a thread of its own, `AHEAD_BATCHES` batches ahead of Python.
    struct Running {
        rx: Receiver<Ahead>,
        stop: Arc<AtomicBool>,
        thread: JoinHandle<Box<Inner>>,
    }

    const AHEAD_BATCHES: usize = 4;

    /// Reads one capture file and yields the frames that can hold evidence, in batches.
    ///
    /// With `read_ahead`, the file is read and classified on a thread of its own while Python
    /// works on the batches already handed out (two cores: the core's share of the time
    /// leaves the critical path). The classifier takes no input from Python but the
    /// alert-storm mutes: the first `mute` (or `stats`, `warning`, ...) stops the thread and
    /// keeps the batches it had made, to be handed out first; from then on the file is
    /// read on demand, so a mute applies from the next frame read, and the records
    /// classified before it reach Python, as without read-ahead they would have been
    /// counted by the mute. `storm.py` hands the core the names it folds from those
    /// (`except_key`), so each name is counted by one side only.
    #[pyclass(module = "detector._core", unsendable)]
    struct Scanner {
        inner: Option<Box<Inner>>,
        running: Option<Running>,
        pending: VecDeque<Ahead>,
        read_ahead: bool,
        position: u64,
        packets: u64,
        format: &'static str,
    }

    impl Scanner {
        /// Stop the read-ahead thread (if any) and keep what it made; the reading half is
        /// here again.
        fn settle(&mut self) -> &mut Inner {
            self.read_ahead = false;
            if let Some(r) = self.running.take() {
                r.stop.store(true, Ordering::Relaxed);
                while let Ok(b) = r.rx.recv() {
                    self.pending.push_back(b);
                }
                match r.thread.join() {
                    Ok(inner) => self.inner = Some(inner),
                    Err(e) => std::panic::resume_unwind(e),
                }
            }
            self.inner.as_mut().expect("the reading half is here")
        }

        fn start(&mut self, max: usize, read: usize) {
            let Some(mut inner) = self.inner.take() else {
                return;
            };
            let (tx, rx) = sync_channel::<Ahead>(AHEAD_BATCHES);
            let stop = Arc::new(AtomicBool::new(false));
            let halt = stop.clone();
            let thread = std::thread::spawn(move || {
                while !halt.load(Ordering::Relaxed) {
                    let mut recs = Vec::with_capacity(max.min(65_536));
                    inner.fill(&mut recs, max, read);
                    let done = inner.done();
                    let b = Ahead {
                        recs,
                        position: inner.reader.position(),
                        packets: inner.cls.stats.packets,
                        done,
                    };
                    if tx.send(b).is_err() || done {
                        break;
                    }
                }
                inner
            });
            self.running = Some(Running { rx, stop, thread });
        }
    }

    #[pymethods]
    impl Scanner {
        #[new]
        #[pyo3(signature = (path, anchors, tcp_ports, udp_ports, flow_head=16, max_flows=200_000, part=None, tails=None, read_ahead=false))]
        #[allow(clippy::too_many_arguments)]
        fn new(
            path: &str,
            anchors: Option<Vec<Vec<u8>>>,
            tcp_ports: Vec<u16>,
            udp_ports: Vec<u16>,
            flow_head: u32,
            max_flows: usize,
            part: Option<(u32, u32)>,
            tails: Option<Vec<Vec<Vec<u8>>>>,
            read_ahead: bool,
        ) -> PyResult<Self> {
            let cfg = config(
                anchors, tails, tcp_ports, udp_ports, flow_head, max_flows, part,
            )?;
            let reader = CaptureReader::open(path)
                .map_err(|e| PyOSError::new_err(format!("{path}: {e}")))?;
            let format = reader.format;
            Ok(Scanner {
                inner: Some(Box::new(Inner {
                    reader,
                    cls: Classifier::new(cfg),
                    finished: false,
                })),
                running: None,
                pending: VecDeque::new(),
                read_ahead,
                position: 0,
                packets: 0,
                format,
            })
        }

        /// Up to `max` records `(ts, linktype, frame, counters|None, learn_only)`, after reading
        /// at most `read` more frames of the file (so progress can be shown): the list may be
        /// empty before the end; `done` says when the file is through.
        #[pyo3(signature = (max, read=262_144))]
        fn next_batch<'py>(
            &mut self,
            py: Python<'py>,
            max: usize,
            read: usize,
        ) -> PyResult<Bound<'py, PyList>> {
            let max = max.max(1);
            if self.read_ahead && self.running.is_none() && self.pending.is_empty() {
                self.start(max, read);
            }
            let got = match self.pending.pop_front() {
                Some(b) => Some(b),
                None => match self.running.take() {
                    Some(r) => {
                        let (r, got) = py.detach(move || {
                            let got = r.rx.recv().ok();
                            (r, got)
                        });
                        self.running = Some(r);
                        got
                    }
                    None => None,
                },
            };
            if let Some(b) = got {
                self.position = b.position;
                self.packets = b.packets;
                if b.done {
                    self.settle();
                }
                return to_py(py, b.recs);
            }
            if self.running.is_some() {
                self.settle(); // the thread ended without a last batch (it cannot, but be safe)
            }
            let inner = self.inner.as_mut().expect("the reading half is here");
            let recs = py.detach(|| {
                let mut out = Vec::with_capacity(max.min(65_536));
                inner.fill(&mut out, max, read);
                out
            });
            self.position = inner.reader.position();
            self.packets = inner.cls.stats.packets;
            to_py(py, recs)
        }

        /// True once the file is read and every record handed out.
        #[getter]
        fn done(&self) -> bool {
            self.running.is_none()
                && self.pending.is_empty()
                && self.inner.as_ref().is_some_and(|i| i.done())
        }

        /// Bytes of the capture read so far (of the decompressed stream for gzip), as of the
        /// last batch handed out.
        #[getter]
        fn position(&self) -> u64 {
            self.position
        }

        /// Frames read so far, as of the last batch handed out.
        #[getter]
        fn packets(&self) -> u64 {
            self.packets
        }

        /// The classifier's counters (stops a read-ahead: call it at the end).
        fn stats<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
            let inner = self.settle();
            stats_dict(py, &inner.cls.stats, inner.cls.flows_open())
        }

        /// Alert-storm muting (`mute.rs`): count, not hand up, the plain DNS questions of
        /// `client` (4 or 16 address bytes) under `suffixes` until `until`, except names
        /// whose `name_key` is in `except`; false if it cannot (table full, no suffix).
        #[pyo3(signature = (client, key, until, suffixes, except, sample, repeats=false))]
        #[allow(clippy::too_many_arguments)]
        fn mute(
            &mut self,
            client: &[u8],
            key: u64,
            until: f64,
            suffixes: Vec<Vec<u8>>,
            except: Vec<u64>,
            sample: usize,
            repeats: bool,
        ) -> PyResult<bool> {
            let client = addr_of(client)?;
            Ok(self
                .settle()
                .cls
                .mutes
                .add(client, key, until, suffixes, except, sample, repeats))
        }

        /// End a mute: `(hits, distinct, exact, first, last, sample)` or None if it counted nothing.
        fn take_mute(&mut self, client: &[u8], key: u64) -> PyResult<Option<Counted>> {
            let client = addr_of(client)?;
            Ok(self
                .settle()
                .cls
                .mutes
                .take(client, key)
                .map(|c| (c.hits, c.distinct, c.exact, c.first, c.last, c.sample)))
        }

        #[getter]
        fn warning(&mut self) -> Option<String> {
            let reader = &self.settle().reader;
            let z = if reader.decompression_bomb() {
                Some("compressed data expands more than 200:1: a decompression bomb? rest skipped")
            } else {
                reader
                    .compressed_damage()
                    .then_some("compressed data ends early or is corrupt")
            };
            match (reader.warning.clone(), z) {
                (Some(w), Some(z)) => Some(format!("{z}; {w}")),
                (Some(w), None) => Some(w),
                (None, Some(z)) => Some(z.to_string()),
                (None, None) => None,
            }
        }

        #[getter]
        fn format(&self) -> &'static str {
            self.format
        }

        #[getter]
        fn compressed(&mut self) -> bool {
            self.settle().reader.compressed
        }

        #[getter]
        fn records(&mut self) -> u64 {
            self.settle().reader.records
        }
    }

    /// The same classifier fed frames by the caller (live capture batches).
    #[pyclass(module = "detector._core", name = "Classifier")]
    struct PyClassifier {
        cls: Classifier,
    }

    #[pymethods]
    impl PyClassifier {
        #[new]
        #[pyo3(signature = (anchors, tcp_ports, udp_ports, flow_head=16, max_flows=200_000, tails=None))]
        fn new(
            anchors: Option<Vec<Vec<u8>>>,
            tcp_ports: Vec<u16>,
            udp_ports: Vec<u16>,
            flow_head: u32,
            max_flows: usize,
            tails: Option<Vec<Vec<Vec<u8>>>>,
        ) -> PyResult<Self> {
            let cfg = config(
                anchors, tails, tcp_ports, udp_ports, flow_head, max_flows, None,
            )?;
            Ok(PyClassifier {
                cls: Classifier::new(cfg),
            })
        }

        /// Feed `(ts, linktype, frame)` tuples; returns the records now ready.
        fn push_many<'py>(
            &mut self,
            py: Python<'py>,
            frames: Vec<(f64, u32, Vec<u8>)>,
        ) -> PyResult<Bound<'py, PyList>> {
            let recs = py.detach(|| {
                for (ts, lt, data) in &frames {
                    self.cls.push(*ts, *lt, data);
                }
                let mut out = Vec::new();
                self.cls.drain(&mut out, usize::MAX);
                out
            });
            to_py(py, recs)
        }

        /// Live, one capture handle: a libpcap batch as it comes (`pkts`, the frames end to
        /// end; `meta`, per frame four native-endian u32: seconds, microseconds, offset in
        /// `pkts`, captured length), so no frame becomes a Python object before the
        /// classifier has judged it. Returns the records now ready.
        fn push_raw<'py>(
            &mut self,
            py: Python<'py>,
            linktype: u32,
            pkts: &[u8],
            meta: &[u8],
        ) -> PyResult<Bound<'py, PyList>> {
            let recs = py.detach(|| {
                self.cls.push_batch(linktype, pkts, meta);
                let mut out = Vec::new();
                self.cls.drain(&mut out, usize::MAX);
                out
            });
            to_py(py, recs)
        }

        /// Live, between packets: the capture clock moved to `now` (frames waiting longer
        /// than the core's bound are released).
        fn tick<'py>(&mut self, py: Python<'py>, now: f64) -> PyResult<Bound<'py, PyList>> {
            self.cls.tick(now);
            let mut out = Vec::new();
            self.cls.drain(&mut out, usize::MAX);
            to_py(py, out)
        }

        /// End of input: everything still waiting.
        fn finish<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
            self.cls.finish();
            let mut out = Vec::new();
            self.cls.drain(&mut out, usize::MAX);
            to_py(py, out)
        }

        fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
            stats_dict(py, &self.cls.stats, self.cls.flows_open())
        }
    }

    #[pymodule]
    fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add_class::<Scanner>()?;
        m.add_class::<PyClassifier>()?;
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        Ok(())
    }
}
