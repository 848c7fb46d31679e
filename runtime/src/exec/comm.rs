//! The collectives a module pass makes on tensors, over its tensor-parallel and
//! context-parallel groups, and the message tags that keep every exchange apart.

use std::ops::Range;

use super::collective;
use super::math::Math;
use super::shard::Sharding;
use crate::tensor::Tensor;
use crate::transport::{Endpoint, Tag};
use crate::RuntimeError;

/// What a message belongs to (the high bits of its tag).
#[derive(Clone, Copy, Debug)]
#[repr(u64)]
pub enum Kind {
    /// A module pass's collectives; index = block (or a module-level step).
    Pass = 1,
    PipelineActivation = 2,
    PipelineGradient = 3,
    Boundary = 4,
    GradSync = 5,
    /// Setting up a run: index = the group whose communicator is being created.
    Setup = 6,
}

/// Limits of the tag's fields.
pub const MAX_OWNER: u64 = 64;
pub const MAX_MICRO_BATCH: u64 = 1 << 14;
pub const MAX_INDEX: u64 = 1 << 14;

/// A tag from its fields: kind (4 bits), owner (module or boundary, 6), micro-batch (14),
/// index (14), sub (8): 46 bits, leaving the transport 16 for a collective's steps.
pub fn tag(kind: Kind, owner: usize, micro_batch: u32, index: usize, sub: u8) -> Tag {
    ((((kind as u64) * MAX_OWNER + owner as u64) * MAX_MICRO_BATCH + u64::from(micro_batch))
        * MAX_INDEX
        + index as u64)
        * 256
        + u64::from(sub)
}

/// A module pass's view of its groups on one micro-batch.
pub struct Env<'a> {
    /// Collectives over fixed groups (NCCL, ranks as processes), where the run has them.
    pub groups: Option<&'a dyn collective::GroupCollectives>,
    pub tp_group: &'a [u32],
    pub cp_group: &'a [u32],
    /// The ep group (a mixture of experts' exchange), in ep index order; this rank alone
    /// without expert parallelism.
    pub ep_group: &'a [u32],
    pub sp: bool,
    pub shard: &'a Sharding,
    pub module: usize,
    pub micro_batch: u32,
}

/// Rows `ranges` of `x`, in order.
pub fn take_rows(x: &Tensor, ranges: &[Range<usize>]) -> Vec<f32> {
    let c = x.cols();
    let mut out = Vec::new();
    for r in ranges {
        out.extend_from_slice(&x.data()[r.start * c..r.end * c]);
    }
    out
}

/// Rows `index` of `x` as a tensor.
pub fn gather_rows(x: &Tensor, index: &[usize]) -> Tensor {
    let c = x.cols();
    let mut data = Vec::with_capacity(index.len() * c);
    for &i in index {
        data.extend_from_slice(x.row(i));
    }
    Tensor::from_vec(&[index.len(), c], data).expect("rows x cols values")
}

/// Per sequence, by position, the local row that holds it (context parallelism 1: all do).
fn by_position(sh: &Sharding) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = sh.seq_len.iter().map(|&n| vec![0; n]).collect();
    for (k, r) in sh.local().iter().enumerate() {
        out[r.seq as usize][r.pos as usize] = k;
    }
    out
}

/// Of `rows` (a cp rank's local rows), those of sequence `s`: their indices and positions.
fn rows_of_sequence(rows: &[super::shard::RowRef], s: usize) -> (Vec<usize>, Vec<usize>) {
    rows.iter()
        .enumerate()
        .filter(|(_, r)| r.seq as usize == s)
        .map(|(k, r)| (k, r.pos as usize))
        .unzip()
}

fn wrong(what: &str) -> RuntimeError {
    RuntimeError::InvalidProgram(format!("a peer sent {what} of the wrong size"))
}

