//! NCCL communicators per process group, and the collectives and grouped point-to-point calls
//! the backend makes on device tensors.
//!
//! A group's communicator is created from a unique id that its first member makes and sends
//! to the others over the TCP transport the rendezvous already built (`crate::rendezvous`):
//! the id's 128 bytes travel as 32 f32 bit patterns under a tag, so no other channel is
//! needed, and a peer that never arrives is the transport's timeout error, never a hang.
//! cudarc's NCCL module has no presence check and panics on a missing library, so
//! [`nccl_present`] opens it first; pip's wheels ship only `libnccl.so.2`, which
//! `crate::libs` links under the name cudarc loads.

use cudarc::driver::{DevicePtr, DevicePtrMut};
use cudarc::nccl::{result as nr, Comm, Id};

use super::device::Gpu;
use super::ops::{DTensor, Ops};
use crate::transport::{Endpoint, Tag};
use crate::RuntimeError;

/// Whether an NCCL library can be opened under a name cudarc tries.
pub fn nccl_present() -> bool {
    cudarc::get_lib_name_candidates("nccl").iter().any(|name| {
        // SAFETY: opening NCCL runs no initialisers with preconditions of ours.
        unsafe { libloading::Library::new(name) }.is_ok()
    })
}

fn nccl_err(what: &str) -> impl Fn(nr::NcclError) -> RuntimeError + '_ {
    move |e| RuntimeError::Device(format!("NCCL {what}: {e:?}"))
}

/// The 128-byte id as 32 f32 bit patterns, and back.
fn id_to_words(id: &Id) -> Vec<f32> {
    id.internal()
        .chunks(4)
        .map(|c| {
            let b = [c[0] as u8, c[1] as u8, c[2] as u8, c[3] as u8];
            f32::from_bits(u32::from_le_bytes(b))
        })
        .collect()
}

fn id_from_words(words: &[f32]) -> Result<Id, RuntimeError> {
    if words.len() != 32 {
        return Err(RuntimeError::Device(format!(
            "an NCCL unique id arrived as {} words, not 32",
            words.len()
        )));
    }
    let mut internal = [0 as core::ffi::c_char; 128];
    for (i, w) in words.iter().enumerate() {
        for (j, b) in w.to_bits().to_le_bytes().iter().enumerate() {
            internal[4 * i + j] = *b as core::ffi::c_char;
        }
    }
    Ok(Id::uninit(internal))
}

/// One process group's communicator: `members` are global ranks, this rank among them.
pub struct Communicator {
    comm: Comm,
    members: Vec<u32>,
}

// SAFETY: an NCCL communicator may be used from any thread as long as no two calls on it
// run at once; a rank's interpreter owns it and calls it from one thread at a time.
unsafe impl Send for Communicator {}

impl Communicator {
    /// Creates the group's communicator: the first member makes the unique id and sends it to
    /// the others over `net` under `tag`; every member then joins (collective over `members`).
    pub fn new(
        gpu: &Gpu,
        net: &mut Endpoint,
        members: &[u32],
        tag: Tag,
    ) -> Result<Communicator, RuntimeError> {
        if !nccl_present() {
            return Err(RuntimeError::Device(format!(
                "NCCL could not be opened (tried {}); pip's nvidia-nccl-cu12 ships only \
                 libnccl.so.2: start through `hetpar launch`, which links it as libnccl.so",
                super::device::tried("nccl").join(", ")
            )));
        }
        let me = net.rank();
        let index = members.iter().position(|&r| r == me).ok_or_else(|| {
            RuntimeError::InvalidProgram(format!("rank {me} is not in group {members:?}"))
        })?;
        let id = if index == 0 {
            let id = Id::new().map_err(nccl_err("unique id"))?;
            let words = id_to_words(&id);
            for &peer in &members[1..] {
                net.send(peer, tag, &words)?;
            }
            id
        } else {
            id_from_words(&net.recv(members[0], tag)?)?
        };
        let comm = Comm::from_rank(gpu.stream().clone(), index, members.len(), id)
            .map_err(nccl_err("communicator"))?;
        Ok(Communicator {
            comm,
            members: members.to_vec(),
        })
    }

    pub fn members(&self) -> &[u32] {
        &self.members
    }

