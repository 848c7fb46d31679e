//! A sparse mixture of experts on one rank's shard (Mixtral's rule, `reference::moe`), under
//! tensor and expert parallelism.
//!
//! Every rank routes its own rows (all local rows: gathered first under sequence parallelism)
//! with the router, whole on every rank. The routed experts split over the ep group (`ep`
//! consecutive members of the dp x cp group, `exec/rank/ctx.rs`): member `q` holds experts
//! `[q·E/ep, (q+1)·E/ep)`, each split over tp like a dense gated FFN (gate and up
//! column-parallel, down row-parallel). Each row goes to the members holding its experts, once
//! per expert, and its outputs come back the same way (point-to-point between the members of
//! the ep group, each pair one message a way); no row is dropped. An expert runs on the rows it
//! received in a fixed order (sending member, then that member's rows), and each row's output
//! is the sum of its experts' weighted outputs in ascending expert order, so runs are bitwise
//! reproducible. The output is this tp rank's partial sum, reduced over tp by the block as a
//! dense FFN's is. In backward the weights' gradients (partial over tp, as the outputs are) are
//! summed over the tp group, so every tp rank computes the same router gradient; the input
//! gradient of the router is added by tp rank 0 alone.

use super::comm::Env;
use super::ffn::{ffn_backward, ffn_forward, FfnCache};
use super::math::{accumulate, Math};
use crate::reference::arch::{Ffn, Moe};
use crate::reference::moe::{route, route_backward, Route};
use crate::reference::params::{Grads, Params};
use crate::tensor::Tensor;
use crate::transport::Endpoint;
use crate::RuntimeError;

/// Message subs of block `index`'s exchange (the block's own collectives use 0 to 15, the
/// language model's ends 20 to 24 of index 0).
const IDS: u8 = 30;
const ROWS: u8 = 31;
const OUTS: u8 = 32;
const DWEIGHTS: u8 = 33;
const DOUTS: u8 = 34;
const DROWS: u8 = 35;

/// A block's mixture of experts: its tensors' prefix (`{stack}.blocks.{i}.moe`), the block
/// number (tags), its sizes and the experts' FFN.
#[derive(Clone, Copy, Debug)]
pub struct MoeBlock<'a> {
    pub prefix: &'a str,
    pub index: usize,
    pub moe: Moe,
    pub ffn: Ffn,
}

/// What an expert member received from one sending member: per row, (local expert, position
/// in that expert's rows).
type Inbox = Vec<Vec<(usize, usize)>>;

/// What the backward needs.
#[derive(Clone, Debug)]
pub struct MoeCache {
    /// The router's input, every local row.
    x: Tensor,
    routes: Vec<Route>,
    /// Per assignment (rows in order, each row's experts ascending): its row and weight.
    rows: Vec<usize>,
    weights: Vec<f64>,
    /// Per ep member, the assignments sent to it, in order.
    sent: Vec<Vec<usize>>,
    /// The experts' outputs (this tp rank's partial sums), one row per assignment.
    out: Tensor,
    /// The expert side: what each member sent, and the rows of each local expert.
    inbox: Inbox,
    counts: Vec<usize>,
    experts: Vec<Option<FfnCache>>,
}

impl MoeCache {
    /// Bytes it holds.
    pub fn bytes(&self) -> usize {
        4 * (self.x.numel() + self.out.numel())
            + 8 * self.weights.len()
            + self
                .experts
                .iter()
                .flatten()
                .map(FfnCache::bytes)
                .sum::<usize>()
    }
}

fn invalid(msg: String) -> RuntimeError {
    RuntimeError::InvalidProgram(msg)
}

impl MoeBlock<'_> {
    fn expert(&self, e: usize) -> String {
        format!("{}.experts.{e}", self.prefix)
    }

    /// This rank's position in the ep group and the experts each member holds.
    fn place(&self, env: &Env<'_>, net: &Endpoint) -> Result<(usize, usize), RuntimeError> {
        let me = env
            .ep_group
            .iter()
            .position(|&r| r == net.rank())
            .ok_or_else(|| invalid(format!("rank {} is not in its ep group", net.rank())))?;
        Ok((me, self.moe.experts / env.ep_group.len()))
    }
}

