//! A chunk's backward, recomputing dropped caches, and the embeddings' gradients.

use super::*;

impl<'a> RankState<'a> {
    pub(super) fn backward_chunk(&mut self, m: usize, i: u32, j: u32) -> Result<(), RuntimeError> {
        let shard = self.shard(m, j);
        let mine = shard.mine();
        let c = self.ctx(m);
        let (unit, last) = (c.unit, c.last_chunk());
        let outgoing = c.outgoing;
        let state = self.chunks.remove(&ChunkKey::new(m, i, j)).ok_or_else(|| {
            invalid(format!(
                "rank {}: backward of module `{}` chunk {i} micro-batch {j} before its forward",
                self.rank, self.program.modules[m].name
            ))
        })?;
        // The gradient of the chunk's output.
        let mut dy = if i == last {
            match unit {
                Unit::Llm => None,
                _ => {
                    let b = outgoing.ok_or_else(|| invalid("no outgoing boundary".into()))?;
                    let w = self.ctx(m).width;
                    let rows = if self.folds(m).1 {
                        shard.local()
                    } else {
                        &mine[..]
                    };
                    let out: Vec<RowRef> = rows.iter().filter(|r| !r.lead).copied().collect();
                    let dy = self.rows_of(b, j, false, &keys_of(&out), w)?;
                    Some(self.encoder_tail_grad(rows, dy)?)
                }
            }
        } else {
            Some(
                self.dgrads
                    .remove(&ChunkKey::new(m, i, j))
                    .ok_or_else(|| self.missing("output gradients", ChunkKey::new(m, i, j)))?,
            )
        };
        let (norm, act, head) = (self.norm_of(m), self.projector_act(unit), self.head_name());
        for cache in state.post.iter().rev() {
            dy = Some(match cache {
                LayerCache::EncoderNorm(ln, src) => norm_named_backward(
                    &*self.math,
                    &self.params,
                    &format!("{}.ln_f", src.prefix()),
                    ln,
                    dy.as_ref().expect("set above"),
                    &mut self.grads,
                    norm,
                )?,
                LayerCache::Mlp(mc) => {
                    let whole = self.folds(m).1;
                    let env = Env::new(
                        self.groups.as_deref(),
                        self.modules[m].as_ref().expect("held"),
                        &shard,
                        m,
                        j,
                    );
                    mlp_backward(
                        &*self.math,
                        &mut self.net,
                        &env,
                        &self.params,
                        &prefix(unit),
                        act,
                        mc,
                        dy.as_ref().expect("set above"),
                        whole,
                        &mut self.grads,
                    )?
                }
                LayerCache::Head { ln, hf, dlogits } => {
                    let dhf = linear_named_backward(
                        &*self.math,
                        &self.params,
                        head,
                        hf,
                        dlogits,
                        &mut self.grads,
                    )?;
                    // A vocabulary-parallel head's input gradient is partial over tp.
                    let dhf = if self.ctx(m).tp_group.len() > 1 {
                        let env = Env::new(
                            self.groups.as_deref(),
                            self.modules[m].as_ref().expect("held"),
                            &shard,
                            m,
                            j,
                        );
                        env.reduce(&*self.math, &mut self.net, 0, vocab::HEAD_BACKWARD, dhf)?
                    } else {
                        dhf
                    };
                    norm_named_backward(
                        &*self.math,
                        &self.params,
                        "llm.ln_f",
                        ln,
                        &dhf,
                        &mut self.grads,
                        norm,
                    )?
                }
                _ => unreachable!("only tails are post layers"),
            });
        }
        let mut dx = dy.expect("every chunk has an output gradient");
        // Blocks, rebuilding the recomputed ones' caches from the chunk's block input.
        let mut caches = state.blocks;
        if caches.iter().any(Option::is_none) {
            let (_, full) = self.run_blocks(m, i, j, &shard, &state.blocks_input, true)?;
            for (c, f) in caches.iter_mut().zip(full) {
                if c.is_none() {
                    *c = f;
                }
            }
        }
        let blocks = chunk_blocks(self.ctx(m).prog, i as usize);
        if let Some(stack) = self.ctx(m).stack {
            let env = Env::new(
                self.groups.as_deref(),
                self.modules[m].as_ref().expect("held"),
                &shard,
                m,
                j,
            );
            for (b, cache) in blocks.zip(&caches).rev() {
                let name = format!("{}.blocks.{b}", prefix(unit));
                let cache = cache.as_ref().expect("rebuilt above");
                dx = block_backward(
                    &*self.math,
                    &mut self.net,
                    &env,
                    &self.params,
                    &name,
                    b,
                    cache,
                    &dx,
                    &stack,
                    &mut self.grads,
                )?;
            }
        }
        for cache in state.pre.iter().rev() {
            match cache {
                LayerCache::EncoderEmbed {
                    patches,
                    source,
                    pre_norm,
                } => {
                    self.encoder_embed_backward(
                        m,
                        *source,
                        &mine,
                        patches,
                        pre_norm.as_ref(),
                        &dx,
                    )?;
                }
                LayerCache::LlmEmbed => {
                    self.embed_backward(m, j, &shard, &mine, &dx)?;
                    self.reroute_backward(m, j)?;
                }
                _ => unreachable!("only embeddings are pre layers"),
            }
        }
        if i > 0 {
            self.dgrads.insert(ChunkKey::new(m, i - 1, j), dx);
        } else if matches!(unit, Unit::Projector(_)) {
            let b = self.ctx(m).incoming.expect("checked in forward");
            let store = self.stores.entry(StoreKey::new(b, false)).or_default();
            store.insert_rows(dx, keys_of(&mine));
        }
        Ok(())
    }

