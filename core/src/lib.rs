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

    /// Reads one capture file and yields the frames that can hold evidence, in batches.
    #[pyclass(module = "detector._core", unsendable)]
    struct Scanner {
        reader: CaptureReader,
        cls: Classifier,
        finished: bool,
    }

    #[pymethods]
    impl Scanner {
        #[new]
        #[pyo3(signature = (path, anchors, tcp_ports, udp_ports, flow_head=16, max_flows=200_000, part=None, tails=None))]
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
        ) -> PyResult<Self> {
            let cfg = config(
                anchors, tails, tcp_ports, udp_ports, flow_head, max_flows, part,
            )?;
            let reader = CaptureReader::open(path)
                .map_err(|e| PyOSError::new_err(format!("{path}: {e}")))?;
            Ok(Scanner {
                reader,
                cls: Classifier::new(cfg),
                finished: false,
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
            let recs = py.detach(|| {
                let mut out = Vec::with_capacity(max.min(65_536));
                let mut budget = read.max(1);
                loop {
                    self.cls.drain(&mut out, max);
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
                    self.cls.drain(&mut out, max);
                }
                out
            });
            to_py(py, recs)
        }

        /// True once the file is read and every record handed out.
        #[getter]
        fn done(&self) -> bool {
            self.finished && self.cls.queue_len() == 0
        }

        /// Bytes of the capture read so far (of the decompressed stream for gzip).
        #[getter]
        fn position(&self) -> u64 {
            self.reader.position()
        }

        fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
            stats_dict(py, &self.cls.stats, self.cls.flows_open())
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
            Ok(self.cls.mutes.add(
                addr_of(client)?,
                key,
                until,
                suffixes,
                except,
                sample,
                repeats,
            ))
        }

        /// End a mute: `(hits, distinct, exact, first, last, sample)` or None if it counted nothing.
        fn take_mute(&mut self, client: &[u8], key: u64) -> PyResult<Option<Counted>> {
            Ok(self
                .cls
                .mutes
                .take(addr_of(client)?, key)
                .map(|c| (c.hits, c.distinct, c.exact, c.first, c.last, c.sample)))
        }

        #[getter]
        fn warning(&self) -> Option<String> {
            let z = if self.reader.decompression_bomb() {
                Some("compressed data expands more than 200:1: a decompression bomb? rest skipped")
            } else {
                self.reader
                    .compressed_damage()
                    .then_some("compressed data ends early or is corrupt")
            };
            match (self.reader.warning.clone(), z) {
                (Some(w), Some(z)) => Some(format!("{z}; {w}")),
                (Some(w), None) => Some(w),
                (None, Some(z)) => Some(z.to_string()),
                (None, None) => None,
            }
        }

        #[getter]
        fn format(&self) -> &'static str {
            self.reader.format
        }

        #[getter]
        fn compressed(&self) -> bool {
            self.reader.compressed
        }

        #[getter]
        fn records(&self) -> u64 {
            self.reader.records
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
