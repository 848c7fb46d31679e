//! The in-process transport of the CPU backend: ranks are threads, every message really copies
//! its bytes from one rank's memory to another's, and every wait has a timeout, so a failed or
//! missing peer becomes an error on the waiting rank instead of a hang.
//!
//! Point-to-point messages are tagged; a receive takes the message with its tag from its peer
//! and keeps others for later, so ranks may post in different orders. Collectives are built on
//! point-to-point in a fixed order (ring all-reduce, ring all-gather, linear broadcast), which
//! makes them bitwise deterministic.

use std::collections::{BTreeMap, VecDeque};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use crate::RuntimeError;

/// A message tag: what the payload is (chosen by the caller, equal on both sides).
pub type Tag = u64;

pub(crate) struct Message {
    pub(crate) tag: Tag,
    pub(crate) payload: Payload,
}

/// What arrives from a peer: a message, or what was wrong with its stream (a frame no message
/// of the program can be), after which nothing more comes.
pub(crate) type Delivery = Result<Message, String>;

/// What a message carries: values (always, over TCP), or between threads a tensor whose
/// values are a device copy made for the message, so they never pass through the host.
pub enum Payload {
    Values(Vec<f32>),
    Tensor(crate::tensor::Tensor),
}

impl Payload {
    /// The values, on the host.
    pub fn into_values(self) -> Vec<f32> {
        match self {
            Payload::Values(v) => v,
            Payload::Tensor(t) => t.into_data(),
        }
    }

    /// The message as rows of `cols` values (where they are); what is wrong if it is not.
    pub fn into_rows(self, cols: usize) -> Result<crate::tensor::Tensor, String> {
        match self {
            Payload::Tensor(t) if t.cols() == cols => Ok(t),
            Payload::Tensor(t) => Err(format!(
                "a tensor of shape {:?} is not rows of {cols}",
                t.shape()
            )),
            Payload::Values(v) if cols > 0 && v.len() % cols == 0 => {
                crate::tensor::Tensor::from_vec(&[v.len() / cols, cols], v)
                    .map_err(|e| e.to_string())
            }
            Payload::Values(v) => Err(format!("{} values are not rows of {cols}", v.len())),
        }
    }
}

/// Where a rank's messages to one peer go: a channel (ranks as threads of one process) or a
/// TCP stream (ranks as processes, `crate::rendezvous`).
pub(crate) enum Sink {
    Channel(Sender<Delivery>),
    Tcp(std::net::TcpStream),
}

/// One rank's end of the transport.
pub struct Endpoint {
    rank: u32,
    senders: Vec<Sink>,
    receivers: Vec<Receiver<Delivery>>,
    /// Messages that arrived before they were asked for, per peer and tag.
    pending: Vec<BTreeMap<Tag, VecDeque<Payload>>>,
    timeout: Duration,
    /// Messages sent so far (each a wake-up of its receiver).
    sent: std::sync::atomic::AtomicU64,
}

/// Builds the endpoints of `n` ranks, each waiting at most `timeout` for a message.
pub fn fabric(n: usize, timeout: Duration) -> Vec<Endpoint> {
    // channels[src][dst]
    let mut txs: Vec<Vec<Option<Sender<Delivery>>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    let mut rxs: Vec<Vec<Option<Receiver<Delivery>>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    for src in 0..n {
        for dst in 0..n {
            let (tx, rx) = channel();
            txs[src][dst] = Some(tx);
            rxs[dst][src] = Some(rx);
        }
    }
    txs.into_iter()
        .zip(rxs)
        .enumerate()
        .map(|(rank, (tx, rx))| Endpoint {
            rank: rank as u32,
            senders: tx.into_iter().flatten().map(Sink::Channel).collect(),
            receivers: rx.into_iter().flatten().collect(),
            pending: (0..n).map(|_| BTreeMap::new()).collect(),
            timeout,
            sent: 0.into(),
        })
        .collect()
}

/// Chunk `c` of `len` values split over a ring of `n`: the ring all-reduce's unit, which the
/// collectives between threads and the distributed optimizer's shards follow, so that their
/// sums are the ring's bit for bit.
pub fn ring_chunk(len: usize, n: usize, c: usize) -> std::ops::Range<usize> {
    hetpar_ir::shard::even_part(len, n, c)
}

