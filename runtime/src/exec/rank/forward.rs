//! A chunk's forward: embeddings or boundary rows in, blocks, and the tail (an encoder's norm, the projector, or the language model's head and loss).

use super::*;

impl<'a> RankState<'a> {
    pub(super) fn forward_chunk(&mut self, m: usize, i: u32, j: u32) -> Result<(), RuntimeError> {
        let shard = self.shard(m, j);
        let mine = shard.mine();
        let c = self.ctx(m);
        let (unit, last) = (c.unit, c.last_chunk());
        let mut pre = Vec::new();
        let x = if i == 0 {
            match unit {
                Unit::Encoder(src) => {
                    let (x, cache) = self.encoder_embed(m, src, &mine)?;
                    pre.push(cache);
                    x
                }
                Unit::Projector(_) => self.boundary_rows(m, j, &mine)?,
                Unit::Llm => {
                    pre.push(LayerCache::LlmEmbed);
                    self.reroute_forward(m, j)?;
                    self.embed(m, j, &mine)?
                }
            }
        } else {
            self.acts
                .remove(&ChunkKey::new(m, i, j))
                .ok_or_else(|| self.missing("input activations", ChunkKey::new(m, i, j)))?
        };
        let (y, blocks) = self.run_blocks(m, i, j, &shard, &x, false)?;
        let mut post = Vec::new();
        let out = if i == last {
            self.finish(m, j, &shard, &mine, y, &mut post)?
        } else {
            Some(y)
        };
        if let Some(out) = out {
            if i < last {
                self.acts.insert(ChunkKey::new(m, i + 1, j), out);
            } else if let Some(b) = self.ctx(m).outgoing {
                // Folded, the rows are partial sums of every local row.
                let folded = self.folds(m).0;
                let rows = if folded { shard.local() } else { &mine[..] };
                // Class rows leave no row.
                let rows: Vec<RowRef> = rows.iter().filter(|r| !r.lead).copied().collect();
                let keys = keys_of(&rows);
                if folded {
                    self.partials
                        .entry(b)
                        .or_default()
                        .extend(keys.iter().copied());
                }
                let store = self.stores.entry(StoreKey::new(b, true)).or_default();
                store.insert_rows(out, keys);
            }
        }
        self.chunks.insert(
            ChunkKey::new(m, i, j),
            ChunkState {
                pre,
                blocks_input: x,
                blocks,
                post,
            },
        );
        Ok(())
    }

    /// The blocks of chunk `i` from `x`; caches of those not recomputed (all when
    /// `keep_all`).
    pub(super) fn run_blocks(
        &mut self,
        m: usize,
        i: u32,
        j: u32,
        shard: &Sharding,
        x: &Tensor,
        keep_all: bool,
    ) -> Result<(Tensor, Vec<Option<BlockCache>>), RuntimeError> {
        let c = self.ctx(m);
        let p = c.prog;
        let blocks = if matches!(c.unit, Unit::Projector(_)) {
            0..0
        } else {
            chunk_blocks(p, i as usize)
        };
        let recomputed = match p.recompute.policy {
            RecomputePolicy::None => 0,
            _ => p.recompute.layers.map_or(blocks.len(), |n| n as usize),
        };
        let (unit, stack) = (c.unit, c.stack);
        let env = Env::new(
            self.groups.as_deref(),
            self.modules[m].as_ref().expect("held"),
            shard,
            m,
            j,
        );
        let mut x = x.clone();
        let mut caches = Vec::with_capacity(blocks.len());
        let Some(stack) = stack else {
            return Ok((x, caches));
        };
        for (k, b) in blocks.enumerate() {
            let name = format!("{}.blocks.{b}", prefix(unit));
            let (y, cache) = block_forward(
                &*self.math,
                &mut self.net,
                &env,
                &self.params,
                &name,
                b,
                &x,
                &stack,
                unit == Unit::Llm,
            )?;
            caches.push((keep_all || k >= recomputed).then_some(cache));
            x = y;
        }
        Ok((x, caches))
    }

