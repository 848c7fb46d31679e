//! Placeholder rows where the batch puts them. A program's boundary delivers each encoder row
//! to the language-model ranks that hold its placeholder under the model's data layout
//! (`ir::model::placeholders`); a batch may put its placeholders elsewhere, which moves them
//! between the sequence-parallel parts and context-parallel blocks of a replica's tp × cp
//! group. Before the first chunk of a micro-batch the group exchanges its rows so that every
//! rank holds those its own positions need; after the embedding's backward it returns their
//! gradients to the ranks the program's backward sends them from. When the batch follows
//! the model's layout, only the key lists travel.

use std::collections::BTreeSet;

use super::*;

/// For every sample and position, the rank of its token among the sample's earlier positions
/// holding the same token: the row a placeholder takes among its encoder's rows.
pub(super) fn placeholder_index(batch: &Batch) -> Vec<Vec<u64>> {
    let s = batch.seq_len;
    (0..batch.batch_size)
        .map(|b| {
            let mut seen: HashMap<i64, u64> = HashMap::new();
            batch.tokens[b * s..(b + 1) * s]
                .iter()
                .map(|&t| {
                    let n = seen.entry(t).or_insert(0);
                    *n += 1;
                    *n - 1
                })
                .collect()
        })
        .collect()
}

/// One boundary's rows on a micro-batch: per group member, the keys it held as delivered and
/// the keys its own positions need.
pub(super) struct Reroute {
    held: Vec<Vec<Key>>,
    needed: Vec<Vec<Key>>,
}

/// Keys as f32 bit patterns (sample, row), for the transport.
fn encode(keys: &[Key]) -> Vec<f32> {
    keys.iter()
        .flat_map(|k| [f32::from_bits(k.sample), f32::from_bits(k.row as u32)])
        .collect()
}

fn decode(v: &[f32]) -> Vec<Key> {
    v.chunks_exact(2)
        .map(|p| Key {
            sample: p[0].to_bits(),
            row: u64::from(p[1].to_bits()),
        })
        .collect()
}

/// Per (from, to) member pair, in group order, the keys `from` sends: each key a member wants
/// (`want`) and lacks (`has`) comes from the first member that has it.
fn plan(want: &[Vec<Key>], has: &[Vec<Key>]) -> Vec<(usize, usize, Vec<Key>)> {
    let sets: Vec<BTreeSet<Key>> = has.iter().map(|h| h.iter().copied().collect()).collect();
    let mut out: Vec<(usize, usize, Vec<Key>)> = Vec::new();
    for (to, keys) in want.iter().enumerate() {
        for k in keys.iter().filter(|k| !sets[to].contains(k)) {
            let Some(from) = sets.iter().position(|s| s.contains(k)) else {
                continue;
            };
            match out.iter_mut().find(|(f, t, _)| (*f, *t) == (from, to)) {
                Some((_, _, v)) => v.push(*k),
                None => out.push((from, to, vec![*k])),
            }
        }
    }
    out
}

impl<'a> RankState<'a> {
    /// The language model's replica group at stage 0 (tp fastest, then cp) and this rank's
    /// place in it.
    fn reroute_group(&self, m: usize) -> (Vec<(u32, u32, u32)>, usize) {
        let c = self.ctx(m);
        let p = c.prog;
        let d = c.coord[2];
        let mut out = Vec::new();
        for cc in 0..p.cp {
            for t in 0..p.tp {
                out.push((p.rank_at(t, cc, d, 0), t, cc));
            }
        }
        let me = out.iter().position(|x| x.0 == self.rank).unwrap_or(0);
        (out, me)
    }

    /// The placeholder keys of `token` that member (t, c)'s own rows need on micro-batch `j`.
    fn needed_keys(&self, m: usize, j: u32, token: i64, t: u32, c: u32) -> Vec<Key> {
        let shard = self.shard_at(m, j, t, c);
        let (batch, _) = self.batch();
        let s = batch.seq_len;
        shard
            .mine()
            .iter()
            .filter(|r| batch.tokens[r.sample as usize * s + r.pos as usize] == token)
            .map(|r| Key {
                sample: r.sample,
                row: self.placeholders[r.sample as usize][r.pos as usize],
            })
            .collect()
    }

