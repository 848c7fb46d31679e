//! A boundary's fused transfer for one unit: its sends, receives and folded reductions.

use super::*;

impl<'a> RankState<'a> {
    /// Executes a boundary's fused transfer for micro-batch `j`.
    pub(super) fn boundary(
        &mut self,
        b: usize,
        j: u32,
        forward: bool,
        ops: &[Transfer],
    ) -> Result<(), RuntimeError> {
        let bp = self
            .program
            .boundaries
            .get(b)
            .ok_or_else(|| invalid(format!("no boundary {b}")))?;
        let name = &bp.name;
        let w = bp.width as usize;
        let me = self.rank;
        let dir = if forward { "forward" } else { "backward" };
        let mut store = self
            .stores
            .remove(&StoreKey::new(b, forward))
            .unwrap_or_default();
        let (rank, bname) = (self.rank, bp.name.clone());
        let mx = &*self.math;
        let keys = |rows: &[hetpar_ir::program::Rows]| -> Vec<Key> {
            rows.iter()
                .flat_map(|(s, r)| r.clone().map(move |row| Key { sample: *s, row }))
                .collect()
        };
        let take = |store: &RowStore, rows: &[hetpar_ir::program::Rows]| {
            store.take(mx, &keys(rows), w).map_err(|e| match e {
                Taken::Missing(Key { sample: s, row }) => no_row(rank, &bname, j, s, row, dir),
                Taken::Error(e) => e,
            })
        };
        let put = |store: &mut RowStore, rows: &[hetpar_ir::program::Rows], p: Payload| {
            let keys = keys(rows);
            let t = p
                .into_rows(w)
                .map_err(|e| invalid(format!("boundary `{name}`: {e}")))?;
            if t.rows() != keys.len() {
                return Err(invalid(format!(
                    "boundary `{name}`: {} rows for {} rows of {w}",
                    t.rows(),
                    keys.len()
                )));
            }
            store.insert_rows(t, keys);
            Ok(())
        };
        // Sums of partial rows, kept apart until the end: a later operation may send this
        // rank's partials of the same rows.
        let mut summed: Vec<(Tensor, Vec<Key>)> = Vec::new();
        if let Some(gc) = self.groups.as_deref().filter(|g| g.exchanges()) {
            summed = fused::exchange(gc, mx, ops, me, w, &mut store, &take, &keys)?;
        } else {
            for (k, op) in ops.iter().enumerate() {
                let t = tag(Kind::Boundary, b, j, k, u8::from(!forward));
                let roles = op.roles(me);
                for (to, rows, _) in &roles.sends {
                    let data = take(&store, rows)?;
                    for &r in to {
                        self.net.send_tensor(r, t, &data)?;
                    }
                }
                for (from, rows, _) in roles.receives {
                    let data = self.net.recv_payload(from, t)?;
                    put(&mut store, rows, data)?;
                }
                if let Some(&(_, rows)) = roles.adds.first() {
                    let srcs = fused::srcs_of(op);
                    let own = fused::own_partial(&store, &srcs, me, rows, &take)?;
                    let mut parts = Vec::with_capacity(roles.adds.len());
                    for &(from, _) in &roles.adds {
                        let p = self.net.recv_payload(from, t)?;
                        parts.push(
                            p.into_rows(w)
                                .map_err(|e| invalid(format!("boundary `{name}`: {e}")))?,
                        );
                    }
                    summed.push((fused::sum_in_order(mx, &srcs, me, own, parts)?, keys(rows)));
                }
            }
        }
        for (t, keys) in summed {
            if let Some(p) = self.partials.get_mut(&b) {
                for k in &keys {
                    p.remove(k);
                }
            }
            store.insert_rows(t, keys);
        }
        self.stores.insert(StoreKey::new(b, forward), store);
        Ok(())
    }
}
