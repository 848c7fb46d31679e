//! Pipeline messages: activations forward and gradients back between a module's stages.

use super::*;

impl<'a> RankState<'a> {
    /// `send_activation`: the input of global chunk `chunk` to rank `to`.
    pub fn send_activation(
        &mut self,
        m: usize,
        j: u32,
        chunk: u32,
        to: u32,
    ) -> Result<(), RuntimeError> {
        self.send_pipe(Kind::PipelineActivation, m, j, chunk, to)
    }

    /// `recv_activation`.
    pub fn recv_activation(
        &mut self,
        m: usize,
        j: u32,
        chunk: u32,
        from: u32,
    ) -> Result<(), RuntimeError> {
        self.recv_pipe(Kind::PipelineActivation, m, j, chunk, from)
    }

    /// `send_gradient`: the gradient of global chunk `chunk`'s output to rank `to`.
    pub fn send_gradient(
        &mut self,
        m: usize,
        j: u32,
        chunk: u32,
        to: u32,
    ) -> Result<(), RuntimeError> {
        self.send_pipe(Kind::PipelineGradient, m, j, chunk, to)
    }

    /// `recv_gradient`.
    pub fn recv_gradient(
        &mut self,
        m: usize,
        j: u32,
        chunk: u32,
        from: u32,
    ) -> Result<(), RuntimeError> {
        self.recv_pipe(Kind::PipelineGradient, m, j, chunk, from)
    }

    /// The pipeline tensors of `kind`: activations or gradients.
    pub(super) fn pipe(&mut self, kind: Kind) -> &mut HashMap<ChunkKey, Tensor> {
        match kind {
            Kind::PipelineGradient => &mut self.dgrads,
            _ => &mut self.acts,
        }
    }

    pub(super) fn send_pipe(
        &mut self,
        kind: Kind,
        m: usize,
        j: u32,
        chunk: u32,
        to: u32,
    ) -> Result<(), RuntimeError> {
        self.held(m)?;
        let key = ChunkKey::new(m, chunk, j);
        let what = match kind {
            Kind::PipelineGradient => "gradients",
            _ => "activations",
        };
        let x = self
            .pipe(kind)
            .remove(&key)
            .ok_or_else(|| self.missing(what, key))?;
        if self.groups.as_deref().is_some_and(|g| g.exchanges()) {
            if x.rows() > 0 {
                self.held_sends.push((to, x));
            }
            return Ok(());
        }
        self.net
            .send_tensor(to, tag(kind, m, j, chunk as usize, 0), &x)
    }

    pub(super) fn recv_pipe(
        &mut self,
        kind: Kind,
        m: usize,
        j: u32,
        chunk: u32,
        from: u32,
    ) -> Result<(), RuntimeError> {
        self.held(m)?;
        if self.groups.as_deref().is_some_and(|g| g.exchanges()) {
            // With the held sends, as one call. The sender's stage holds the same rows.
            let rows = self.shard(m, j).mine().len();
            let shape = [rows, self.ctx(m).width];
            let x = if rows == 0 {
                self.flush_sends()?;
                Tensor::zeros(&shape)
            } else {
                self.exchange_held(&[(from, shape)])?
                    .pop()
                    .expect("one receipt per receive")
            };
            self.pipe(kind).insert(ChunkKey::new(m, chunk, j), x);
            self.note_memory();
            return Ok(());
        }
        let w = self.ctx(m).width;
        let x = self
            .net
            .recv_payload(from, tag(kind, m, j, chunk as usize, 0))?
            .into_rows(w)
            .map_err(|e| invalid(format!("rank {}: a pipeline message: {e}", self.rank)))?;
        self.pipe(kind).insert(ChunkKey::new(m, chunk, j), x);
        self.note_memory();
        Ok(())
    }
}
