//! One rank's interpreter: its memory (parameter slices, gradients, Adam state, activations
//! between pipeline chunks, caches for backward, boundary rows) and the meaning of every
//! instruction.

use std::collections::HashMap;

use hetpar_ir::layout::RecomputePolicy;
use hetpar_ir::model::ModuleKind;
use hetpar_ir::program::{Instruction, ModuleProgram, Program, Transfer};

use super::block::{
    block_backward, block_forward, mlp_backward, mlp_forward, norm_bytes, tensor_bytes, BlockCache,
    MlpCache,
};
use super::collective::{self, GroupCollectives};
use super::comm::{tag, Env, Kind};
use super::fused;
use super::math::{
    accumulate, linear_named, linear_named_backward, norm_named, norm_named_backward, CpuMath, Math,
};
use super::rows::{Key, RowStore, Taken};
use super::shard::{pass_items, sharding, Place, RowRef, Sharding, Unit, Work};
use super::shard_params::{belongs, chunk_blocks, local_params, prefix, split_of, Split};
use crate::reference::batch::{Layout, IGNORE};
use crate::reference::layers::LayerNormCache;
use crate::reference::params::Source;
use crate::reference::{Adam, Batch, Config, Grads, Params};
use crate::tensor::Tensor;
use crate::transport::{Endpoint, Payload};
use crate::RuntimeError;

/// A module as this rank sees it.
pub struct ModuleCtx<'a> {
    pub prog: &'a ModuleProgram,
    pub unit: Unit,
    /// (tp, cp, dp, pp).
    pub coord: [u32; 4],
    pub tp_group: Vec<u32>,
    pub cp_group: Vec<u32>,
    /// Same tp and stage, every cp and dp rank: where a gradient is summed.
    pub dp_cp_group: Vec<u32>,
    /// The whole stage: where a replicated gradient is summed under sequence parallelism.
    pub stage_group: Vec<u32>,
    /// Parameter names of this rank's stage.
    pub names: Vec<String>,
    pub incoming: Option<usize>,
    pub outgoing: Option<usize>,
    /// The language model's incoming boundaries by the encoder whose rows they carry.
    pub sources: Vec<(Source, usize)>,
    pub heads: usize,
    pub width: usize,
}

fn source_of(kind: ModuleKind) -> Option<Source> {
    match kind {
        ModuleKind::VisionEncoder => Some(Source::Vision),
        ModuleKind::AudioEncoder => Some(Source::Audio),
        _ => None,
    }
}

/// What module `idx` of the program computes: a projector computes the rows of the encoder
/// whose boundary feeds it.
pub fn unit_of(program: &Program, idx: usize) -> Option<Unit> {
    let m = &program.modules[idx];
    match m.kind {
        ModuleKind::LanguageModel => Some(Unit::Llm),
        ModuleKind::Projector => program
            .boundaries
            .iter()
            .filter(|b| b.to == m.name)
            .find_map(|b| {
                let from = program.modules.iter().find(|x| x.name == b.from)?;
                source_of(from.kind)
            })
            .map(Unit::Projector),
        k => source_of(k).map(Unit::Encoder),
    }
}

/// The groups of the rank at `coord` (tp, cp, dp, pp) of module `m`: its tensor-parallel
/// group, context-parallel group, data × context group (where gradients are summed) and whole
/// stage (where replicated gradients are summed under sequence parallelism).
fn groups_at(m: &ModuleProgram, [t, c, d, s]: [u32; 4]) -> [Vec<u32>; 4] {
    let tp_group = (0..m.tp).map(|x| m.rank_at(x, c, d, s)).collect();
    let cp_group = (0..m.cp).map(|x| m.rank_at(t, x, d, s)).collect();
    let mut dp_cp_group = Vec::new();
    let mut stage_group = Vec::new();
    for dd in 0..m.dp {
        for cc in 0..m.cp {
            dp_cp_group.push(m.rank_at(t, cc, dd, s));
            for tt in 0..m.tp {
                stage_group.push(m.rank_at(tt, cc, dd, s));
            }
        }
    }
    [tp_group, cp_group, dp_cp_group, stage_group]
}

