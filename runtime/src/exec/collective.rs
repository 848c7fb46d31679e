//! Collectives on device tensors between ranks that are threads of one process: every message
//! a device-to-device copy (`Endpoint::send_tensor`), every sum the backend's `add`, in the
//! order the transport's host ring adds, so the device path gives the host path's bits.
//! `comm.rs` takes this path when the arithmetic is on a device and every peer is a thread;
//! otherwise the host collectives of `crate::transport`.

use super::math::Math;
use crate::tensor::Tensor;
use crate::transport::{tag_of, Endpoint, Payload, Tag};
use crate::RuntimeError;

/// Whether a collective over `group` runs on the device: the same answer on every member
/// (they share the backend and the process).
pub fn on_device(mx: &dyn Math, net: &Endpoint, group: &[u32]) -> bool {
    mx.on_device() && net.all_local(group)
}

fn received(p: Payload, cols: usize) -> Result<Tensor, RuntimeError> {
    p.into_rows(cols)
        .map_err(|e| RuntimeError::InvalidProgram(format!("a peer sent {e}")))
}

/// Every member's `x` (rows may differ, columns may not), in group order.
pub fn all_gather(
    net: &mut Endpoint,
    group: &[u32],
    tag: Tag,
    x: &Tensor,
) -> Result<Vec<Tensor>, RuntimeError> {
    let me = net.rank();
    let t = tag_of(tag, 0);
    for &r in group.iter().filter(|&&r| r != me) {
        net.send_tensor(r, t, x)?;
    }
    group
        .iter()
        .map(|&r| {
            if r == me {
                Ok(x.clone())
            } else {
                received(net.recv_payload(r, t)?, x.cols())
            }
        })
        .collect()
}

/// The sum of every member's `x`: chunk `c` of the flat values added member by member from
/// member `c` on, as the host ring adds it.
pub fn all_reduce(
    mx: &dyn Math,
    net: &mut Endpoint,
    group: &[u32],
    tag: Tag,
    x: Tensor,
) -> Result<Tensor, RuntimeError> {
    let n = group.len();
    if n <= 1 {
        return Ok(x);
    }
    let parts = all_gather(net, group, tag, &x)?;
    if let Some(p) = parts.iter().find(|p| p.shape() != x.shape()) {
        return Err(RuntimeError::InvalidProgram(format!(
            "all-reduce of shape {:?} met a part of shape {:?}",
            x.shape(),
            p.shape()
        )));
    }
    let len = x.numel();
    let mut sums = Vec::with_capacity(n);
    let mut ranges = Vec::with_capacity(n);
    for c in 0..n {
        let mut acc = parts[c].clone();
        for k in 1..n {
            acc = mx.add(&acc, &parts[(c + k) % n])?;
        }
        sums.push(acc);
        ranges.push(crate::transport::ring_chunk(len, n, c));
    }
    mx.select_ranges(&sums, &ranges)
}

/// Member `i` gets the sum of every member's `pieces[i]`, added in group order from zero.
pub fn reduce_scatter(
    mx: &dyn Math,
    net: &mut Endpoint,
    group: &[u32],
    tag: Tag,
    pieces: Vec<Tensor>,
) -> Result<Tensor, RuntimeError> {
    let me = net.rank();
    let Some(mine) = group.iter().position(|&r| r == me) else {
        return Err(RuntimeError::InvalidProgram(format!(
            "rank {me} is not in group {group:?}"
        )));
    };
    let t = tag_of(tag, 0);
    for (i, &r) in group.iter().enumerate() {
        if i != mine {
            net.send_tensor(r, t, &pieces[i])?;
        }
    }
    let shape = pieces[mine].shape().to_vec();
    let mut acc = Tensor::zeros(&shape);
    for (i, &r) in group.iter().enumerate() {
        let part = if i == mine {
            pieces[mine].clone()
        } else {
            received(net.recv_payload(r, t)?, pieces[mine].cols())?
        };
        if part.shape() != shape.as_slice() {
            return Err(RuntimeError::InvalidProgram(format!(
                "rank {me}: a reduce-scatter piece of shape {:?} from rank {r}, expected {shape:?}",
                part.shape()
            )));
        }
        acc = mx.add(&acc, &part)?;
    }
    Ok(acc)
}