    /// The last chunk's tail: the encoder's final norm, the projector, or the language
    /// model's norm, head and loss (which ends the forward: `None`).
    pub(super) fn finish(
        &mut self,
        m: usize,
        j: u32,
        shard: &Sharding,
        mine: &[RowRef],
        y: Tensor,
        post: &mut Vec<LayerCache>,
    ) -> Result<Option<Tensor>, RuntimeError> {
        let c = self.ctx(m);
        let (unit, sp, t) = (c.unit, c.prog.sequence_parallel, c.coord[0]);
        match unit {
            Unit::Encoder(src) => Ok(Some(self.encoder_tail(m, src, mine, y, post)?)),
            Unit::Projector(_) => {
                let env = Env::new(
                    self.groups.as_deref(),
                    self.modules[m].as_ref().expect("held"),
                    shard,
                    m,
                    j,
                );
                let fold = self.folds(m).0;
                let act = self.projector_act(unit);
                let (out, cache) = mlp_forward(
                    &*self.math,
                    &mut self.net,
                    &env,
                    &self.params,
                    &prefix(unit),
                    act,
                    &y,
                    fold,
                )?;
                post.push(LayerCache::Mlp(cache));
                Ok(Some(out))
            }
            Unit::Llm => {
                let norm = self.norm_of(m);
                let (hf, ln) = norm_named(&*self.math, &self.params, "llm.ln_f", &y, norm)?;
                if self.ctx(m).tp_group.len() > 1 {
                    return self.head_vocab_parallel(m, j, shard, hf, ln, post);
                }
                let logits = linear_named(&*self.math, &self.params, self.head_name(), &hf)?;
                let (batch, layout) = self.batch();
                let s = batch.seq_len;
                let targets: Vec<i64> = mine
                    .iter()
                    .map(|r| batch.targets[r.sample as usize * s + r.pos as usize])
                    .collect();
                let (sum, dlogits) = self.math.cross_entropy(&logits, &targets, layout.targets)?;
                if self.keep_logits {
                    let rows = mine.iter().map(|r| (r.sample, r.pos)).collect();
                    self.logits.push(LogitRows {
                        rows,
                        vocab_start: 0,
                        values: logits,
                    });
                }
                // Without sequence parallelism every tp rank computes the same rows.
                if sp || t == 0 {
                    self.loss += sum;
                }
                debug_assert!(targets.iter().all(|&x| x == IGNORE || x >= 0));
                post.push(LayerCache::Head { ln, hf, dlogits });
                Ok(None)
            }
        }
    }

    /// The head and loss under a vocabulary-parallel head: every local row's logits of this
    /// rank's vocabulary slice, and the cross-entropy over the whole vocabulary (each tp rank
    /// computes it for every local row; tp rank 0 counts it).
    fn head_vocab_parallel(
        &mut self,
        m: usize,
        j: u32,
        shard: &Sharding,
        hf: Tensor,
        ln: LayerNormCache,
        post: &mut Vec<LayerCache>,
    ) -> Result<Option<Tensor>, RuntimeError> {
        let held = self.vocab_held(m);
        let t = self.ctx(m).coord[0];
        let env = Env::new(
            self.groups.as_deref(),
            self.modules[m].as_ref().expect("held"),
            shard,
            m,
            j,
        );
        let mx = &*self.math;
        let hf_all = env.gather(mx, &mut self.net, 0, vocab::HEAD_GATHER, &hf)?;
        let logits = linear_named(mx, &self.params, self.head_name(), &hf_all)?;
        let (batch, layout) = self.batch();
        let s = batch.seq_len;
        let targets: Vec<i64> = shard
            .local()
            .iter()
            .map(|r| batch.targets[r.sample as usize * s + r.pos as usize])
            .collect();
        let global = layout.targets;
        let (sum, dlogits) =
            vocab::cross_entropy(mx, &mut self.net, &env, &logits, &targets, &held, global)?;
        if t == 0 {
            self.loss += sum;
        }
        if self.keep_logits {
            let rows = shard.local().iter().map(|r| (r.sample, r.pos)).collect();
            self.logits.push(LogitRows {
                rows,
                vocab_start: held.start,
                values: logits,
            });
        }
        post.push(LayerCache::Head {
            ln,
            hf: hf_all,
            dlogits,
        });
        Ok(None)
    }

