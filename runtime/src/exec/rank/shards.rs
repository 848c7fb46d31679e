//! The rows a rank holds of a module in a pass (`exec/shard.rs`'s arithmetic, from `ir::shard`),
//! computed once per module and pass.

use super::*;
use crate::exec::shard::{pass_items, sharding_led, Place, Work};

impl<'a> RankState<'a> {
    /// The sharding of module `m` on this rank in its pass `j`: an encoder pass for an
    /// encoder or projector, a micro-batch for the language model.
    pub(super) fn shard(&mut self, m: usize, j: u32) -> Sharding {
        if let Some(s) = self.shards.get(&UnitKey { module: m, unit: j }) {
            return s.clone();
        }
        let [t, cc, _, _] = self.ctx(m).coord;
        let s = self.shard_at(m, j, t, cc);
        self.shards
            .insert(UnitKey { module: m, unit: j }, s.clone());
        s
    }

    /// The sharding of module `m` in pass `j` on the rank at tp `t`, cp `cc` of this rank's
    /// replica and stage.
    pub(super) fn shard_at(&self, m: usize, j: u32, t: u32, cc: u32) -> Sharding {
        let program = self.program;
        let c = self.ctx(m);
        let p = c.prog;
        let d = c.coord[2];
        let (batch, layout) = self.batch();
        let n = batch.batch_size as u32;
        let (work, items) = match c.unit {
            Unit::Llm => {
                let mbs = p.micro_batch_size;
                let samples =
                    hetpar_ir::shard::replica_samples(n, program.micro_batches, mbs, j, d);
                (Work::Samples(samples), None)
            }
            Unit::Encoder(src) | Unit::Projector(src) => {
                let items = layout.encoder(src);
                let dealt = pass_items(&items, program.passes(), n, p.dp, d, j);
                (Work::Items(dealt), Some(items))
            }
        };
        let place = Place {
            cp: p.cp as usize,
            c: cc as usize,
            tp: p.tp as usize,
            t: t as usize,
            sp: p.sequence_parallel,
        };
        let lead = match c.unit {
            Unit::Encoder(src) => self.cfg.encoder(src).map_or(0, |e| e.lead()),
            _ => 0,
        };
        sharding_led(c.unit, items.as_ref(), batch.seq_len, &work, place, lead)
    }
}