    fn index_of(&self, rank: u32) -> Result<i32, RuntimeError> {
        self.members
            .iter()
            .position(|&r| r == rank)
            .map(|i| i as i32)
            .ok_or_else(|| {
                RuntimeError::InvalidProgram(format!(
                    "rank {rank} is not in group {:?}",
                    self.members
                ))
            })
    }

    /// Sums `x` over the group, in place.
    pub fn all_reduce_sum(&self, x: &mut DTensor) -> Result<(), RuntimeError> {
        if x.numel() == 0 {
            return Ok(());
        }
        self.comm
            .all_reduce_in_place(&mut x.buf, &cudarc::nccl::ReduceOp::Sum)
            .map_err(nccl_err("all-reduce"))?;
        Ok(())
    }

    /// Every member's `x` stacked by rows in member order.
    pub fn all_gather(&self, gpu: &Gpu, x: &DTensor) -> Result<DTensor, RuntimeError> {
        let n = self.members.len();
        let mut out = gpu.zeros(&[x.rows() * n, x.cols()])?;
        if x.numel() == 0 {
            return Ok(out);
        }
        self.comm
            .all_gather(&x.buf, &mut out.buf)
            .map_err(nccl_err("all-gather"))?;
        Ok(out)
    }

    /// The sum over the group of `x`, this member's equal share of rows (`x.rows()` must
    /// divide by the group's size).
    pub fn reduce_scatter(&self, gpu: &Gpu, x: &DTensor) -> Result<DTensor, RuntimeError> {
        let n = self.members.len();
        if !x.rows().is_multiple_of(n) {
            return Err(RuntimeError::InvalidProgram(format!(
                "reduce-scatter of {} rows over {n} ranks",
                x.rows()
            )));
        }
        let mut out = gpu.zeros(&[x.rows() / n, x.cols()])?;
        if out.numel() == 0 {
            return Ok(out);
        }
        self.comm
            .reduce_scatter(&x.buf, &mut out.buf, &cudarc::nccl::ReduceOp::Sum)
            .map_err(nccl_err("reduce-scatter"))?;
        Ok(out)
    }

    /// Point-to-point sends and receives between members (global ranks) as one NCCL group
    /// call, so a boundary's fused transfers progress together and cannot deadlock on order.
    pub fn exchange(
        &self,
        sends: &[(u32, &DTensor)],
        recvs: &mut [(u32, &mut DTensor)],
    ) -> Result<(), RuntimeError> {
        let send_peers: Vec<i32> = sends
            .iter()
            .map(|(r, _)| self.index_of(*r))
            .collect::<Result<_, _>>()?;
        let recv_peers: Vec<i32> = recvs
            .iter()
            .map(|(r, _)| self.index_of(*r))
            .collect::<Result<_, _>>()?;
        nr::group_start().map_err(nccl_err("group start"))?;
        let mut first_err = None;
        for ((_, t), peer) in sends.iter().zip(&send_peers) {
            if let Err(e) = self.comm.send(&t.buf, *peer) {
                first_err.get_or_insert(e);
            }
        }
        for ((_, t), peer) in recvs.iter_mut().zip(&recv_peers) {
            if let Err(e) = self.comm.recv(&mut t.buf, *peer) {
                first_err.get_or_insert(e);
            }
        }
        let end = nr::group_end();
        // The calls above recorded their buffers' events before the group launched the
        // transfers; record them again now, so work on other streams waits for the transfers.
        let stream = self.comm.stream();
        for (_, t) in sends {
            drop(t.buf.device_ptr(&stream));
        }
        for (_, t) in recvs.iter_mut() {
            drop(t.buf.device_ptr_mut(&stream));
        }
        if let Some(e) = first_err {
            return Err(nccl_err("send/receive")(e));
        }
        end.map_err(nccl_err("group end"))?;
        Ok(())
    }
}
/// A communicator for every group of more than one rank this rank is in (a process with its
/// own GPU), created at the start in the order of `groups`, which every rank computes alike
/// (`crate::exec::rank::program_groups`), so that creation cannot deadlock. Collectives run
/// on their own stream; buffers carry their events, so the arithmetic's stream and this one
/// wait for each other where they share a tensor.
pub struct NcclGroups {
    gpu: Gpu,
    comms: std::collections::BTreeMap<Vec<u32>, Communicator>,
    world_size: usize,
}