/// Every group of more than one rank that a collective of `program` may run over, each once,
/// in one order every rank computes alike (modules in program order, then grid coordinates,
/// then every rank, for point-to-point messages): the order in which group communicators are
/// created, so creation cannot deadlock.
pub fn program_groups(program: &Program) -> Vec<Vec<u32>> {
    let mut out: Vec<Vec<u32>> = Vec::new();
    for m in &program.modules {
        for s in 0..m.pp {
            for d in 0..m.dp {
                for c in 0..m.cp {
                    for t in 0..m.tp {
                        for g in groups_at(m, [t, c, d, s]) {
                            if g.len() > 1 && !out.contains(&g) {
                                out.push(g);
                            }
                        }
                    }
                }
            }
        }
    }
    // Every rank, for point-to-point messages (a boundary's fused transfer).
    let mut all: Vec<u32> = program.ranks.iter().map(|r| r.rank).collect();
    all.sort_unstable();
    if all.len() > 1 && !out.contains(&all) {
        out.push(all);
    }
    out
}

impl<'a> ModuleCtx<'a> {
    pub fn new(
        program: &'a Program,
        idx: usize,
        cfg: &Config,
        full: &Params,
        rank: u32,
    ) -> Option<ModuleCtx<'a>> {
        let m = &program.modules[idx];
        let coord = m.coord_of(rank)?;
        let unit = unit_of(program, idx)?;
        let s = coord[3];
        let [tp_group, cp_group, dp_cp_group, stage_group] = groups_at(m, coord);
        let names = full
            .iter()
            .map(|(n, _)| n.clone())
            .filter(|n| belongs(n, unit, m, s))
            .collect();
        let find = |f: &dyn Fn(&hetpar_ir::program::BoundaryProgram) -> bool| {
            program.boundaries.iter().position(f)
        };
        let (heads, width) = match unit {
            Unit::Encoder(s) => (cfg.encoder(s).a, cfg.encoder(s).h),
            Unit::Projector(_) => (1, cfg.h),
            Unit::Llm => (cfg.a, cfg.h),
        };
        let sources = program
            .boundaries
            .iter()
            .enumerate()
            .filter(|(_, b)| b.to == m.name)
            .filter_map(|(k, b)| {
                let from = program.modules.iter().position(|x| x.name == b.from)?;
                match unit_of(program, from)? {
                    Unit::Projector(s) | Unit::Encoder(s) => Some((s, k)),
                    Unit::Llm => None,
                }
            })
            .collect();
        Some(ModuleCtx {
            sources,
            prog: m,
            unit,
            coord,
            tp_group,
            cp_group,
            dp_cp_group,
            stage_group,
            names,
            incoming: find(&|b| b.to == m.name),
            outgoing: find(&|b| b.from == m.name),
            heads: heads / m.tp as usize,
            width,
        })
    }

    fn last_chunk(&self) -> u32 {
        self.prog.pp * self.prog.vpp - 1
    }
}

/// Global chunk `chunk` of module `module` (by index in the program) for unit `unit`: its
/// pipeline tensors and its state between forward and backward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ChunkKey {
    module: usize,
    chunk: u32,
    unit: u32,
}

impl ChunkKey {
    fn new(module: usize, chunk: u32, unit: u32) -> Self {
        ChunkKey {
            module,
            chunk,
            unit,
        }
    }
}

/// Boundary `boundary`'s (by index) rows, `forward`, or their gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct StoreKey {
    boundary: usize,
    forward: bool,
}

impl StoreKey {
    fn new(boundary: usize, forward: bool) -> Self {
        StoreKey { boundary, forward }
    }
}

/// Module `module` (by index) in its unit `unit` (an encoder pass or a micro-batch).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct UnitKey {
    module: usize,
    unit: u32,
}

/// Caches of one layer of a chunk.
enum LayerCache {
    EncoderEmbed {
        patches: Tensor,
        source: Source,
    },
    LlmEmbed,
    EncoderNorm(LayerNormCache, Source),
    Mlp(MlpCache),
    Head {
        ln: LayerNormCache,
        hf: Tensor,
        dlogits: Tensor,
    },
}

impl LayerCache {
    fn bytes(&self) -> usize {
        match self {
            LayerCache::EncoderEmbed { patches, .. } => tensor_bytes([patches]),
            LayerCache::LlmEmbed => 0,
            LayerCache::EncoderNorm(ln, _) => norm_bytes(ln),
            LayerCache::Mlp(m) => m.bytes(),
            LayerCache::Head { ln, hf, dlogits } => norm_bytes(ln) + tensor_bytes([hf, dlogits]),
        }
    }
}