    /// Forward: every rank of the group ends holding the rows its positions need.
    pub(super) fn reroute_forward(&mut self, m: usize, j: u32) -> Result<(), RuntimeError> {
        let (group, me) = self.reroute_group(m);
        if group.len() <= 1 {
            return Ok(());
        }
        let ranks: Vec<u32> = group.iter().map(|g| g.0).collect();
        let samples: BTreeSet<u32> = self.shard(m, j).local().iter().map(|r| r.sample).collect();
        let (batch, _) = self.batch();
        for (token, b) in self.placeholder_sources(m, batch) {
            let Some(b) = b else { continue };
            let partial = self.partials.get(&b);
            let store = self.stores.entry(StoreKey::new(b, true)).or_default();
            let mut held: Vec<Key> = store
                .keys()
                .filter(|k| samples.contains(&k.sample))
                .filter(|k| !partial.is_some_and(|p| p.contains(k)))
                .copied()
                .collect();
            held.sort_by_key(|k| (k.sample, k.row));
            let t = tag(Kind::Boundary, b, j, MAX_INDEX as usize - 1, 0);
            let held: Vec<Vec<Key>> = self
                .net
                .all_gather(&ranks, t, &encode(&held))?
                .iter()
                .map(|v| decode(v))
                .collect();
            let needed: Vec<Vec<Key>> = group
                .iter()
                .map(|&(_, tt, cc)| self.needed_keys(m, j, token, tt, cc))
                .collect();
            let w = self.program.boundaries[b].width as usize;
            self.exchange_rows(&ranks, me, &plan(&needed, &held), b, j, true, w, 1)?;
            self.reroutes.insert((b, j), Reroute { held, needed });
        }
        Ok(())
    }

    /// Backward: the gradients of the rerouted rows go back to the ranks that held them as
    /// delivered.
    pub(super) fn reroute_backward(&mut self, m: usize, j: u32) -> Result<(), RuntimeError> {
        let (group, me) = self.reroute_group(m);
        if group.len() <= 1 {
            return Ok(());
        }
        let ranks: Vec<u32> = group.iter().map(|g| g.0).collect();
        let (batch, _) = self.batch();
        for (_, b) in self.placeholder_sources(m, batch) {
            let Some(b) = b else { continue };
            let Some(r) = self.reroutes.remove(&(b, j)) else {
                continue;
            };
            let w = self.program.boundaries[b].width as usize;
            self.exchange_rows(&ranks, me, &plan(&r.held, &r.needed), b, j, false, w, 2)?;
        }
        Ok(())
    }

    /// Sends and receives the rows of `moves` between the group's members, in the store of
    /// boundary `b` and direction `forward`.
    #[allow(clippy::too_many_arguments)]
    fn exchange_rows(
        &mut self,
        ranks: &[u32],
        me: usize,
        moves: &[(usize, usize, Vec<Key>)],
        b: usize,
        j: u32,
        forward: bool,
        w: usize,
        sub: u8,
    ) -> Result<(), RuntimeError> {
        let t = tag(Kind::Boundary, b, j, MAX_INDEX as usize - 1, sub);
        for (_, to, keys) in moves.iter().filter(|mv| mv.0 == me) {
            let rows = self.rows_of(b, j, forward, keys, w)?;
            self.net.send(ranks[*to], t, rows.data())?;
        }
        for (from, _, keys) in moves.iter().filter(|mv| mv.1 == me) {
            let data = self.net.recv(ranks[*from], t)?;
            let rows = Tensor::from_vec(&[keys.len(), w], data).map_err(|_| {
                invalid(format!(
                    "rank {}: rerouted rows of the wrong size from rank {}",
                    self.rank, ranks[*from]
                ))
            })?;
            let store = self.stores.entry(StoreKey::new(b, forward)).or_default();
            store.insert_rows(rows, keys.iter().copied());
        }
        Ok(())
    }
}
