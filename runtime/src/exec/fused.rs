//! A boundary's fused transfer as one exchange per rank (NCCL's grouped sends and receives),
//! and the reductions a folded forward adds up (`Transfer::Reduce`): partials summed in their
//! sources' order on every backend, so runs stay bit-identical.

use hetpar_ir::program::{Rows, Transfer};

use super::collective::GroupCollectives;
use super::math::Math;
use super::rows::{Key, RowStore};
use crate::tensor::Tensor;
use crate::RuntimeError;

/// Takes rows out of a boundary's store as one tensor.
pub type Take<'a> = dyn Fn(&RowStore, &[Rows]) -> Result<Tensor, RuntimeError> + 'a;

/// A `Reduce` this rank receives: its sources, rows, own partial (empty when not a source)
/// and the others' partials as they arrive.
struct Reduction {
    srcs: Vec<u32>,
    keys: Vec<Key>,
    own: Tensor,
    parts: Vec<Tensor>,
}

fn invalid(msg: String) -> RuntimeError {
    RuntimeError::InvalidProgram(msg)
}

/// A reduction's sources (none for any other operation).
pub fn srcs_of(op: &Transfer) -> Vec<u32> {
    match op {
        Transfer::Reduce { srcs, .. } => srcs.clone(),
        _ => Vec::new(),
    }
}

/// Every send and receive of rank `me` in `ops` as one exchange, the receipts in operation
/// order: whole rows go into `store`; the reductions' sums are returned, to be stored once
/// every partial of the store has been sent.
#[allow(clippy::too_many_arguments)]
pub fn exchange(
    gc: &dyn GroupCollectives,
    mx: &dyn Math,
    ops: &[Transfer],
    me: u32,
    w: usize,
    store: &mut RowStore,
    take: &Take<'_>,
    keys: &dyn Fn(&[Rows]) -> Vec<Key>,
) -> Result<Vec<(Tensor, Vec<Key>)>, RuntimeError> {
    let mut sends: Vec<(u32, Tensor)> = Vec::new();
    // (from, rows, the reduction each feeds if any)
    let mut recvs: Vec<(u32, Vec<Key>, Option<usize>)> = Vec::new();
    let mut reduces: Vec<Reduction> = Vec::new();
    for op in ops {
        let roles = op.roles(me);
        for (to, rows, _) in roles.sends {
            let data = take(store, rows)?;
            sends.extend(to.into_iter().map(|r| (r, data.clone())));
        }
        recvs.extend(
            roles
                .receives
                .into_iter()
                .map(|(r, rows, _)| (r, keys(rows), None)),
        );
        if let Some(&(_, rows)) = roles.adds.first() {
            let srcs = srcs_of(op);
            let own = own_partial(store, &srcs, me, rows, take)?;
            let i = reduces.len();
            reduces.push(Reduction {
                srcs,
                keys: keys(rows),
                own,
                parts: Vec::new(),
            });
            recvs.extend(roles.adds.iter().map(|&(r, rows)| (r, keys(rows), Some(i))));
        }
    }
    sends.retain(|(_, t)| t.rows() > 0);
    recvs.retain(|(_, k, _)| !k.is_empty());
    let sends_ref: Vec<(u32, &Tensor)> = sends.iter().map(|(r, t)| (*r, t)).collect();
    let shapes: Vec<(u32, [usize; 2])> = recvs.iter().map(|(r, k, _)| (*r, [k.len(), w])).collect();
    let got = gc.exchange(&sends_ref, &shapes)?;
    for ((_, keys, slot), t) in recvs.into_iter().zip(got) {
        match slot {
            Some(i) => reduces[i].parts.push(t),
            None => store.insert_rows(t, keys),
        }
    }
    reduces
        .into_iter()
        .map(|r| Ok((sum_in_order(mx, &r.srcs, me, r.own, r.parts)?, r.keys)))
        .collect()
}

/// This rank's partial sums of `rows` when it is one of a reduction's sources (else an empty
/// tensor, never read).
pub fn own_partial(
    store: &RowStore,
    srcs: &[u32],
    me: u32,
    rows: &[Rows],
    take: &Take<'_>,
) -> Result<Tensor, RuntimeError> {
    if srcs.contains(&me) {
        take(store, rows)
    } else {
        Ok(Tensor::zeros(&[0]))
    }
}

/// The sum of a reduction's partials, added in `srcs` order: `own` at this rank's place,
/// `received` (the others', in order) elsewhere.
pub fn sum_in_order(
    mx: &dyn Math,
    srcs: &[u32],
    me: u32,
    own: Tensor,
    received: Vec<Tensor>,
) -> Result<Tensor, RuntimeError> {
    let mut received = received.into_iter();
    let mut own = Some(own);
    let mut acc: Option<Tensor> = None;
    for &r in srcs {
        let next = if r == me { own.take() } else { received.next() };
        let next = next.ok_or_else(|| invalid("a reduction lacks a partial".into()))?;
        acc = Some(match acc {
            None => next,
            Some(a) => mx.add(&a, &next)?,
        });
    }
    acc.ok_or_else(|| invalid("a reduction without sources".into()))
}