/// A chunk's state between its forward and backward: the caches of the layers it keeps, and
/// the input of the first block (from which recomputed blocks are rebuilt).
struct ChunkState {
    pre: Vec<LayerCache>,
    blocks_input: Tensor,
    /// Caches of the blocks not recomputed, by position in the chunk.
    blocks: Vec<Option<BlockCache>>,
    post: Vec<LayerCache>,
}

impl ChunkState {
    fn bytes(&self) -> usize {
        self.pre
            .iter()
            .chain(&self.post)
            .map(LayerCache::bytes)
            .sum::<usize>()
            + tensor_bytes([&self.blocks_input])
            + self
                .blocks
                .iter()
                .flatten()
                .map(BlockCache::bytes)
                .sum::<usize>()
    }
}

pub struct RankState<'a> {
    pub rank: u32,
    pub ep: Endpoint,
    pub cfg: Config,
    pub program: &'a Program,
    pub modules: Vec<Option<ModuleCtx<'a>>>,
    pub params: Params,
    pub grads: Grads,
    pub adam: Adam,
    /// The backend's arithmetic: the CPU reference unless [`RankState::with_math`] says else.
    math: Box<dyn Math + 'a>,
    /// Collectives over fixed groups (NCCL), when the run has them.
    groups: Option<Box<dyn GroupCollectives + 'a>>,
    /// Pipeline sends held back to go out with the next receive as one grouped call (group
    /// collectives that exchange messages only): a lone send would hold the stream until its
    /// receive is posted, and pipeline schedules have both neighbours send before receiving.
    held_sends: Vec<(u32, Tensor)>,
    batch: Option<(&'a Batch, Layout)>,
    /// For this step's batch, per sample and position, the row a placeholder there takes.
    placeholders: Vec<Vec<u64>>,
    acts: HashMap<ChunkKey, Tensor>,
    dgrads: HashMap<ChunkKey, Tensor>,
    chunks: HashMap<ChunkKey, ChunkState>,
    /// Each boundary's rows (forward) and their gradients (backward) on this rank: keys
    /// (sample, row) are unique in a step, whatever unit brought them, so a pass's rows and
    /// the micro-batches they feed share one store.
    stores: HashMap<StoreKey, RowStore>,
    shards: HashMap<UnitKey, Sharding>,
    /// This step's share of the summed cross-entropy (f64, before normalisation).
    pub loss: f64,
    /// The most bytes this rank's tensors held at once, measured after every instruction.
    pub peak_bytes: usize,
}

fn invalid(msg: String) -> RuntimeError {
    RuntimeError::InvalidProgram(msg)
}

