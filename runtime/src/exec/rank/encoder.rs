//! An encoder's ends on a rank: the embedding of its rows (patches through the patch
//! embedding, CLIP's class row, the position table, the optional pre-norm) and the tail (the
//! optional final norm, then the rows that leave: every row but the class rows).

use super::*;

/// Of `mine`, the indices of the class rows and of the patch rows.
fn split_lead(mine: &[RowRef]) -> (Vec<usize>, Vec<usize>) {
    (0..mine.len()).partition(|&k| mine[k].lead)
}

impl<'a> RankState<'a> {
    fn encoder_cfg(&self, src: Source) -> crate::reference::EncoderConfig {
        self.cfg
            .encoder(src)
            .expect("a program's encoder is one of the model's")
    }

    /// The embedded rows `mine` of encoder `src`, and their cache.
    pub(super) fn encoder_embed(
        &self,
        m: usize,
        src: Source,
        mine: &[RowRef],
    ) -> Result<(Tensor, LayerCache), RuntimeError> {
        let e = self.encoder_cfg(src);
        let pre = src.prefix();
        let mx = &*self.math;
        let (batch, _) = self.batch();
        let (leads, own) = split_lead(mine);
        let idx: Vec<usize> = own.iter().map(|&k| mine[k].patch as usize).collect();
        let patches = crate::exec::comm::gather_rows(batch.encoder_inputs(src).0, &idx);
        let mut x = linear_named(mx, &self.params, &format!("{pre}.patch"), &patches)?;
        if !leads.is_empty() {
            let class = mx.gather_rows(
                self.params.t(&format!("{pre}.class")),
                &vec![0; leads.len()],
            )?;
            x = mx.scatter_rows(&[x, class], &[own, leads], mine.len(), e.stack.hidden)?;
        }
        let pos = self.params.t(&format!("{pre}.pos"));
        let at: Vec<usize> = mine.iter().map(|r| r.pos as usize).collect();
        let x = mx.add(&x, &mx.gather_rows(pos, &at)?)?;
        let (x, pre_norm) = if e.pre_norm {
            let name = format!("{pre}.pre_norm");
            let (y, ln) = norm_named(mx, &self.params, &name, &x, self.norm_of(m))?;
            (y, Some(ln))
        } else {
            (x, None)
        };
        let cache = LayerCache::EncoderEmbed {
            patches,
            source: src,
            pre_norm,
        };
        Ok((x, cache))
    }

    /// The backward of [`RankState::encoder_embed`] from the gradient `dx` of its rows.
    pub(super) fn encoder_embed_backward(
        &mut self,
        m: usize,
        src: Source,
        mine: &[RowRef],
        patches: &Tensor,
        pre_norm: Option<&LayerNormCache>,
        dx: &Tensor,
    ) -> Result<(), RuntimeError> {
        let e = self.encoder_cfg(src);
        let pre = src.prefix();
        let norm = self.norm_of(m);
        let mx = &*self.math;
        let dx = match pre_norm {
            Some(ln) => {
                let name = format!("{pre}.pre_norm");
                norm_named_backward(mx, &self.params, &name, ln, dx, &mut self.grads, norm)?
            }
            None => dx.clone(),
        };
        let at: Vec<usize> = mine.iter().map(|r| r.pos as usize).collect();
        let dpos = mx.scatter_add_rows(e.max_rows, &dx, &at)?;
        accumulate(mx, &mut self.grads, &format!("{pre}.pos"), &dpos)?;
        let (leads, own) = split_lead(mine);
        let dpatch = if leads.is_empty() {
            dx
        } else {
            let dclass =
                mx.scatter_add_rows(1, &mx.gather_rows(&dx, &leads)?, &vec![0; leads.len()])?;
            accumulate(mx, &mut self.grads, &format!("{pre}.class"), &dclass)?;
            mx.gather_rows(&dx, &own)?
        };
        let name = format!("{pre}.patch");
        linear_named_backward(mx, &self.params, &name, patches, &dpatch, &mut self.grads)?;
        Ok(())
    }

    /// The encoder's tail on its last chunk's output `y` (rows `mine`): the final norm if it
    /// has one, then the rows that leave it (class rows dropped).
    pub(super) fn encoder_tail(
        &self,
        m: usize,
        src: Source,
        mine: &[RowRef],
        y: Tensor,
        post: &mut Vec<LayerCache>,
    ) -> Result<Tensor, RuntimeError> {
        let mx = &*self.math;
        let y = if self.encoder_cfg(src).final_norm {
            let name = format!("{}.ln_f", src.prefix());
            let (out, ln) = norm_named(mx, &self.params, &name, &y, self.norm_of(m))?;
            post.push(LayerCache::EncoderNorm(ln, src));
            out
        } else {
            y
        };
        let (leads, own) = split_lead(mine);
        if leads.is_empty() {
            Ok(y)
        } else {
            mx.gather_rows(&y, &own)
        }
    }

    /// The gradient of an encoder's last chunk's rows `mine` from that of the rows that left
    /// (`dy`, one per row with an output): zero on the class rows.
    pub(super) fn encoder_tail_grad(
        &self,
        mine: &[RowRef],
        dy: Tensor,
    ) -> Result<Tensor, RuntimeError> {
        let (leads, own) = split_lead(mine);
        if leads.is_empty() {
            return Ok(dy);
        }
        let cols = dy.cols();
        self.math.scatter_rows(&[dy], &[own], mine.len(), cols)
    }
}