    /// A projector's input rows, from its incoming boundary.
    pub(super) fn boundary_rows(
        &mut self,
        m: usize,
        j: u32,
        mine: &[RowRef],
    ) -> Result<Tensor, RuntimeError> {
        let b = self.ctx(m).incoming.ok_or_else(|| {
            invalid(format!(
                "module `{}` has no incoming boundary",
                self.program.modules[m].name
            ))
        })?;
        let w = self.program.boundaries[b].width as usize;
        self.rows_of(b, j, true, &keys_of(mine), w)
    }

    /// The rows `keys` from boundary `b`'s store (forward or backward) as one tensor.
    pub(super) fn rows_of(
        &self,
        b: usize,
        j: u32,
        forward: bool,
        keys: &[Key],
        w: usize,
    ) -> Result<Tensor, RuntimeError> {
        let dir = if forward { "forward" } else { "backward" };
        let empty = RowStore::default();
        let store = self
            .stores
            .get(&StoreKey::new(b, forward))
            .unwrap_or(&empty);
        store.take(&*self.math, keys, w).map_err(|e| match e {
            Taken::Missing(Key { sample: s, row }) => self.no_row(b, j, s, row, dir),
            Taken::Error(e) => e,
        })
    }

    pub(super) fn no_row(
        &self,
        b: usize,
        j: u32,
        sample: u32,
        row: u64,
        dir: &str,
    ) -> RuntimeError {
        no_row(
            self.rank,
            &self.program.boundaries[b].name,
            j,
            sample,
            row,
            dir,
        )
    }

    /// The language model's input rows: token embeddings, with placeholders replaced by the
    /// incoming boundary's rows (the k-th placeholder of a sample takes its row k), plus
    /// positions.
    pub(super) fn embed(
        &mut self,
        m: usize,
        j: u32,
        mine: &[RowRef],
    ) -> Result<Tensor, RuntimeError> {
        let (batch, _) = self.batch();
        let s = batch.seq_len;
        let sources = self.placeholder_sources(m, batch);
        let h = self.cfg.llm.stack.hidden;
        // Which rows take a token's embedding and which a boundary's row, and where they go.
        let (mut toks, mut at_tok) = (Vec::new(), Vec::new());
        let mut from: Vec<(usize, Vec<Key>, Vec<usize>)> = Vec::new();
        for (k, r) in mine.iter().enumerate() {
            let tok = batch.tokens[r.sample as usize * s + r.pos as usize];
            match sources.iter().find(|x| x.0 == tok) {
                Some(&(_, b)) => {
                    let b = b.ok_or_else(|| {
                        invalid(format!(
                            "placeholders of token {tok} but no boundary brings them"
                        ))
                    })?;
                    let key = Key {
                        sample: r.sample,
                        row: self.placeholders[r.sample as usize][r.pos as usize],
                    };
                    match from.iter_mut().find(|(x, _, _)| *x == b) {
                        Some((_, keys, to)) => {
                            keys.push(key);
                            to.push(k);
                        }
                        None => from.push((b, vec![key], vec![k])),
                    }
                }
                None => {
                    toks.push(tok as usize);
                    at_tok.push(k);
                }
            }
        }
        let tokens_part = if self.ctx(m).tp_group.len() > 1 {
            let all = self.embed_vocab_parallel(m, j)?;
            self.math.gather_rows(&all, &at_tok)?
        } else {
            self.math
                .gather_rows(self.params.t("llm.embed.weight"), &toks)?
        };
        let mx = &*self.math;
        let mut parts = vec![tokens_part];
        let mut places = vec![at_tok];
        for (b, keys, to) in from {
            parts.push(self.rows_of(b, j, true, &keys, h)?);
            places.push(to);
        }
        let rows = mx.scatter_rows(&parts, &places, mine.len(), h)?;
        if !self.cfg.llm.learned_positions {
            return Ok(rows);
        }
        let at: Vec<usize> = mine.iter().map(|r| r.pos as usize).collect();
        mx.add(&rows, &mx.gather_rows(self.params.t("llm.pos"), &at)?)
    }