/// Rows `idx` of `x` (an empty tensor for none).
fn rows_of(mx: &dyn Math, x: &Tensor, idx: &[usize]) -> Result<Tensor, RuntimeError> {
    if idx.is_empty() {
        return Ok(Tensor::zeros(&[0, x.cols()]));
    }
    mx.gather_rows(x, idx)
}

/// Sends `out[q]` to every other member `q` of the ep group and returns, per member, what it
/// sent this rank (`out[me]` kept as it is). Every message has `rows[q]` rows.
fn exchange(
    net: &mut Endpoint,
    env: &Env<'_>,
    (index, sub): (usize, u8),
    mut out: Vec<Tensor>,
    rows: &[usize],
) -> Result<Vec<Tensor>, RuntimeError> {
    let me = net.rank();
    let tag = env.tag(index, sub);
    let cols = out.first().map_or(0, Tensor::cols);
    for (&r, t) in env.ep_group.iter().zip(&out) {
        if r == me {
            continue;
        }
        if t.rows() == 0 {
            net.send(r, tag, &[])?;
        } else {
            net.send_tensor(r, tag, t)?;
        }
    }
    let mut got = Vec::with_capacity(out.len());
    for (q, &r) in env.ep_group.iter().enumerate() {
        let t = if r == me {
            std::mem::replace(&mut out[q], Tensor::zeros(&[0, cols]))
        } else {
            net.recv_payload(r, tag)?.into_rows(cols).map_err(|e| {
                invalid(format!(
                    "rank {me}: mixture-of-experts rows from rank {r}: {e}"
                ))
            })?
        };
        if t.rows() != rows[q] {
            return Err(invalid(format!(
                "rank {me}: rank {r} sent {} mixture-of-experts rows, {} expected",
                t.rows(),
                rows[q]
            )));
        }
        got.push(t);
    }
    Ok(got)
}

/// Per local expert, its rows from every member's message `parts[q]`, in member order.
fn expert_rows(
    mx: &dyn Math,
    inbox: &Inbox,
    counts: &[usize],
    parts: &[Tensor],
    cols: usize,
) -> Result<Vec<Option<Tensor>>, RuntimeError> {
    let mut out = Vec::with_capacity(counts.len());
    for (l, &n) in counts.iter().enumerate() {
        if n == 0 {
            out.push(None);
            continue;
        }
        let (mut pieces, mut dsts) = (Vec::new(), Vec::new());
        for (list, part) in inbox.iter().zip(parts) {
            let (ks, pos): (Vec<usize>, Vec<usize>) = list
                .iter()
                .enumerate()
                .filter(|(_, (e, _))| *e == l)
                .map(|(k, &(_, p))| (k, p))
                .unzip();
            if !ks.is_empty() {
                pieces.push(mx.gather_rows(part, &ks)?);
                dsts.push(pos);
            }
        }
        out.push(Some(mx.scatter_rows(&pieces, &dsts, n, cols)?));
    }
    Ok(out)
}

/// Per sending member, the rows of `outs` (per local expert) answering its message, in order.
fn replies(
    mx: &dyn Math,
    inbox: &Inbox,
    outs: &[Option<Tensor>],
    cols: usize,
) -> Result<Vec<Tensor>, RuntimeError> {
    let mut out = Vec::with_capacity(inbox.len());
    for list in inbox {
        if list.is_empty() {
            out.push(Tensor::zeros(&[0, cols]));
            continue;
        }
        let (mut pieces, mut dsts) = (Vec::new(), Vec::new());
        for (l, o) in outs.iter().enumerate() {
            let (ks, pos): (Vec<usize>, Vec<usize>) = list
                .iter()
                .enumerate()
                .filter(|(_, (e, _))| *e == l)
                .map(|(k, &(_, p))| (k, p))
                .unzip();
            if let (false, Some(o)) = (ks.is_empty(), o) {
                pieces.push(mx.gather_rows(o, &pos)?);
                dsts.push(ks);
            }
        }
        out.push(mx.scatter_rows(&pieces, &dsts, list.len(), cols)?);
    }
    Ok(out)
}