    pub(super) fn embed_backward(
        &mut self,
        m: usize,
        j: u32,
        shard: &Sharding,
        mine: &[RowRef],
        de: &Tensor,
    ) -> Result<(), RuntimeError> {
        let (batch, _) = self.batch();
        let s = batch.seq_len;
        let sources = self.placeholder_sources(m, batch);
        // Placeholder rows' gradients go back through their boundaries, as rows of `de`.
        let shared = std::sync::Arc::new(de.clone());
        let mut picks: Vec<(usize, Vec<(Key, usize)>)> = Vec::new();
        let (mut toks, mut at_tok) = (Vec::new(), Vec::new());
        for (k, r) in mine.iter().enumerate() {
            let tok = batch.tokens[r.sample as usize * s + r.pos as usize];
            if let Some(&(_, b)) = sources.iter().find(|x| x.0 == tok) {
                let row = self.placeholders[r.sample as usize][r.pos as usize];
                let b = b.expect("checked in forward");
                let key = Key {
                    sample: r.sample,
                    row,
                };
                match picks.iter_mut().find(|(x, _)| *x == b) {
                    Some((_, v)) => v.push((key, k)),
                    None => picks.push((b, vec![(key, k)])),
                }
            } else {
                toks.push(tok as usize);
                at_tok.push(k);
            }
        }
        let dtable = if self.ctx(m).tp_group.len() > 1 {
            let tokens = self.local_tokens(m, shard);
            let held = self.vocab_held(m);
            let env = Env::new(
                self.groups.as_deref(),
                self.modules[m].as_ref().expect("held"),
                shard,
                m,
                j,
            );
            let mx = &*self.math;
            let de_all = env.gather(mx, &mut self.net, 0, vocab::EMBED_BACKWARD, de)?;
            vocab::embed_grad(mx, &de_all, &tokens, &held)?
        } else {
            let mx = &*self.math;
            mx.scatter_add_rows(self.cfg.llm.vocab, &mx.gather_rows(de, &at_tok)?, &toks)?
        };
        let mx = &*self.math;
        let at: Vec<usize> = mine.iter().map(|r| r.pos as usize).collect();
        for (b, v) in picks {
            self.stores
                .entry(StoreKey::new(b, false))
                .or_default()
                .insert_picked(shared.clone(), v);
        }
        accumulate(&*self.math, &mut self.grads, "llm.embed.weight", &dtable)?;
        if self.cfg.llm.learned_positions {
            let dpos = mx.scatter_add_rows(self.cfg.llm.seq_len, de, &at)?;
            accumulate(&*self.math, &mut self.grads, "llm.pos", &dpos)?;
        }
        Ok(())
    }
}