    /// The token rows of this rank's rows (placeholders zero) under a vocabulary-parallel
    /// embedding: each tp rank's rows of the tokens it holds, summed over the tp group.
    fn embed_vocab_parallel(&mut self, m: usize, j: u32) -> Result<Tensor, RuntimeError> {
        let shard = self.shard(m, j);
        let tokens = self.local_tokens(m, &shard);
        let held = self.vocab_held(m);
        let part = vocab::embed_partial(
            &*self.math,
            self.params.t("llm.embed.weight"),
            &tokens,
            &held,
        )?;
        let env = Env::new(
            self.groups.as_deref(),
            self.modules[m].as_ref().expect("held"),
            &shard,
            m,
            j,
        );
        env.reduce(&*self.math, &mut self.net, 0, vocab::EMBED, part)
    }

    /// Every local row's token, `None` at a placeholder.
    pub(super) fn local_tokens(&self, m: usize, shard: &Sharding) -> Vec<Option<usize>> {
        let (batch, _) = self.batch();
        let s = batch.seq_len;
        let sources = self.placeholder_sources(m, batch);
        shard
            .local()
            .iter()
            .map(|r| {
                let tok = batch.tokens[r.sample as usize * s + r.pos as usize];
                (!sources.iter().any(|x| x.0 == tok)).then_some(tok as usize)
            })
            .collect()
    }

    /// The vocabulary rows this rank's embedding and head slices hold.
    pub(super) fn vocab_held(&self, m: usize) -> std::ops::Range<usize> {
        let c = self.ctx(m);
        vocab::range(self.cfg.llm.vocab, c.tp_group.len(), c.coord[0] as usize)
    }

    /// The norm kind of module `m`'s stack (a projector has none; LayerNorm stands in).
    pub(super) fn norm_of(&self, m: usize) -> crate::reference::Norm {
        self.ctx(m)
            .stack
            .map_or(crate::reference::BlockArch::REFERENCE.norm, |s| {
                s.block.norm
            })
    }

    /// A projector's activation.
    pub(super) fn projector_act(&self, unit: Unit) -> crate::reference::Act {
        match unit {
            Unit::Projector(s) => self
                .cfg
                .encoder(s)
                .map_or(crate::reference::Act::GeluTanh, |e| e.projector_act),
            _ => crate::reference::Act::GeluTanh,
        }
    }

    /// The output layer's name: the embedding's when tied.
    pub(super) fn head_name(&self) -> &'static str {
        if self.cfg.llm.tied_embeddings {
            "llm.embed"
        } else {
            "llm.head"
        }
    }

    /// The placeholder token of every encoder of the batch and the boundary that brings its
    /// rows to module `m`.
    pub(super) fn placeholder_sources(&self, m: usize, batch: &Batch) -> Vec<(i64, Option<usize>)> {
        let c = self.ctx(m);
        self.cfg
            .encoders()
            .iter()
            .map(|(src, _)| {
                let b = c.sources.iter().find(|x| x.0 == *src).map(|x| x.1);
                (batch.encoder_inputs(*src).1, b)
            })
            .collect()
    }
}