impl<'e> Env<'e> {
    /// Module `module`'s view on micro-batch `micro_batch` for the rank `c` describes.
    pub fn new(
        groups: Option<&'e dyn collective::GroupCollectives>,
        c: &'e super::rank::ModuleCtx<'_>,
        shard: &'e Sharding,
        module: usize,
        micro_batch: u32,
    ) -> Env<'e> {
        Env {
            groups,
            tp_group: &c.tp_group,
            cp_group: &c.cp_group,
            ep_group: &c.ep_group,
            sp: c.prog.sequence_parallel,
            shard,
            module,
            micro_batch,
        }
    }
}

impl Env<'_> {
    pub(super) fn tag(&self, index: usize, sub: u8) -> Tag {
        tag(Kind::Pass, self.module, self.micro_batch, index, sub)
    }

    /// The group collectives for `group`, if the run has them.
    fn groups_for(&self, group: &[u32]) -> Option<&dyn collective::GroupCollectives> {
        self.groups.filter(|g| g.covers(group))
    }

    /// Every member's part (`rows[i]` rows of member `i`) on a device path: the run's group
    /// collectives, or device copies between threads; `None` for the host path.
    fn gather_on_device(
        &self,
        mx: &dyn Math,
        net: &mut Endpoint,
        group: &[u32],
        tag: Tag,
        x: &Tensor,
        rows: &[usize],
    ) -> Result<Option<Vec<Tensor>>, RuntimeError> {
        let parts = if let Some(gc) = self.groups_for(group) {
            collective::gather_parts(gc, mx, group, x, rows)?
        } else if collective::on_device(mx, net, group) {
            collective::all_gather(net, group, tag, x)?
        } else {
            return Ok(None);
        };
        if parts.iter().zip(rows).any(|(p, &r)| p.rows() != r) {
            return Err(wrong("a part"));
        }
        Ok(Some(parts))
    }

    /// On a device path (as [`Env::gather_on_device`] decides), member `me`'s sum of every
    /// member's `pieces[me]`.
    fn reduce_scatter_on_device(
        &self,
        mx: &dyn Math,
        net: &mut Endpoint,
        group: &[u32],
        tag: Tag,
        me: usize,
        pieces: Vec<Tensor>,
    ) -> Result<Tensor, RuntimeError> {
        match self.groups_for(group) {
            Some(gc) => collective::reduce_scatter_parts(gc, mx, group, me, pieces),
            None => collective::reduce_scatter(mx, net, group, tag, pieces),
        }
    }

    /// Whether collectives over `group` take a device path.
    fn device_path(&self, mx: &dyn Math, net: &Endpoint, group: &[u32]) -> bool {
        self.groups_for(group).is_some() || collective::on_device(mx, net, group)
    }

    /// Per tp rank, the local rows its sequence-parallel part holds.
    fn part_rows(&self) -> Vec<Vec<usize>> {
        self.shard
            .parts
            .iter()
            .map(|rs| rs.iter().flat_map(Clone::clone).collect())
            .collect()
    }

    /// This rank's rows (its sequence-parallel part) to all local rows.
    pub fn gather(
        &self,
        mx: &dyn Math,
        net: &mut Endpoint,
        index: usize,
        sub: u8,
        mine: &Tensor,
    ) -> Result<Tensor, RuntimeError> {
        if !self.sp || self.tp_group.len() <= 1 {
            return Ok(mine.clone());
        }
        let rows = self.part_rows();
        let counts: Vec<usize> = rows.iter().map(Vec::len).collect();
        let tag = self.tag(index, sub);
        if let Some(parts) = self.gather_on_device(mx, net, self.tp_group, tag, mine, &counts)? {
            return mx.scatter_rows(&parts, &rows, self.shard.local().len(), mine.cols());
        }
        let parts = net.all_gather(self.tp_group, self.tag(index, sub), mine.data())?;
        let n = self.shard.local().len();
        let c = mine.cols();
        let mut out = Tensor::zeros(&[n, c]);
        for (data, ranges) in parts.iter().zip(&self.shard.parts) {
            let mut k = 0usize;
            for r in ranges {
                let len = (r.end - r.start) * c;
                let src = data.get(k..k + len).ok_or_else(|| wrong("a part"))?;
                out.data_mut()[r.start * c..r.end * c].copy_from_slice(src);
                k += len;
            }
        }
        Ok(out)
    }

    /// Every tp rank's `x` (of one shape), in group order, whatever the sequence parallelism.
    pub fn gather_members(
        &self,
        mx: &dyn Math,
        net: &mut Endpoint,
        index: usize,
        sub: u8,
        x: &Tensor,
    ) -> Result<Vec<Tensor>, RuntimeError> {
        if self.tp_group.len() <= 1 {
            return Ok(vec![x.clone()]);
        }
        let tag = self.tag(index, sub);
        let counts = vec![x.rows(); self.tp_group.len()];
        if let Some(parts) = self.gather_on_device(mx, net, self.tp_group, tag, x, &counts)? {
            return Ok(parts);
        }
        net.all_gather(self.tp_group, tag, x.data())?
            .into_iter()
            .map(|d| Tensor::from_vec(x.shape(), d).map_err(|_| wrong("a member's part")))
            .collect()
    }

    /// Partial sums over all local rows, summed over the tensor-parallel group: every rank's
    /// own rows (reduce-scatter) under sequence parallelism, all rows (all-reduce) without.
    pub fn reduce(
        &self,
        mx: &dyn Math,
        net: &mut Endpoint,
        index: usize,
        sub: u8,
        partial: Tensor,
    ) -> Result<Tensor, RuntimeError> {
        let tp = self.tp_group.len();
        if tp <= 1 {
            return Ok(partial);
        }
        let tag = self.tag(index, sub);
        if self.device_path(mx, net, self.tp_group) {
            if !self.sp {
                return match self.groups_for(self.tp_group) {
                    Some(gc) => gc.all_reduce(self.tp_group, partial),
                    None => collective::all_reduce(mx, net, self.tp_group, tag, partial),
                };
            }
            let pieces = self
                .part_rows()
                .iter()
                .map(|rows| mx.gather_rows(&partial, rows))
                .collect::<Result<Vec<_>, _>>()?;
            let me = self.shard.t;
            return self.reduce_scatter_on_device(mx, net, self.tp_group, tag, me, pieces);
        }
        if !self.sp {
            let mut t = partial;
            net.all_reduce_sum(self.tp_group, tag, t.data_mut())?;
            return Ok(t);
        }
        let pieces: Vec<Vec<f32>> = self
            .shard
            .parts
            .iter()
            .map(|r| take_rows(&partial, r))
            .collect();
        let mine = net.reduce_scatter(self.tp_group, tag, &pieces)?;
        let c = partial.cols();
        Tensor::from_vec(&[mine.len() / c.max(1), c], mine)
    }

    /// `x` summed over the tensor-parallel group (an all-reduce, whatever the sequence
    /// parallelism): every member ends with the same bits.
    pub fn sum_over_tp(
        &self,
        mx: &dyn Math,
        net: &mut Endpoint,
        index: usize,
        sub: u8,
        x: Tensor,
    ) -> Result<Tensor, RuntimeError> {
        if self.tp_group.len() <= 1 {
            return Ok(x);
        }
        let tag = self.tag(index, sub);
        if let Some(gc) = self.groups_for(self.tp_group) {
            return gc.all_reduce(self.tp_group, x);
        }
        if collective::on_device(mx, net, self.tp_group) {
            return collective::all_reduce(mx, net, self.tp_group, tag, x);
        }
        let mut t = x;
        net.all_reduce_sum(self.tp_group, tag, t.data_mut())?;
        Ok(t)
    }

    /// Every sequence's rows whole, from each cp rank's local rows `x` (all-gather over the
    /// context-parallel group).
    pub fn sequences(
        &self,
        mx: &dyn Math,
        net: &mut Endpoint,
        index: usize,
        sub: u8,
        x: &Tensor,
    ) -> Result<Vec<Tensor>, RuntimeError> {
        let c = x.cols();
        let sh = self.shard;
        if self.cp_group.len() <= 1 {
            // Every sequence is here whole: its rows in position order, where they are.
            return by_position(sh)
                .iter()
                .map(|idx| mx.gather_rows(x, idx))
                .collect();
        }
        let counts: Vec<usize> = sh.per_cp.iter().map(Vec::len).collect();
        let tag = self.tag(index, sub);
        if let Some(parts) = self.gather_on_device(mx, net, self.cp_group, tag, x, &counts)? {
            // Sequence s takes, from each cp rank's part, its rows of s at their positions.
            return (0..sh.seq_len.len())
                .map(|s| {
                    let mut srcs = Vec::new();
                    let mut dsts = Vec::new();
                    for (part, rows) in parts.iter().zip(&sh.per_cp) {
                        let (ks, pos) = rows_of_sequence(rows, s);
                        if !ks.is_empty() {
                            srcs.push(mx.gather_rows(part, &ks)?);
                            dsts.push(pos);
                        }
                    }
                    mx.scatter_rows(&srcs, &dsts, sh.seq_len[s], c)
                })
                .collect();
        }
        let mut out: Vec<Tensor> = sh.seq_len.iter().map(|&n| Tensor::zeros(&[n, c])).collect();
        let parts = net.all_gather(self.cp_group, self.tag(index, sub), x.data())?;
        for (data, rows) in parts.iter().zip(&sh.per_cp) {
            if data.len() != rows.len() * c {
                return Err(wrong("sequence rows"));
            }
            for (k, r) in rows.iter().enumerate() {
                out[r.seq as usize]
                    .row_mut(r.pos as usize)
                    .copy_from_slice(&data[k * c..(k + 1) * c]);
            }
        }
        Ok(out)
    }

    /// The backward of [`Env::sequences`]: each cp rank's contributions to whole sequences,
    /// summed onto the local rows of the rank that holds them (reduce-scatter).
    pub fn unsequences(
        &self,
        mx: &dyn Math,
        net: &mut Endpoint,
        index: usize,
        sub: u8,
        seqs: &[Tensor],
        cols: usize,
    ) -> Result<Tensor, RuntimeError> {
        let sh = self.shard;
        if self.cp_group.len() <= 1 {
            return mx.scatter_rows(seqs, &by_position(sh), sh.local().len(), cols);
        }
        if self.device_path(mx, net, self.cp_group) {
            // Each cp rank's piece: its local rows, taken from the sequences that hold them.
            let pieces = sh
                .per_cp
                .iter()
                .map(|rows| {
                    let mut srcs = Vec::new();
                    let mut dsts = Vec::new();
                    for (s, seq) in seqs.iter().enumerate() {
                        let (ks, pos) = rows_of_sequence(rows, s);
                        if !ks.is_empty() {
                            srcs.push(mx.gather_rows(seq, &pos)?);
                            dsts.push(ks);
                        }
                    }
                    mx.scatter_rows(&srcs, &dsts, rows.len(), cols)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let tag = self.tag(index, sub);
            return self.reduce_scatter_on_device(mx, net, self.cp_group, tag, sh.c, pieces);
        }
        let pieces: Vec<Vec<f32>> = sh
            .per_cp
            .iter()
            .map(|rows| {
                let mut v = Vec::with_capacity(rows.len() * cols);
                for r in rows {
                    v.extend_from_slice(seqs[r.seq as usize].row(r.pos as usize));
                }
                v
            })
            .collect();
        let mine = net.reduce_scatter(self.cp_group, self.tag(index, sub), &pieces)?;
        Tensor::from_vec(&[sh.local().len(), cols], mine)
    }
}