/// One row per assignment from the members' answers `parts[q]` to `sent[q]`.
fn by_assignment(
    mx: &dyn Math,
    parts: Vec<Tensor>,
    sent: &[Vec<usize>],
    n: usize,
    cols: usize,
) -> Result<Tensor, RuntimeError> {
    let (parts, dsts): (Vec<Tensor>, Vec<Vec<usize>>) = parts
        .into_iter()
        .zip(sent)
        .filter(|(_, s)| !s.is_empty())
        .map(|(p, s)| (p, s.clone()))
        .unzip();
    mx.scatter_rows(&parts, &dsts, n, cols)
}

/// The local experts' rows from each member: every message's expert indices (sent ahead of
/// the rows, as values), checked, and the position of each row in its expert's rows.
fn receive_ids(
    net: &mut Endpoint,
    env: &Env<'_>,
    index: usize,
    mine: Vec<usize>,
    per: usize,
) -> Result<(Inbox, Vec<usize>), RuntimeError> {
    let me = net.rank();
    let mut counts = vec![0usize; per];
    let mut inbox = Vec::with_capacity(env.ep_group.len());
    let mut mine = Some(mine);
    for &r in env.ep_group {
        let ids: Vec<usize> = if r == me {
            mine.take().unwrap_or_default()
        } else {
            let v = net.recv(r, env.tag(index, IDS))?;
            v.iter()
                .map(|&x| {
                    let l = x as usize;
                    (l as f32 == x && l < per).then_some(l).ok_or_else(|| {
                        invalid(format!("rank {me}: rank {r} routed a row to expert {x}"))
                    })
                })
                .collect::<Result<_, _>>()?
        };
        inbox.push(
            ids.into_iter()
                .map(|l| {
                    counts[l] += 1;
                    (l, counts[l] - 1)
                })
                .collect(),
        );
    }
    Ok((inbox, counts))
}

/// The mixture of experts over this rank's rows `x` (every local row): this tp rank's
/// partial output.
pub fn moe_forward(
    mx: &dyn Math,
    net: &mut Endpoint,
    env: &Env<'_>,
    p: &Params,
    b: MoeBlock<'_>,
    x: &Tensor,
) -> Result<(Tensor, MoeCache), RuntimeError> {
    let (n, h) = (x.rows(), x.cols());
    let (me, per) = b.place(env, net)?;
    let logits = mx.linear(x, p.t(&format!("{}.router.weight", b.prefix)), None)?;
    let routes: Vec<Route> = (0..n).map(|r| route(logits.row(r), b.moe.top_k)).collect();
    let (mut rows, mut experts, mut weights) = (Vec::new(), Vec::new(), Vec::new());
    for (r, rt) in routes.iter().enumerate() {
        for (&e, &w) in rt.experts.iter().zip(&rt.weights) {
            rows.push(r);
            experts.push(e);
            weights.push(w);
        }
    }
    let mut sent = vec![Vec::new(); env.ep_group.len()];
    for (a, &e) in experts.iter().enumerate() {
        sent[e / per].push(a);
    }
    let local =
        |q: usize| -> Vec<usize> { sent[q].iter().map(|&a| experts[a] - q * per).collect() };
    for (q, &r) in env.ep_group.iter().enumerate() {
        if q != me {
            let ids: Vec<f32> = local(q).into_iter().map(|l| l as f32).collect();
            net.send(r, env.tag(b.index, IDS), &ids)?;
        }
    }
    let msgs = sent
        .iter()
        .map(|s| rows_of(mx, x, &s.iter().map(|&a| rows[a]).collect::<Vec<_>>()))
        .collect::<Result<Vec<_>, _>>()?;
    let (inbox, counts) = receive_ids(net, env, b.index, local(me), per)?;
    let sizes: Vec<usize> = inbox.iter().map(Vec::len).collect();
    let got = exchange(net, env, (b.index, ROWS), msgs, &sizes)?;
    let mut outs = Vec::with_capacity(per);
    let mut caches = Vec::with_capacity(per);
    for (l, batch) in expert_rows(mx, &inbox, &counts, &got, h)?
        .into_iter()
        .enumerate()
    {
        let Some(batch) = batch else {
            outs.push(None);
            caches.push(None);
            continue;
        };
        let (o, c) = ffn_forward(mx, p, &b.expert(me * per + l), b.ffn, &batch, env.shard.t)?;
        outs.push(Some(o));
        caches.push(Some(c));
    }
    let answers = replies(mx, &inbox, &outs, h)?;
    let sizes: Vec<usize> = sent.iter().map(Vec::len).collect();
    let back = exchange(net, env, (b.index, OUTS), answers, &sizes)?;
    let out = by_assignment(mx, back, &sent, rows.len(), h)?;
    let y = mx.moe_combine(&out, &rows, &weights, n)?;
    let cache = MoeCache {
        x: x.clone(),
        routes,
        rows,
        weights,
        sent,
        out,
        inbox,
        counts,
        experts: caches,
    };
    Ok((y, cache))
}