/// Member `i` gets the sum of every member's `pieces[i]`, added as the host ring adds its
/// chunk `i` (`Endpoint::reduce_scatter_ring`): its own first, then the next members' in ring
/// order.
pub fn reduce_scatter_ring(
    mx: &dyn Math,
    net: &mut Endpoint,
    group: &[u32],
    tag: Tag,
    pieces: Vec<Tensor>,
) -> Result<Tensor, RuntimeError> {
    let me = net.rank();
    let Some(mine) = group.iter().position(|&r| r == me) else {
        return Err(RuntimeError::InvalidProgram(format!(
            "rank {me} is not in group {group:?}"
        )));
    };
    let (n, t) = (group.len(), tag_of(tag, 0));
    for (i, &r) in group.iter().enumerate() {
        if i != mine {
            net.send_tensor(r, t, &pieces[i])?;
        }
    }
    let mut acc = pieces[mine].clone();
    for k in 1..n {
        let r = group[(mine + k) % n];
        let part = received(net.recv_payload(r, t)?, acc.cols())?;
        if part.shape() != acc.shape() {
            return Err(RuntimeError::InvalidProgram(format!(
                "rank {me}: a reduce-scatter piece of shape {:?} from rank {r}, expected {:?}",
                part.shape(),
                acc.shape()
            )));
        }
        acc = mx.add(&acc, &part)?;
    }
    Ok(acc)
}

/// Collectives over fixed groups with equal parts, NCCL's shape: for ranks as processes, each
/// with its own GPU (`crate::cuda::nccl::NcclGroups`). Unequal parts (sequence-parallel rows
/// that do not divide evenly) are padded by [`gather_parts`] and [`reduce_scatter_parts`].
pub trait GroupCollectives: Send {
    /// Whether this runs collectives over `group`.
    fn covers(&self, group: &[u32]) -> bool;
    /// Every member's `x` (all of one shape) stacked by rows, in group order.
    fn all_gather(&self, group: &[u32], x: &Tensor) -> Result<Tensor, RuntimeError>;
    /// The sum of every member's `x`.
    fn all_reduce(&self, group: &[u32], x: Tensor) -> Result<Tensor, RuntimeError>;
    /// `x`'s rows in as many equal parts as members: member `i` gets the sum of parts `i`.
    fn reduce_scatter(&self, group: &[u32], x: &Tensor) -> Result<Tensor, RuntimeError>;
    /// Whether [`GroupCollectives::exchange`] is offered (a communicator of every rank).
    fn exchanges(&self) -> bool {
        false
    }
    /// Point-to-point messages as one call: `sends` (to rank, tensor) and `recvs` (from rank,
    /// shape), the receipts in `recvs`' order. Between one pair, messages match in order.
    fn exchange(
        &self,
        sends: &[(u32, &Tensor)],
        recvs: &[(u32, [usize; 2])],
    ) -> Result<Vec<Tensor>, RuntimeError> {
        let _ = (sends, recvs);
        Err(RuntimeError::InvalidProgram(
            "these group collectives exchange no messages".into(),
        ))
    }
}

fn range_rows(start: usize, n: usize) -> Vec<usize> {
    (start..start + n).collect()
}

/// Every member's `x`, member `i` holding `rows[i]` rows: padded to the most, gathered, cut.
pub fn gather_parts(
    gc: &dyn GroupCollectives,
    mx: &dyn Math,
    group: &[u32],
    x: &Tensor,
    rows: &[usize],
) -> Result<Vec<Tensor>, RuntimeError> {
    let most = rows.iter().copied().max().unwrap_or(0);
    let c = x.cols();
    let padded = if x.rows() == most {
        x.clone()
    } else {
        mx.scatter_rows(std::slice::from_ref(x), &[range_rows(0, x.rows())], most, c)?
    };
    let all = gc.all_gather(group, &padded)?;
    if all.rows() != most * group.len() {
        return Err(RuntimeError::InvalidProgram(format!(
            "an all-gather of {most} rows over {} ranks gave {}",
            group.len(),
            all.rows()
        )));
    }
    rows.iter()
        .enumerate()
        .map(|(i, &n)| mx.gather_rows(&all, &range_rows(i * most, n)))
        .collect()
}

/// Member `me` (an index into `group`) gets the sum of every member's `pieces[me]`: the
/// pieces padded to the most rows, stacked, reduce-scattered, cut.
pub fn reduce_scatter_parts(
    gc: &dyn GroupCollectives,
    mx: &dyn Math,
    group: &[u32],
    me: usize,
    pieces: Vec<Tensor>,
) -> Result<Tensor, RuntimeError> {
    let most = pieces.iter().map(Tensor::rows).max().unwrap_or(0);
    let c = pieces.first().map_or(1, Tensor::cols);
    let places: Vec<Vec<usize>> = pieces
        .iter()
        .enumerate()
        .map(|(i, p)| range_rows(i * most, p.rows()))
        .collect();
    let stacked = mx.scatter_rows(&pieces, &places, most * pieces.len(), c)?;
    let mine = gc.reduce_scatter(group, &stacked)?;
    mx.gather_rows(&mine, &range_rows(0, pieces[me].rows()))
}