impl Endpoint {
    /// An endpoint from its sinks and receivers, one of each per rank (itself included).
    pub(crate) fn from_parts(
        rank: u32,
        senders: Vec<Sink>,
        receivers: Vec<Receiver<Delivery>>,
        timeout: Duration,
    ) -> Endpoint {
        let n = senders.len();
        Endpoint {
            rank,
            senders,
            receivers,
            pending: (0..n).map(|_| BTreeMap::new()).collect(),
            timeout,
            sent: 0.into(),
        }
    }
}

impl Endpoint {
    pub fn rank(&self) -> u32 {
        self.rank
    }

    /// The messages this endpoint has sent.
    pub fn messages_sent(&self) -> u64 {
        self.sent.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn size(&self) -> usize {
        self.senders.len()
    }

    /// Whether every rank of `group` is a thread of this process (an in-process channel).
    pub fn all_local(&self, group: &[u32]) -> bool {
        group
            .iter()
            .all(|&r| matches!(self.senders.get(r as usize), Some(Sink::Channel(_))))
    }

    /// Sends a copy of `data` to `to`.
    pub fn send(&self, to: u32, tag: Tag, data: &[f32]) -> Result<(), RuntimeError> {
        self.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tx = self
            .senders
            .get(to as usize)
            .ok_or(RuntimeError::PeerGone {
                rank: self.rank,
                peer: to,
            })?;
        let gone = RuntimeError::PeerGone {
            rank: self.rank,
            peer: to,
        };
        match tx {
            Sink::Channel(tx) => tx
                .send(Ok(Message {
                    tag,
                    payload: Payload::Values(data.to_vec()),
                }))
                .map_err(|_| gone),
            Sink::Tcp(stream) => {
                use std::io::Write as _;
                let mut frame = Vec::with_capacity(16 + data.len() * 4);
                frame.extend_from_slice(&tag.to_le_bytes());
                frame.extend_from_slice(&(data.len() as u64).to_le_bytes());
                for v in data {
                    frame.extend_from_slice(&v.to_le_bytes());
                }
                let mut w: &std::net::TcpStream = stream;
                w.write_all(&frame).map_err(|_| gone)
            }
        }
    }

    /// Receives the message tagged `tag` from `from`, waiting at most the timeout.
    pub fn recv(&mut self, from: u32, tag: Tag) -> Result<Vec<f32>, RuntimeError> {
        Ok(self.recv_payload(from, tag)?.into_values())
    }

    /// Sends `t` to `to`. Between threads, values on a device travel as a device copy made
    /// here (the receiver owns it, as it would own received bytes); otherwise as values.
    pub fn send_tensor(
        &self,
        to: u32,
        tag: Tag,
        t: &crate::tensor::Tensor,
    ) -> Result<(), RuntimeError> {
        if let (Some(Sink::Channel(tx)), Some(copy)) =
            (self.senders.get(to as usize), t.device_copy()?)
        {
            self.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return tx
                .send(Ok(Message {
                    tag,
                    payload: Payload::Tensor(copy),
                }))
                .map_err(|_| RuntimeError::PeerGone {
                    rank: self.rank,
                    peer: to,
                });
        }
        self.send(to, tag, t.data())
    }

    /// Receives the message tagged `tag` from `from` as it came: values or a tensor.
    pub fn recv_payload(&mut self, from: u32, tag: Tag) -> Result<Payload, RuntimeError> {
        let f = from as usize;
        let gone = RuntimeError::PeerGone {
            rank: self.rank,
            peer: from,
        };
        if let Some(p) = self
            .pending
            .get_mut(f)
            .and_then(|m| m.get_mut(&tag))
            .and_then(VecDeque::pop_front)
        {
            return Ok(p);
        }
        let start = Instant::now();
        loop {
            let left = self.timeout.saturating_sub(start.elapsed());
            let rx = self.receivers.get(f).ok_or(gone.clone())?;
            match rx.recv_timeout(left) {
                Ok(Ok(m)) if m.tag == tag => return Ok(m.payload),
                Ok(Ok(m)) => self.pending[f]
                    .entry(m.tag)
                    .or_default()
                    .push_back(m.payload),
                Ok(Err(what)) => {
                    return Err(RuntimeError::BadStream {
                        rank: self.rank,
                        peer: from,
                        what,
                    })
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(RuntimeError::Timeout {
                        rank: self.rank,
                        peer: from,
                        what: format!("message {tag}"),
                        waited_ms: self.timeout.as_millis() as u64,
                    })
                }
                Err(RecvTimeoutError::Disconnected) => return Err(gone),
            }
        }
    }

    /// Sums `buf` over `group` (ranks in a fixed order; this rank among them) with a ring:
    /// reduce-scatter then all-gather, 2 (n - 1) / n of the buffer sent per rank. Every rank
    /// ends with the same bits.
    pub fn all_reduce_sum(
        &mut self,
        group: &[u32],
        tag: Tag,
        buf: &mut [f32],
    ) -> Result<(), RuntimeError> {
        let len = buf.len();
        self.all_reduce_sum_segments(group, tag, buf, &[len])
    }

    /// [`Endpoint::all_reduce_sum`] of several tensors laid end to end in `buf` (`segments`:
    /// their lengths) as one bucket: each ring step sends every tensor's chunk of that step in
    /// one message, so each value is summed in the order its tensor's own ring sums it (the
    /// same bits) with `2 (n - 1)` messages in all instead of that many per tensor.
    pub fn all_reduce_sum_segments(
        &mut self,
        group: &[u32],
        tag: Tag,
        buf: &mut [f32],
        segments: &[usize],
    ) -> Result<(), RuntimeError> {
        let n = group.len();
        let Some(me) = group.iter().position(|&r| r == self.rank) else {
            return Ok(());
        };
        if n <= 1 {
            return Ok(());
        }
        // Chunk c of the bucket: chunk c of every segment.
        let chunk = |c: usize| -> Vec<std::ops::Range<usize>> {
            let mut at = 0;
            segments
                .iter()
                .map(|&len| {
                    let r = ring_chunk(len, n, c);
                    let out = at + r.start..at + r.end;
                    at += len;
                    out
                })
                .collect()
        };
        // One range (a single tensor's ring) is sent as it lies.
        fn gather<'b>(
            buf: &'b [f32],
            rs: &[std::ops::Range<usize>],
        ) -> std::borrow::Cow<'b, [f32]> {
            match rs {
                [r] => std::borrow::Cow::Borrowed(&buf[r.clone()]),
                _ => rs
                    .iter()
                    .flat_map(|r| buf[r.clone()].iter().copied())
                    .collect(),
            }
        }
        let next = group[(me + 1) % n];
        let prev = group[(me + n - 1) % n];
        for step in 0..n - 1 {
            let (send_c, recv_c) = ((me + n - step) % n, (me + n - step - 1) % n);
            self.send(next, tag_of(tag, step as u64), &gather(buf, &chunk(send_c)))?;
            let got = self.recv(prev, tag_of(tag, step as u64))?;
            let into = chunk(recv_c);
            if got.len() != into.iter().map(|r| r.len()).sum::<usize>() {
                return Err(RuntimeError::InvalidProgram(
                    "a peer's bucket differs".into(),
                ));
            }
            let mut at = 0;
            for r in into {
                let k = r.len();
                for (x, y) in buf[r].iter_mut().zip(&got[at..at + k]) {
                    *x += y;
                }
                at += k;
            }
        }
        for step in 0..n - 1 {
            let (send_c, recv_c) = ((me + 1 + n - step) % n, (me + n - step) % n);
            let t = tag_of(tag, (n + step) as u64);
            self.send(next, t, &gather(buf, &chunk(send_c)))?;
            let got = self.recv(prev, t)?;
            let mut at = 0;
            for r in chunk(recv_c) {
                let k = r.len();
                let part = got.get(at..at + k).ok_or_else(|| {
                    RuntimeError::InvalidProgram("a peer's bucket differs".into())
                })?;
                buf[r].copy_from_slice(part);
                at += k;
            }
        }
        Ok(())
    }

    /// Every rank of `group` contributes `mine`; all end with the parts in group order.
    pub fn all_gather(
        &mut self,
        group: &[u32],
        tag: Tag,
        mine: &[f32],
    ) -> Result<Vec<Vec<f32>>, RuntimeError> {
        let Some(me) = group.iter().position(|&r| r == self.rank) else {
            return Ok(Vec::new());
        };
        let n = group.len();
        let mut parts: Vec<Option<Vec<f32>>> = vec![None; n];
        parts[me] = Some(mine.to_vec());
        let next = group[(me + 1) % n];
        let prev = group[(me + n - 1) % n];
        for step in 0..n.saturating_sub(1) {
            let send_i = (me + n - step) % n;
            let recv_i = (me + n - step - 1) % n;
            let data = parts[send_i].clone().unwrap_or_default();
            self.send(next, tag_of(tag, step as u64), &data)?;
            parts[recv_i] = Some(self.recv(prev, tag_of(tag, step as u64))?);
        }
        Ok(parts.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// Every rank of `group` contributes `parts[i]` to member `i`'s piece; each ends with the
    /// sum of the contributions to its own piece, added in group order (so the bits do not
    /// depend on arrival order).
    pub fn reduce_scatter(
        &mut self,
        group: &[u32],
        tag: Tag,
        parts: &[Vec<f32>],
    ) -> Result<Vec<f32>, RuntimeError> {
        let Some(me) = group.iter().position(|&r| r == self.rank) else {
            return Ok(Vec::new());
        };
        for (i, &r) in group.iter().enumerate() {
            if i != me {
                self.send(r, tag, &parts[i])?;
            }
        }
        let mut sum = vec![0.0f32; parts[me].len()];
        for (i, &r) in group.iter().enumerate() {
            let got = if i == me {
                parts[me].clone()
            } else {
                self.recv(r, tag)?
            };
            if got.len() != sum.len() {
                return Err(RuntimeError::InvalidProgram(format!(
                    "rank {}: reduce-scatter piece of {} values from rank {r}, expected {}",
                    self.rank,
                    got.len(),
                    sum.len()
                )));
            }
            for (s, g) in sum.iter_mut().zip(got) {
                *s += g;
            }
        }
        Ok(sum)
    }

    /// Every rank of `group` contributes `parts[i]` to member `i`'s piece; each ends with the
    /// sum of the contributions to its own piece added as the ring of
    /// [`Endpoint::all_reduce_sum`] adds its chunk: its own first, then the next members' in
    /// ring order. With the ring's chunks as pieces, each member's piece has the all-reduce's
    /// bits (the distributed optimizer's reduce-scatter).
    pub fn reduce_scatter_ring(
        &mut self,
        group: &[u32],
        tag: Tag,
        parts: &[Vec<f32>],
    ) -> Result<Vec<f32>, RuntimeError> {
        let Some(me) = group.iter().position(|&r| r == self.rank) else {
            return Ok(Vec::new());
        };
        let n = group.len();
        for (i, &r) in group.iter().enumerate() {
            if i != me {
                self.send(r, tag, &parts[i])?;
            }
        }
        let mut sum = parts[me].clone();
        for k in 1..n {
            let r = group[(me + k) % n];
            let got = self.recv(r, tag)?;
            if got.len() != sum.len() {
                return Err(RuntimeError::InvalidProgram(format!(
                    "rank {}: reduce-scatter piece of {} values from rank {r}, expected {}",
                    self.rank,
                    got.len(),
                    sum.len()
                )));
            }
            for (s, g) in sum.iter_mut().zip(got) {
                *s += g;
            }
        }
        Ok(sum)
    }

    /// The root's `buf` to every rank of `group`.
    pub fn broadcast(
        &mut self,
        group: &[u32],
        root: u32,
        tag: Tag,
        buf: &mut Vec<f32>,
    ) -> Result<(), RuntimeError> {
        if self.rank == root {
            for &r in group.iter().filter(|&&r| r != root) {
                self.send(r, tag, buf)?;
            }
        } else if group.contains(&self.rank) {
            *buf = self.recv(root, tag)?;
        }
        Ok(())
    }
}

/// Sub-tags of one collective's steps.
pub(crate) fn tag_of(tag: Tag, step: u64) -> Tag {
    tag.wrapping_mul(1 << 16).wrapping_add(step)
}
