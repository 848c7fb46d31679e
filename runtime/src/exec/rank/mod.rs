//! One rank's interpreter: its memory (parameter slices, gradients, Adam state, activations
//! between pipeline chunks, caches for backward, boundary rows) and the meaning of every
//! instruction. `ctx` is a module as the rank sees it; `forward`, `backward`, `boundary` and
//! `sync` hold the passes, the boundary transfers and the gradient sums; `pipe` the
//! pipeline messages; `distopt` the distributed optimizer's shards.

use std::collections::HashMap;

use hetpar_ir::layout::RecomputePolicy;
use hetpar_ir::model::ModuleKind;
use hetpar_ir::program::{Instruction, ModuleProgram, Program, Transfer};

use super::block::{
    block_backward, block_forward, mlp_backward, mlp_forward, norm_bytes, tensor_bytes, BlockCache,
    MlpCache,
};
use super::collective::{self, GroupCollectives};
use super::comm::{tag, Env, Kind, MAX_INDEX};
use super::fused;
use super::math::{
    accumulate, linear_named, linear_named_backward, norm_named, norm_named_backward, CpuMath, Math,
};
use super::rows::{Key, RowStore, Taken};
use super::shard::{RowRef, Sharding, Unit};
use super::shard_params::{chunk_blocks, expert_of, holds, prefix, split_of, tied_copy, Split};
use super::vocab;
use crate::checkpoint::WeightSource;
use crate::reference::batch::{BatchLayout, IGNORE};
use crate::reference::layers::LayerNormCache;
use crate::reference::params::Source;
use crate::reference::{Adam, Batch, Config, Grads, Params};
use crate::tensor::Tensor;
use crate::transport::{Endpoint, Payload};
use crate::RuntimeError;

mod backward;
mod boundary;
mod ctx;
mod distopt;
mod encoder;
mod forward;
mod load;
mod pipe;
mod reroute;
mod shards;
mod sync;

pub use ctx::{program_groups, unit_of, ModuleCtx};
pub use distopt::{Shard, StaticBytes};
use load::{local_moments, local_params};

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
        /// The pre-norm's cache, if the encoder has one.
        pre_norm: Option<LayerNormCache>,
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
            LayerCache::EncoderEmbed {
                patches, pre_norm, ..
            } => tensor_bytes([patches]) + pre_norm.as_ref().map_or(0, norm_bytes),
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
    pub net: Endpoint,
    pub cfg: Config,
    pub program: &'a Program,
    pub modules: Vec<Option<ModuleCtx<'a>>>,
    pub params: Params,
    pub grads: Grads,
    pub adam: Adam,
    /// Tensors whose optimizer state this rank shards with its dp x cp group (`distopt.rs`).
    sharded: std::collections::BTreeMap<String, Shard>,
    /// The backend's arithmetic: the CPU reference unless [`RankState::with_math`] says else.
    math: Box<dyn Math + 'a>,
    /// Collectives over fixed groups (NCCL), when the run has them.
    groups: Option<Box<dyn GroupCollectives + 'a>>,
    /// Pipeline sends held back to go out with the next receive as one grouped call (group
    /// collectives that exchange messages only): a lone send would hold the stream until its
    /// receive is posted, and pipeline schedules have both neighbours send before receiving.
    held_sends: Vec<(u32, Tensor)>,
    batch: Option<(&'a Batch, BatchLayout)>,
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
    /// Whether the language model's logits of the step are kept ([`RankState::keep_logits`]).
    keep_logits: bool,
    /// The step's logits this rank computed, if kept.
    pub logits: Vec<LogitRows>,
    /// Placeholder rows moved within the replica's group, by (boundary, micro-batch).
    reroutes: HashMap<(usize, u32), reroute::Reroute>,
    /// Per boundary, the keys of its forward store that hold a folded producer's partial sums
    /// (not rows a destination may read).
    partials: HashMap<usize, std::collections::HashSet<Key>>,
    /// This step's share of the summed cross-entropy (f64, before normalisation).
    pub loss: f64,
    /// The most bytes this rank's tensors held at once, measured after every instruction.
    pub peak_bytes: usize,
}

fn invalid(msg: String) -> RuntimeError {
    RuntimeError::InvalidProgram(msg)
}

impl<'a> RankState<'a> {
    /// Rank `rank`'s state, its parameter slices read from `full` (and Adam's moments, when
    /// `full` resumes a run): only the slices its layout holds.
    pub fn new(
        rank: u32,
        net: Endpoint,
        cfg: Config,
        program: &'a Program,
        full: &dyn WeightSource,
        lr: f64,
    ) -> Result<RankState<'a>, RuntimeError> {
        let names = full.names();
        let modules: Vec<Option<ModuleCtx<'a>>> = (0..program.modules.len())
            .map(|i| ModuleCtx::new(program, i, &cfg, &names, rank))
            .collect();
        let params = local_params(full, &modules)?;
        let grads = params.zeros_like();
        let sharded = distopt::shards_of(&modules, &params, rank);
        let mut adam = Adam::new(lr);
        if let Some((m, v)) = local_moments(full, &modules, &sharded)? {
            adam.restore(full.adam_steps(), m, v);
        }
        Ok(RankState {
            sharded,
            math: Box::new(CpuMath),
            groups: None,
            held_sends: Vec::new(),
            rank,
            net,
            cfg,
            program,
            modules,
            params,
            grads,
            adam,
            batch: None,
            placeholders: Vec::new(),
            acts: HashMap::new(),
            dgrads: HashMap::new(),
            chunks: HashMap::new(),
            stores: HashMap::new(),
            shards: HashMap::new(),
            reroutes: HashMap::new(),
            keep_logits: false,
            logits: Vec::new(),
            partials: HashMap::new(),
            loss: 0.0,
            peak_bytes: 0,
        })
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

    /// Keeps the language model's logits of every step (the run's output gives the last
    /// step's, assembled whole): for tests against another implementation's logits.
    pub fn keep_logits(&mut self) {
        self.keep_logits = true;
    }

    /// Starts a step on `batch`: gradients and the loss at zero.
    pub fn begin_step(&mut self, batch: &'a Batch, layout: BatchLayout) {
        self.placeholders = reroute::placeholder_index(batch);
        self.batch = Some((batch, layout));
        self.grads = self.params.zeros_like();
        self.loss = 0.0;
        self.shards.clear();
        self.logits.clear();
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
        let s = self.static_bytes();
        let caches: usize = self.chunks.values().map(ChunkState::bytes).sum();
        let pipes = tensor_bytes(self.acts.values().chain(self.dgrads.values()));
        let rows: usize = self.stores.values().map(RowStore::bytes).sum();
        s.weights + s.grads + s.optimizer + caches + pipes + rows
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

    /// `optimizer_step`: Adam on every tensor, or on this rank's shards under a distributed
    /// optimizer (`distopt.rs`).
    pub fn optimizer_step(&mut self) -> Result<(), RuntimeError> {
        self.flush_sends()?;
        if !self.sharded.is_empty() {
            return self.sharded_step();
        }
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

    fn batch(&self) -> (&'a Batch, &BatchLayout) {
        let (b, l) = self.batch.as_ref().expect("set by step()");
        (b, l)
    }
}

/// Logits of some rows: each row's (sample, position), the first vocabulary entry its columns
/// start at, and the values `[rows, columns]`.
#[derive(Clone, Debug)]
pub struct LogitRows {
    pub rows: Vec<(u32, u32)>,
    pub vocab_start: usize,
    pub values: Tensor,
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