/// The backward of [`moe_forward`] from the output's gradient on every local row (whole,
/// the same on every tp rank): this tp rank's partial gradient of the input rows.
#[allow(clippy::too_many_arguments)]
pub fn moe_backward(
    mx: &dyn Math,
    net: &mut Endpoint,
    env: &Env<'_>,
    p: &Params,
    b: MoeBlock<'_>,
    c: &MoeCache,
    dy: &Tensor,
    grads: &mut Grads,
) -> Result<Tensor, RuntimeError> {
    let (n, h, experts) = (c.x.rows(), c.x.cols(), b.moe.experts);
    let (me, per) = b.place(env, net)?;
    let (dout, dw) = mx.moe_combine_backward(&c.out, &c.rows, &c.weights, dy)?;
    // Partial over tp, as the outputs are: summed, every tp rank then holds the same bits.
    let dw = Tensor::from_vec(&[dw.len(), 1], dw.iter().map(|&v| v as f32).collect())?;
    let dw = env.sum_over_tp(mx, net, b.index, DWEIGHTS, dw)?;
    let (mut dlogits, mut a) = (Vec::with_capacity(n * experts), 0);
    for r in &c.routes {
        let k = r.experts.len();
        let d: Vec<f64> = dw.data()[a..a + k].iter().map(|&v| f64::from(v)).collect();
        a += k;
        dlogits.extend(route_backward(r, &d, experts).into_iter().map(|v| v as f32));
    }
    let dlogits = Tensor::from_vec(&[n, experts], dlogits)?;
    let router = format!("{}.router.weight", b.prefix);
    let (dx_router, dwr, _) = mx.linear_backward(&c.x, p.t(&router), &dlogits)?;
    accumulate(mx, grads, &router, &dwr)?;
    let msgs = c
        .sent
        .iter()
        .map(|s| rows_of(mx, &dout, s))
        .collect::<Result<Vec<_>, _>>()?;
    let sizes: Vec<usize> = c.inbox.iter().map(Vec::len).collect();
    let got = exchange(net, env, (b.index, DOUTS), msgs, &sizes)?;
    let mut dxs = Vec::with_capacity(per);
    let drows = expert_rows(mx, &c.inbox, &c.counts, &got, h)?;
    for (l, (d, cache)) in drows.iter().zip(&c.experts).enumerate() {
        dxs.push(match (d, cache) {
            (Some(d), Some(cache)) => {
                let name = b.expert(me * per + l);
                Some(ffn_backward(mx, p, &name, b.ffn, cache, d, d, grads)?)
            }
            _ => None,
        });
    }
    let answers = replies(mx, &c.inbox, &dxs, h)?;
    let sizes: Vec<usize> = c.sent.iter().map(Vec::len).collect();
    let back = exchange(net, env, (b.index, DROWS), answers, &sizes)?;
    let dx = by_assignment(mx, back, &c.sent, c.rows.len(), h)?;
    let dx = mx.scatter_add_rows(n, &dx, &c.rows)?;
    if env.shard.t == 0 {
        mx.add(&dx, &dx_router)
    } else {
        Ok(dx)
    }
}