impl NcclGroups {
    pub fn new(
        dev: &std::sync::Arc<super::Device>,
        net: &mut Endpoint,
        groups: &[Vec<u32>],
    ) -> Result<NcclGroups, RuntimeError> {
        use crate::exec::comm::{tag, Kind};
        let gpu = dev.rank()?;
        let mut comms = std::collections::BTreeMap::new();
        for (k, g) in groups.iter().enumerate() {
            if g.len() > 1 && g.contains(&net.rank()) {
                let c = Communicator::new(&gpu, net, g, tag(Kind::Setup, 0, 0, k, 0))?;
                comms.insert(g.clone(), c);
            }
        }
        Ok(NcclGroups {
            gpu,
            comms,
            world_size: net.size(),
        })
    }

    /// The communicator of every rank (the widest group), if there is one.
    fn world(&self) -> Option<&Communicator> {
        self.comms
            .values()
            .max_by_key(|c| c.members().len())
            .filter(|c| c.members().len() == self.world_size)
    }

    fn comm(&self, group: &[u32]) -> Result<&Communicator, RuntimeError> {
        self.comms.get(group).ok_or_else(|| {
            RuntimeError::InvalidProgram(format!("no NCCL communicator for group {group:?}"))
        })
    }
}

impl crate::exec::collective::GroupCollectives for NcclGroups {
    fn covers(&self, group: &[u32]) -> bool {
        self.comms.contains_key(group)
    }

    fn exchanges(&self) -> bool {
        self.world().is_some()
    }

    fn exchange(
        &self,
        sends: &[(u32, &crate::tensor::Tensor)],
        recvs: &[(u32, [usize; 2])],
    ) -> Result<Vec<crate::tensor::Tensor>, RuntimeError> {
        let world = self.world().ok_or_else(|| {
            RuntimeError::InvalidProgram("no NCCL communicator of every rank".into())
        })?;
        let ops = sends
            .iter()
            .map(|(_, t)| super::math::operand(&self.gpu, t))
            .collect::<Result<Vec<_>, _>>()?;
        let send_refs: Vec<(u32, &DTensor)> = sends
            .iter()
            .zip(&ops)
            .map(|((r, _), d)| (*r, &**d))
            .collect();
        let mut bufs = recvs
            .iter()
            .map(|(_, shape)| self.gpu.zeros(shape))
            .collect::<Result<Vec<_>, _>>()?;
        let mut recv_refs: Vec<(u32, &mut DTensor)> = recvs
            .iter()
            .zip(bufs.iter_mut())
            .map(|((r, _), b)| (*r, b))
            .collect();
        world.exchange(&send_refs, &mut recv_refs)?;
        drop(recv_refs);
        Ok(bufs
            .into_iter()
            .map(|b| super::math::result(&self.gpu, b))
            .collect())
    }

    fn all_gather(
        &self,
        group: &[u32],
        x: &crate::tensor::Tensor,
    ) -> Result<crate::tensor::Tensor, RuntimeError> {
        let d = super::math::operand(&self.gpu, x)?;
        let out = self.comm(group)?.all_gather(&self.gpu, &d)?;
        Ok(super::math::result(&self.gpu, out))
    }

    fn all_reduce(
        &self,
        group: &[u32],
        x: crate::tensor::Tensor,
    ) -> Result<crate::tensor::Tensor, RuntimeError> {
        // Device values are never changed in place (clones share them): sum a copy.
        let mut d = self.gpu.copy(&*super::math::operand(&self.gpu, &x)?)?;
        self.comm(group)?.all_reduce_sum(&mut d)?;
        Ok(super::math::result(&self.gpu, d))
    }

    fn reduce_scatter(
        &self,
        group: &[u32],
        x: &crate::tensor::Tensor,
    ) -> Result<crate::tensor::Tensor, RuntimeError> {
        let d = super::math::operand(&self.gpu, x)?;
        let out = self.comm(group)?.reduce_scatter(&self.gpu, &d)?;
        Ok(super::math::result(&self.gpu, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unique_id_survives_its_trip_as_words() {
        let mut internal = [0 as core::ffi::c_char; 128];
        for (i, b) in internal.iter_mut().enumerate() {
            *b = (i as i32 * 37 - 100) as core::ffi::c_char;
        }
        let id = Id::uninit(internal);
        let back = id_from_words(&id_to_words(&id)).unwrap();
        assert_eq!(back.internal(), id.internal());
        assert!(id_from_words(&[0.0; 31]).is_err());
    }
}