impl<'a> RankState<'a> {
    pub fn new(
        rank: u32,
        ep: Endpoint,
        cfg: Config,
        program: &'a Program,
        full: &Params,
        lr: f64,
    ) -> RankState<'a> {
        let modules: Vec<Option<ModuleCtx<'a>>> = (0..program.modules.len())
            .map(|i| ModuleCtx::new(program, i, &cfg, full, rank))
            .collect();
        let mut params = Params::default();
        for m in modules.iter().flatten() {
            let p = local_params(full, m.unit, m.prog, m.coord[3], m.coord[0]);
            for (n, t) in p.iter() {
                params.insert(n.clone(), t.clone());
            }
        }
        let grads = params.zeros_like();
        RankState {
            math: Box::new(CpuMath),
            groups: None,
            held_sends: Vec::new(),
            rank,
            ep,
            cfg,
            program,
            modules,
            params,
            grads,
            adam: Adam::new(lr),
            batch: None,
            placeholders: Vec::new(),
            acts: HashMap::new(),
            dgrads: HashMap::new(),
            chunks: HashMap::new(),
            stores: HashMap::new(),
            shards: HashMap::new(),
            loss: 0.0,
            peak_bytes: 0,
        }
    }

    /// The same rank computing with `math` (a GPU's, say) instead of the CPU reference.
    pub fn with_math(mut self, math: Box<dyn Math + 'a>) -> RankState<'a> {
        self.math = math;
        self
    }

    /// Runs the collectives `groups` covers with it from now on.
    pub fn set_groups(&mut self, groups: Box<dyn GroupCollectives + 'a>) {
        self.groups = Some(groups);
    }

    /// Computes with `math` from now on.
    pub fn set_math(&mut self, math: Box<dyn Math + 'a>) {
        self.math = math;
    }

    /// Starts a step on `batch`: gradients and the loss at zero.
    pub fn begin_step(&mut self, batch: &'a Batch, layout: Layout) {
        self.placeholders = placeholder_index(batch);
        self.batch = Some((batch, layout));
        self.grads = self.params.zeros_like();
        self.loss = 0.0;
        self.shards.clear();
    }

    /// Ends a step: every pipeline tensor must have been consumed.
    pub fn end_step(&mut self) -> Result<(), RuntimeError> {
        self.flush_sends()?;
        self.stores.clear();
        if let Some(k) = self.acts.keys().chain(self.dgrads.keys()).next() {
            return Err(invalid(format!(
                "rank {}: a pipeline tensor of module {} chunk {} micro-batch {} was never used",
                self.rank, k.module, k.chunk, k.unit
            )));
        }
        Ok(())
    }

    /// Interprets this rank's instruction list of the program.
    pub fn interpret(&mut self) -> Result<(), RuntimeError> {
        let program = self.program;
        let rp = program
            .ranks
            .iter()
            .find(|r| r.rank == self.rank)
            .ok_or_else(|| invalid(format!("rank {} has no instructions", self.rank)))?;
        for ins in &rp.instructions {
            self.exec(ins)?;
        }
        Ok(())
    }

    /// Bytes held now: weights, gradients, Adam's moments, caches, pipeline tensors and
    /// boundary rows.
    pub fn resident_bytes(&self) -> usize {
        let params = tensor_bytes(self.params.iter().map(|(_, t)| t));
        let adam = tensor_bytes(
            self.adam
                .exp_avg()
                .iter()
                .chain(self.adam.exp_avg_sq().iter())
                .map(|(_, t)| t),
        );
        let caches: usize = self.chunks.values().map(ChunkState::bytes).sum();
        let pipes = tensor_bytes(self.acts.values().chain(self.dgrads.values()));
        let rows: usize = self.stores.values().map(RowStore::bytes).sum();
        2 * params + adam + caches + pipes + rows
    }

    /// Records the resident bytes if they are a new peak: after every instruction that
    /// allocates (a forward, a receive, a boundary transfer).
    fn note_memory(&mut self) {
        self.peak_bytes = self.peak_bytes.max(self.resident_bytes());
    }

    fn module(&self, name: &str) -> Result<usize, RuntimeError> {
        let m = self
            .program
            .modules
            .iter()
            .position(|m| m.name == name)
            .ok_or_else(|| invalid(format!("no module `{name}`")))?;
        self.held(m)?;
        Ok(m)
    }

    /// Module `m`, if this rank holds it.
    fn held(&self, m: usize) -> Result<&ModuleCtx<'a>, RuntimeError> {
        self.modules.get(m).and_then(Option::as_ref).ok_or_else(|| {
            invalid(format!(
                "rank {}: an instruction names module {m}, which this rank does not hold",
                self.rank
            ))
        })
    }

    fn ctx(&self, m: usize) -> &ModuleCtx<'a> {
        self.modules[m].as_ref().expect("held() checked it")
    }

    /// Whether module `m`'s outgoing boundary folds its last reduction into the forward
    /// transfer, and its first backward gather into the backward one.
    fn folds(&self, m: usize) -> (bool, bool) {
        self.ctx(m)
            .outgoing
            .and_then(|b| self.program.boundaries.get(b))
            .map_or((false, false), |b| (b.fold_forward, b.fold_backward))
    }

    fn boundary_index(&self, name: &str) -> Result<usize, RuntimeError> {
        self.program
            .boundaries
            .iter()
            .position(|x| x.name == name)
            .ok_or_else(|| invalid(format!("no boundary `{name}`")))
    }

    fn ops(&self, b: usize, j: u32, forward: bool) -> Result<&'a [Transfer], RuntimeError> {
        let program = self.program;
        let bp = &program.boundaries[b];
        let ops = if forward { &bp.forward } else { &bp.backward };
        ops.get(j as usize).map(Vec::as_slice).ok_or_else(|| {
            invalid(format!(
                "boundary `{}` has no unit {j} (encoder pass or micro-batch)",
                bp.name
            ))
        })
    }

    fn exec(&mut self, ins: &Instruction) -> Result<(), RuntimeError> {
        match ins {
            Instruction::Forward {
                module,
                stage,
                chunk,
                micro_batch,
            } => self.forward(self.module(module)?, *stage, *chunk, *micro_batch),
            Instruction::Backward {
                module,
                stage,
                chunk,
                micro_batch,
            } => self.backward(self.module(module)?, *stage, *chunk, *micro_batch),
            Instruction::SendActivation {
                module,
                micro_batch,
                chunk,
                to,
            } => self.send_activation(self.module(module)?, *micro_batch, *chunk, *to),
            Instruction::RecvActivation {
                module,
                micro_batch,
                chunk,
                from,
            } => self.recv_activation(self.module(module)?, *micro_batch, *chunk, *from),
            Instruction::SendGradient {
                module,
                micro_batch,
                chunk,
                to,
            } => self.send_gradient(self.module(module)?, *micro_batch, *chunk, *to),
            Instruction::RecvGradient {
                module,
                micro_batch,
                chunk,
                from,
            } => self.recv_gradient(self.module(module)?, *micro_batch, *chunk, *from),
            Instruction::BoundaryForward {
                boundary,
                micro_batch,
            } => {
                let b = self.boundary_index(boundary)?;
                let ops = self.ops(b, *micro_batch, true)?;
                self.boundary_forward(b, *micro_batch, ops)
            }
            Instruction::BoundaryBackward {
                boundary,
                micro_batch,
            } => {
                let b = self.boundary_index(boundary)?;
                let ops = self.ops(b, *micro_batch, false)?;
                self.boundary_backward(b, *micro_batch, ops)
            }
            Instruction::GradSync { module, stage } => self.grad_sync(self.module(module)?, *stage),
            Instruction::OptimizerStep => self.optimizer_step(),
        }
    }

    /// Sends the held pipeline sends now, as one call (before any other communication, so
    /// messages between a pair keep the program's order).
    fn flush_sends(&mut self) -> Result<(), RuntimeError> {
        if !self.held_sends.is_empty() {
            self.exchange_held(&[])?;
        }
        Ok(())
    }

    /// The held pipeline sends and `recvs` as one group exchange; the receipts.
    fn exchange_held(&mut self, recvs: &[(u32, [usize; 2])]) -> Result<Vec<Tensor>, RuntimeError> {
        let sends = std::mem::take(&mut self.held_sends);
        let gc = self
            .groups
            .as_deref()
            .expect("only group exchanges hold sends or receive this way");
        let refs: Vec<(u32, &Tensor)> = sends.iter().map(|(r, t)| (*r, t)).collect();
        gc.exchange(&refs, recvs)
    }

    /// `forward` of module `m` (by index in the program), chunk `chunk` of stage `stage`,
    /// micro-batch `j`.
    pub fn forward(
        &mut self,
        m: usize,
        stage: u32,
        chunk: u32,
        j: u32,
    ) -> Result<(), RuntimeError> {
        let i = chunk * self.held(m)?.prog.pp + stage;
        self.flush_sends()?;
        self.forward_chunk(m, i, j)?;
        self.note_memory();
        Ok(())
    }

    /// `backward`, likewise.
    pub fn backward(
        &mut self,
        m: usize,
        stage: u32,
        chunk: u32,
        j: u32,
    ) -> Result<(), RuntimeError> {
        let i = chunk * self.held(m)?.prog.pp + stage;
        self.flush_sends()?;
        self.backward_chunk(m, i, j)
    }

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
    fn pipe(&mut self, kind: Kind) -> &mut HashMap<ChunkKey, Tensor> {
        match kind {
            Kind::PipelineGradient => &mut self.dgrads,
            _ => &mut self.acts,
        }
    }

    fn send_pipe(
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
        self.ep
            .send_tensor(to, tag(kind, m, j, chunk as usize, 0), &x)
    }

    fn recv_pipe(
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
            .ep
            .recv_payload(from, tag(kind, m, j, chunk as usize, 0))?
            .into_rows(w)
            .map_err(|e| invalid(format!("rank {}: a pipeline message: {e}", self.rank)))?;
        self.pipe(kind).insert(ChunkKey::new(m, chunk, j), x);
        self.note_memory();
        Ok(())
    }

    /// `boundary_forward` of boundary `b` (by index) for micro-batch `j`, executing `ops`.
    pub fn boundary_forward(
        &mut self,
        b: usize,
        j: u32,
        ops: &[Transfer],
    ) -> Result<(), RuntimeError> {
        self.flush_sends()?;
        self.boundary(b, j, true, ops)?;
        self.note_memory();
        Ok(())
    }

    /// `boundary_backward`.
    pub fn boundary_backward(
        &mut self,
        b: usize,
        j: u32,
        ops: &[Transfer],
    ) -> Result<(), RuntimeError> {
        self.flush_sends()?;
        self.boundary(b, j, false, ops)
    }

    /// `optimizer_step`.
    pub fn optimizer_step(&mut self) -> Result<(), RuntimeError> {
        self.flush_sends()?;
        let mx = &*self.math;
        self.adam
            .update_each(&mut self.params, &self.grads, &mut |p, g, m, v, step| {
                mx.adam(p, g, m, v, step)
            })
    }

    fn missing(&self, what: &str, key: ChunkKey) -> RuntimeError {
        invalid(format!(
            "rank {}: no {what} of module `{}` chunk {} micro-batch {} to send",
            self.rank, self.program.modules[key.module].name, key.chunk, key.unit
        ))
    }

    fn batch(&self) -> (&'a Batch, &Layout) {
        let (b, l) = self.batch.as_ref().expect("set by step()");
        (b, l)
    }

    /// The sharding of module `m` on this rank in its pass `j`: an encoder pass for an
    /// encoder or projector, a micro-batch for the language model.
    fn shard(&mut self, m: usize, j: u32) -> Sharding {
        if let Some(s) = self.shards.get(&UnitKey { module: m, unit: j }) {
            return s.clone();
        }
        let program = self.program;
        let c = self.ctx(m);
        let p = c.prog;
        let [t, cc, d, _] = c.coord;
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
        let s = sharding(c.unit, items.as_ref(), batch.seq_len, &work, place);
        self.shards
            .insert(UnitKey { module: m, unit: j }, s.clone());
        s
    }

    fn forward_chunk(&mut self, m: usize, i: u32, j: u32) -> Result<(), RuntimeError> {
        let shard = self.shard(m, j);
        let mine = shard.mine();
        let c = self.ctx(m);
        let (unit, last) = (c.unit, c.last_chunk());
        let mut pre = Vec::new();
        let x = if i == 0 {
            match unit {
                Unit::Encoder(src) => {
                    let (batch, _) = self.batch();
                    let idx: Vec<usize> = mine.iter().map(|r| r.patch as usize).collect();
                    let patches = super::comm::gather_rows(batch.encoder_inputs(src).0, &idx);
                    let pre_name = src.prefix();
                    let x = linear_named(
                        &*self.math,
                        &self.params,
                        &format!("{pre_name}.patch"),
                        &patches,
                    )?;
                    let pos = self.params.t(&format!("{pre_name}.pos"));
                    let at: Vec<usize> = mine.iter().map(|r| r.pos as usize).collect();
                    let x = self.math.add(&x, &self.math.gather_rows(pos, &at)?)?;
                    pre.push(LayerCache::EncoderEmbed {
                        patches,
                        source: src,
                    });
                    x
                }
                Unit::Projector(_) => self.boundary_rows(m, j, &mine)?,
                Unit::Llm => {
                    pre.push(LayerCache::LlmEmbed);
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
                let rows = if self.folds(m).0 {
                    shard.local()
                } else {
                    &mine[..]
                };
                let keys = keys_of(rows);
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
    fn run_blocks(
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
        let (unit, heads) = (c.unit, c.heads);
        let env = Env::new(
            self.groups.as_deref(),
            self.modules[m].as_ref().expect("held"),
            shard,
            m,
            j,
        );
        let mut x = x.clone();
        let mut caches = Vec::with_capacity(blocks.len());
        for (k, b) in blocks.enumerate() {
            let name = format!("{}.blocks.{b}", prefix(unit));
            let (y, cache) = block_forward(
                &*self.math,
                &mut self.ep,
                &env,
                &self.params,
                &name,
                b,
                &x,
                heads,
                unit == Unit::Llm,
            )?;
            caches.push((keep_all || k >= recomputed).then_some(cache));
            x = y;
        }
        Ok((x, caches))
    }

    /// The last chunk's tail: the encoder's final norm, the projector, or the language
    /// model's norm, head and loss (which ends the forward: `None`).
    fn finish(
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
            Unit::Encoder(src) => {
                let (out, ln) = norm_named(
                    &*self.math,
                    &self.params,
                    &format!("{}.ln_f", src.prefix()),
                    &y,
                )?;
                post.push(LayerCache::EncoderNorm(ln, src));
                Ok(Some(out))
            }
            Unit::Projector(_) => {
                let env = Env::new(
                    self.groups.as_deref(),
                    self.modules[m].as_ref().expect("held"),
                    shard,
                    m,
                    j,
                );
                let fold = self.folds(m).0;
                let (out, cache) = mlp_forward(
                    &*self.math,
                    &mut self.ep,
                    &env,
                    &self.params,
                    &prefix(unit),
                    &y,
                    fold,
                )?;
                post.push(LayerCache::Mlp(cache));
                Ok(Some(out))
            }
            Unit::Llm => {
                let (hf, ln) = norm_named(&*self.math, &self.params, "llm.ln_f", &y)?;
                let logits = linear_named(&*self.math, &self.params, "llm.head", &hf)?;
                let (batch, layout) = self.batch();
                let s = batch.seq_len;
                let targets: Vec<i64> = mine
                    .iter()
                    .map(|r| batch.targets[r.sample as usize * s + r.pos as usize])
                    .collect();
                let (sum, dlogits) = self.math.cross_entropy(&logits, &targets, layout.targets)?;
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

    /// A projector's input rows, from its incoming boundary.
    fn boundary_rows(&mut self, m: usize, j: u32, mine: &[RowRef]) -> Result<Tensor, RuntimeError> {
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
    fn rows_of(
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

    fn no_row(&self, b: usize, j: u32, sample: u32, row: u64, dir: &str) -> RuntimeError {
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
    fn embed(&mut self, m: usize, j: u32, mine: &[RowRef]) -> Result<Tensor, RuntimeError> {
        let (batch, _) = self.batch();
        let s = batch.seq_len;
        let sources = self.placeholder_sources(m, batch);
        let h = self.cfg.h;
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
        let mx = &*self.math;
        let mut parts = vec![mx.gather_rows(self.params.t("llm.embed.weight"), &toks)?];
        let mut places = vec![at_tok];
        for (b, keys, to) in from {
            parts.push(self.rows_of(b, j, true, &keys, h)?);
            places.push(to);
        }
        let rows = mx.scatter_rows(&parts, &places, mine.len(), h)?;
        let at: Vec<usize> = mine.iter().map(|r| r.pos as usize).collect();
        mx.add(&rows, &mx.gather_rows(self.params.t("llm.pos"), &at)?)
    }

    /// The placeholder token of every encoder of the batch and the boundary that brings its
    /// rows to module `m`.
    fn placeholder_sources(&self, m: usize, batch: &Batch) -> Vec<(i64, Option<usize>)> {
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

    fn backward_chunk(&mut self, m: usize, i: u32, j: u32) -> Result<(), RuntimeError> {
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
                    Some(self.rows_of(b, j, false, &keys_of(rows), w)?)
                }
            }
        } else {
            Some(
                self.dgrads
                    .remove(&ChunkKey::new(m, i, j))
                    .ok_or_else(|| self.missing("output gradients", ChunkKey::new(m, i, j)))?,
            )
        };
        for cache in state.post.iter().rev() {
            dy = Some(match cache {
                LayerCache::EncoderNorm(ln, src) => norm_named_backward(
                    &*self.math,
                    &self.params,
                    &format!("{}.ln_f", src.prefix()),
                    ln,
                    dy.as_ref().expect("set above"),
                    &mut self.grads,
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
                        &mut self.ep,
                        &env,
                        &self.params,
                        &prefix(unit),
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
                        "llm.head",
                        hf,
                        dlogits,
                        &mut self.grads,
                    )?;
                    norm_named_backward(
                        &*self.math,
                        &self.params,
                        "llm.ln_f",
                        ln,
                        &dhf,
                        &mut self.grads,
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
        if !matches!(unit, Unit::Projector(_)) {
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
                    &mut self.ep,
                    &env,
                    &self.params,
                    &name,
                    b,
                    cache,
                    &dx,
                    &mut self.grads,
                )?;
            }
        }
        for cache in state.pre.iter().rev() {
            match cache {
                LayerCache::EncoderEmbed { patches, source } => {
                    let e = self.cfg.encoder(*source);
                    let pre_name = source.prefix();
                    let at: Vec<usize> = mine.iter().map(|r| r.pos as usize).collect();
                    let dpos = self.math.scatter_add_rows(e.np, &dx, &at)?;
                    accumulate(
                        &*self.math,
                        &mut self.grads,
                        &format!("{pre_name}.pos"),
                        &dpos,
                    )?;
                    linear_named_backward(
                        &*self.math,
                        &self.params,
                        &format!("{pre_name}.patch"),
                        patches,
                        &dx,
                        &mut self.grads,
                    )?;
                }
                LayerCache::LlmEmbed => self.embed_backward(m, &mine, &dx)?,
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

    fn embed_backward(
        &mut self,
        m: usize,
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
        let mx = &*self.math;
        let at: Vec<usize> = mine.iter().map(|r| r.pos as usize).collect();
        let dpos = mx.scatter_add_rows(self.cfg.s, de, &at)?;
        let dtable = mx.scatter_add_rows(self.cfg.v, &mx.gather_rows(de, &at_tok)?, &toks)?;
        for (b, v) in picks {
            self.stores
                .entry(StoreKey::new(b, false))
                .or_default()
                .insert_picked(shared.clone(), v);
        }
        accumulate(&*self.math, &mut self.grads, "llm.embed.weight", &dtable)?;
        accumulate(&*self.math, &mut self.grads, "llm.pos", &dpos)?;
        Ok(())
    }

    /// Executes a boundary's fused transfer for micro-batch `j`.
    fn boundary(
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
                        self.ep.send_tensor(r, t, &data)?;
                    }
                }
                for (from, rows, _) in roles.receives {
                    let data = self.ep.recv_payload(from, t)?;
                    put(&mut store, rows, data)?;
                }
                if let Some(&(_, rows)) = roles.adds.first() {
                    let srcs = fused::srcs_of(op);
                    let own = fused::own_partial(&store, &srcs, me, rows, &take)?;
                    let mut parts = Vec::with_capacity(roles.adds.len());
                    for &(from, _) in &roles.adds {
                        let p = self.ep.recv_payload(from, t)?;
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
            store.insert_rows(t, keys);
        }
        self.stores.insert(StoreKey::new(b, forward), store);
        Ok(())
    }

    /// `grad_sync`: sums a module stage's gradients: over dp x cp, and for tensors whole on every tp rank
    /// under sequence parallelism (each computed its rows' share) over the whole stage.
    pub fn grad_sync(&mut self, m: usize, stage: u32) -> Result<(), RuntimeError> {
        self.flush_sends()?;
        let c = self.held(m)?;
        if c.coord[3] != stage {
            return Err(invalid(format!(
                "rank {}: grad_sync of stage {stage} of `{}`, but it holds stage {}",
                self.rank, c.prog.name, c.coord[3]
            )));
        }
        let sp = c.prog.sequence_parallel && c.prog.tp > 1;
        let names = c.names.clone();
        let (dpcp, all) = (c.dp_cp_group.clone(), c.stage_group.clone());
        for (k, name) in names.iter().enumerate() {
            let group = if sp && split_of(name) == Split::Replicated {
                &all
            } else {
                &dpcp
            };
            if group.len() <= 1 {
                continue;
            }
            let g = self
                .grads
                .get_mut(name)
                .expect("the rank holds its stage's gradients");
            let t = tag(Kind::GradSync, m, 0, k, 0);
            if let Some(gc) = self.groups.as_ref().filter(|g| g.covers(group)) {
                let mine = std::mem::replace(g, Tensor::zeros(&[0]));
                *g = gc.all_reduce(group, mine)?;
            } else if collective::on_device(&*self.math, &self.ep, group) {
                let mine = std::mem::replace(g, Tensor::zeros(&[0]));
                *g = collective::all_reduce(&*self.math, &mut self.ep, group, t, mine)?;
            } else {
                self.ep.all_reduce_sum(group, t, g.data_mut())?;
            }
        }
        Ok(())
    }
}

/// For every sample and position, the rank of its token among the sample's earlier positions
/// holding the same token: the row a placeholder takes among its encoder's rows.
fn placeholder_index(batch: &Batch) -> Vec<Vec<u64>> {
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

/// The boundary rows `rows` stand for, by (sample, row).
fn keys_of(rows: &[RowRef]) -> Vec<Key> {
    rows.iter()
        .map(|r| Key {
            sample: r.sample,
            row: r.row,
        })
        .collect()
}

fn no_row(rank: u32, boundary: &str, j: u32, sample: u32, row: u64, dir: &str) -> RuntimeError {
    invalid(format!(
        "rank {rank}: boundary `{boundary}` ({dir}) unit {j}: row {row} of sample \
         {sample} is not here"
    ))
}
