//! The plan file (`"kind": "plan"`): a layout and a placement for every module, and the
//! schedule kind; and its verifier against a model and a cluster.
//!
//! Invariants checked by `Plan::build` (rule ids in brackets; `crate::rule` describes each):
//! - `model`/`cluster` names, when given, match [plan.model] / [plan.cluster]; one entry per
//!   module [plan.modules]; `cluster_gpus`, when given, is the cluster's GPU count
//!   [plan.cluster_size, a warning]; every GPU runs a module [placement.unused, a warning;
//!   both in `plan/verify.rs`];
//! - degrees and micro-batch size >= 1 [layout.positive]; tp x cp x pp x dp = rank count
//!   [layout.degrees]; tp divides heads, KV heads and FFN (projector widths) [layout.tp];
//!   layers >= pp x vpp and divisible without `stage_layers` [layout.layers]; `stage_layers`
//!   sound [layout.stage_layers]; vpp > 1 needs pp > 1 [layout.vpp]; ep rules [layout.ep];
//!   sequence parallel needs tp > 1 [layout.sequence_parallel]; TP communication overlap
//!   needs sequence parallel and tp > 1 [layout.tp_comm_overlap]; 2 x cp divides the attended
//!   sequence, projectors cp = 1 [layout.cp]; dp x micro_batch_size divides the global batch
//!   [layout.batch]; recompute layers sound [layout.recompute];
//! - ranks given one way [placement.ranks], inside the cluster [placement.range], without
//!   repeats [placement.duplicate]; axis order a permutation [placement.axis_order];
//!   partial overlap between modules is a warning [placement.overlap];
//! - the schedule fits the placement [schedule.kind], interleaving matches vpp, with micro-batches in multiples of pp
//!   [schedule.interleaved], the pass size (`encoder_chunk`) is given exactly for the chunked schedule
//!   [schedule.chunk], and the per-micro-batch colocated schedule has pp = 1 [schedule.colocated_pp];
//!   every module takes the same number of micro-batches [schedule.micro_batches]; modules
//!   sharing ranks in a pipeline schedule run unpipelined [schedule.groups].

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::cluster::Cluster;
use crate::diag::{join, Diagnostics};
use crate::ids::{ModuleId, Rank};
use crate::layout::{Layout, LayoutSpec, RecomputePolicy};
use crate::model::{AttentionKind, Body, ModelGraph, Module, ModuleKind};
use crate::placement::{Axis, Coord, PlacementSpec, RankGrid};
use crate::rule::Rule;
use crate::shard::Passes;

mod verify;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// One 1F1B pipeline over the stages of all modules (encoders upstream).
    #[serde(rename = "pipeline_1f1b")]
    Pipeline1f1b,
    /// Interleaved 1F1B with virtual pipeline chunks.
    PipelineInterleaved,
    /// Colocated: per micro-batch, encoders forward, then the LLM (every pp = 1).
    ColocatedSequential,
    /// Colocated: encoder forward on the whole batch, LLM pipeline, one encoder backward.
    ColocatedThreePhase,
    /// Colocated: the encoder runs `encoder_chunk` micro-batches at a time between LLM
    /// pipeline steps, capping its activation memory.
    ColocatedChunked,
}

impl ScheduleKind {
    pub fn is_colocated(self) -> bool {
        matches!(
            self,
            ScheduleKind::ColocatedSequential
                | ScheduleKind::ColocatedThreePhase
                | ScheduleKind::ColocatedChunked
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleSpec {
    pub kind: ScheduleKind,
    /// The pass size: language-model micro-batches per encoder pass (`Plan::passes`). The
    /// format's name; in code this is the pass size k, never a "chunk".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder_chunk: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModulePlanSpec {
    pub layout: LayoutSpec,
    pub placement: PlacementSpec,
}

/// A whole plan file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanFile {
    pub kind: String,
    pub format_version: u32,
    /// Name of the model this plan is for (checked when given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Name of the cluster this plan is for (checked when given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// GPUs of the cluster this plan is for (a warning when the cluster has another count:
    /// a name says nothing of a cluster that grew or shrank).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_gpus: Option<u32>,
    pub schedule: ScheduleSpec,
    pub modules: BTreeMap<String, ModulePlanSpec>,
}

/// How module placements relate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PlacementKind {
    /// One module only.
    Single,
    /// Every module on the same rank set.
    Colocated,
    /// Groups of modules on identical rank sets, the groups pairwise disjoint.
    Disjoint,
    /// Some modules share some ranks but not all.
    PartialOverlap,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModulePlan {
    pub module: ModuleId,
    pub layout: Layout,
    pub grid: RankGrid,
}

/// A verified plan.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    file: PlanFile,
    modules: Vec<ModulePlan>,
    pub schedule: ScheduleSpec,
    pub placement_kind: PlacementKind,
    language_model: ModuleId,
}

impl Plan {
    pub fn file(&self) -> &PlanFile {
        &self.file
    }

    /// The plan of a module (every module has one).
    pub fn module(&self, m: ModuleId) -> &ModulePlan {
        &self.modules[m.index()]
    }

    pub fn modules(&self) -> &[ModulePlan] {
        &self.modules
    }

    /// The language model's micro-batches per step (every module after it takes as many).
    pub fn micro_batches(&self) -> u32 {
        lm_micro_batches(&self.modules, self.language_model)
    }

    /// The encoder passes of a step: every module processing encoder items (encoders,
    /// projectors) runs `passes().count()` passes per replica, each over the items of the
    /// pass size's (`encoder_chunk`) language-model micro-batches (`crate::shard`).
    pub fn passes(&self) -> Passes {
        passes_of(&self.schedule, self.micro_batches())
    }

    /// Every rank some module runs on, sorted.
    pub fn used_ranks(&self) -> Vec<Rank> {
        let set: BTreeSet<Rank> = self
            .modules
            .iter()
            .flat_map(|m| m.grid.ranks().iter().copied())
            .collect();
        set.into_iter().collect()
    }

    /// Verifies `file` against a model and a cluster. `Ok` carries warnings.
    pub fn build(
        file: PlanFile,
        model: &ModelGraph,
        cluster: &Cluster,
    ) -> Result<(Plan, Diagnostics), Diagnostics> {
        let mut ds = Diagnostics::new();
        if let Some(name) = &file.model {
            if name != model.name() {
                ds.error(
                    "model",
                    Rule::PlanModel,
                    format!(
                        "the plan is for model \"{name}\", checked against \"{}\"",
                        model.name()
                    ),
                );
            }
        }
        if let Some(name) = &file.cluster {
            if *name != cluster.name {
                ds.error(
                    "cluster",
                    Rule::PlanCluster,
                    format!(
                        "the plan is for cluster \"{name}\", checked against \"{}\"",
                        cluster.name
                    ),
                );
            }
        }
        for name in file.modules.keys() {
            if model.module_by_name(name).is_none() {
                ds.error(
                    join("modules", name),
                    Rule::PlanModules,
                    format!("the model has no module \"{name}\""),
                );
            }
        }
        let mut built: Vec<Option<ModulePlan>> = Vec::new();
        for m in model.modules() {
            match file.modules.get(&m.name) {
                None => {
                    ds.error(
                        "modules",
                        Rule::PlanModules,
                        format!("no entry for module \"{}\"", m.name),
                    );
                    built.push(None);
                }
                Some(spec) => built.push(check_module(
                    &join("modules", &m.name),
                    m,
                    spec,
                    model,
                    cluster,
                    &mut ds,
                )),
            }
        }
        let placement_kind = classify(&built);
        check_schedule(&file, model, &built, placement_kind, &mut ds);
        verify::check_cluster_size(&file, cluster, &mut ds);
        if ds.has_errors() {
            return Err(ds);
        }
        let mut modules: Vec<ModulePlan> = built.into_iter().flatten().collect();
        verify::check_unused(&modules, cluster, &mut ds);
        let passes = passes_of(
            &file.schedule,
            lm_micro_batches(&modules, model.language_model()),
        );
        for m in modules.iter_mut() {
            if model.item_origin(m.module).is_some() {
                m.layout.micro_batches = passes.count();
            }
        }
        Ok((
            Plan {
                schedule: file.schedule.clone(),
                file,
                modules,
                placement_kind,
                language_model: model.language_model(),
            },
            ds,
        ))
    }
}

/// The language model's micro-batches per step among built module plans.
fn lm_micro_batches(modules: &[ModulePlan], lm: ModuleId) -> u32 {
    modules
        .iter()
        .find(|m| m.module == lm)
        .map_or(1, |m| m.layout.micro_batches)
}

/// The encoder passes of a step of `micro_batches`: the pass size is `encoder_chunk` where
/// given, every micro-batch of the step under `colocated_three_phase`, else one.
fn passes_of(s: &ScheduleSpec, micro_batches: u32) -> Passes {
    let per_pass = match (s.kind, s.encoder_chunk) {
        (_, Some(k)) => k,
        (ScheduleKind::ColocatedThreePhase, None) => micro_batches,
        _ => 1,
    };
    Passes::new(micro_batches, per_pass)
}

/// Pipeline chunks a layout may have (far above any real pipeline; bounds allocations).
const MAX_CHUNKS: u64 = 1 << 16;

fn classify(built: &[Option<ModulePlan>]) -> PlacementKind {
    let sets: Vec<BTreeSet<Rank>> = built
        .iter()
        .flatten()
        .map(|m| m.grid.ranks().iter().copied().collect())
        .collect();
    if sets.len() <= 1 {
        return PlacementKind::Single;
    }
    if sets.iter().all(|s| *s == sets[0]) {
        return PlacementKind::Colocated;
    }
    // Modules on identical rank sets form a group (an encoder with its projector); groups
    // must not overlap.
    let disjoint = sets
        .iter()
        .enumerate()
        .all(|(i, a)| sets[i + 1..].iter().all(|b| a == b || a.is_disjoint(b)));
    if disjoint {
        PlacementKind::Disjoint
    } else {
        PlacementKind::PartialOverlap
    }
}

fn check_schedule(
    file: &PlanFile,
    model: &ModelGraph,
    built: &[Option<ModulePlan>],
    pk: PlacementKind,
    ds: &mut Diagnostics,
) {
    let s = &file.schedule;
    // How placements relate is only known once every module's placement is sound.
    let pk = if built.iter().all(Option::is_some) {
        pk
    } else {
        PlacementKind::Single
    };
    // Every module inside the language model's ranks under a colocated schedule (encoders on
    // its first pipeline stage, the homogeneous arrangement) is supported.
    let lm_ranks: Option<BTreeSet<Rank>> = built
        .iter()
        .flatten()
        .find(|m| m.module == model.language_model())
        .map(|m| m.grid.ranks().iter().copied().collect());
    let nested = s.kind.is_colocated()
        && lm_ranks.is_some_and(|lm| {
            built
                .iter()
                .flatten()
                .all(|m| m.grid.ranks().iter().all(|r| lm.contains(r)))
        });
    match pk {
        PlacementKind::PartialOverlap if nested => {}
        PlacementKind::PartialOverlap => ds.warning(
            "modules",
            Rule::PlacementOverlap,
            "some modules share some ranks but not all: representable, but schedules support it only with every module inside the language model's ranks under a colocated schedule; colocate them fully or make them disjoint",
        ),
        PlacementKind::Disjoint if s.kind.is_colocated() => ds.error(
            "schedule.kind",
            Rule::ScheduleKind,
            "a colocated schedule needs every module on the same ranks; these placements are disjoint (use pipeline_1f1b)",
        ),
        PlacementKind::Colocated if !s.kind.is_colocated() => ds.error(
            "schedule.kind",
            Rule::ScheduleKind,
            "a pipeline schedule runs modules on disjoint ranks; these placements are colocated (use a colocated_* schedule)",
        ),
        _ => {}
    }
    let any_vpp = built.iter().flatten().any(|m| m.layout.vpp > 1);
    let interleaved = s.kind == ScheduleKind::PipelineInterleaved;
    if any_vpp && !interleaved {
        ds.error(
            "schedule.kind",
            Rule::ScheduleInterleaved,
            "a module has vpp > 1: use pipeline_interleaved",
        );
    }
    for m in built.iter().flatten().filter(|m| m.layout.vpp > 1) {
        if m.layout.micro_batches % m.layout.pp != 0 {
            ds.error(
                join(&join("modules", &model.module(m.module).name), "layout.micro_batch_size"),
                Rule::ScheduleInterleaved,
                format!(
                    "the interleaved schedule runs micro-batches in groups of pp = {}; {} micro-batches per step is not a multiple",
                    m.layout.pp, m.layout.micro_batches
                ),
            );
        }
    }
    if interleaved && !any_vpp && built.iter().all(Option::is_some) {
        ds.error(
            "schedule.kind",
            Rule::ScheduleInterleaved,
            "pipeline_interleaved needs vpp > 1 on some module",
        );
    }
    match (s.kind, s.encoder_chunk) {
        (ScheduleKind::ColocatedChunked, None) => ds.error(
            "schedule.encoder_chunk",
            Rule::ScheduleChunk,
            "the chunked schedule needs encoder_chunk (micro-batches per encoder pass)",
        ),
        (_, Some(0)) => ds.error(
            "schedule.encoder_chunk",
            Rule::ScheduleChunk,
            "must be at least 1",
        ),
        (ScheduleKind::ColocatedThreePhase, Some(_)) => ds.error(
            "schedule.encoder_chunk",
            Rule::ScheduleChunk,
            "colocated_three_phase runs the encoders once over the whole step: it takes no encoder_chunk (use colocated_chunked)",
        ),
        (_, Some(k)) => {
            let lm = model.language_model();
            if let Some(m) = built.iter().flatten().find(|m| m.module == lm) {
                if k > m.layout.micro_batches {
                    ds.error(
                        "schedule.encoder_chunk",
                        Rule::ScheduleChunk,
                        format!(
                            "{k} exceeds the {} micro-batches of a step",
                            m.layout.micro_batches
                        ),
                    );
                }
            }
        }
        (_, None) => {}
    }
    let plans: Vec<&ModulePlan> = built.iter().flatten().collect();
    // Compare with the language model, so that the odd module out is the one named.
    let lm = model.language_model();
    if let Some(reference) = plans.iter().find(|m| m.module == lm).or(plans.first()) {
        let m0 = reference.layout.micro_batches;
        for m in &plans {
            if model.item_origin(m.module).is_some() {
                if m.layout.micro_batch_size != 1 {
                    ds.error(
                        join(&join("modules", &model.module(m.module).name), "layout.micro_batch_size"),
                        Rule::ScheduleMicroBatches,
                        format!(
                            "is {}, but encoders and projectors take no micro-batch size: each encoder pass deals the items of encoder_chunk language-model micro-batches over their replicas (leave it out)",
                            m.layout.micro_batch_size
                        ),
                    );
                }
                continue;
            }
            if m.layout.micro_batches != m0 {
                let name = &model.module(m.module).name;
                ds.error(
                    join(&join("modules", name), "layout.micro_batch_size"),
                    Rule::ScheduleMicroBatches,
                    format!(
                        "gives {} micro-batches per step but \"{}\" gives {m0}; every module takes the same number",
                        m.layout.micro_batches,
                        model.module(reference.module).name
                    ),
                );
            }
        }
    }
    if !s.kind.is_colocated() {
        for (i, a) in plans.iter().enumerate() {
            for b in &plans[i + 1..] {
                let same_ranks = a.grid.ranks().iter().collect::<BTreeSet<_>>()
                    == b.grid.ranks().iter().collect::<BTreeSet<_>>();
                let pipelined = |m: &ModulePlan| m.layout.pp > 1 || m.layout.vpp > 1;
                if same_ranks && (pipelined(a) || pipelined(b)) {
                    let odd = if pipelined(b) { b } else { a };
                    let other = if pipelined(b) { a } else { b };
                    let name = &model.module(odd.module).name;
                    ds.error(
                        join(&join("modules", name), "layout.pp"),
                        Rule::ScheduleGroups,
                        format!(
                            "shares its ranks with \"{}\" and has pp x vpp = {} x {}; in a pipeline schedule modules sharing ranks run unpipelined (give the pipelined module ranks of its own, or use a colocated schedule)",
                            model.module(other.module).name, odd.layout.pp, odd.layout.vpp
                        ),
                    );
                }
            }
        }
    }
    if s.kind == ScheduleKind::ColocatedSequential {
        if let Some(m) = built.iter().flatten().find(|m| m.layout.pp > 1) {
            let name = &model.module(m.module).name;
            ds.error(
                join(&join("modules", name), "layout.pp"),
                Rule::ScheduleColocatedPp,
                "colocated_sequential runs each module whole per micro-batch: pp must be 1 (use colocated_three_phase or colocated_chunked)",
            );
        }
    }
}

fn check_module(
    path: &str,
    m: &Module,
    spec: &ModulePlanSpec,
    model: &ModelGraph,
    cluster: &Cluster,
    ds: &mut Diagnostics,
) -> Option<ModulePlan> {
    let before = ds.len();
    let lp = join(path, "layout");
    let l = &spec.layout;
    for (f, v) in [
        ("tp", l.tp),
        ("cp", l.cp),
        ("pp", l.pp),
        ("ep", l.ep),
        ("vpp", l.vpp),
        ("micro_batch_size", l.micro_batch_size),
    ] {
        if v == 0 {
            ds.error(join(&lp, f), Rule::LayoutPositive, "must be at least 1");
        }
    }
    if l.dp == Some(0) {
        ds.error(join(&lp, "dp"), Rule::LayoutPositive, "must be at least 1");
    }
    let ranks = check_ranks(&join(path, "placement"), spec, cluster, ds);
    let order = check_axis_order(&join(path, "placement.axis_order"), spec, ds);
    if ds.len() > before {
        return None;
    }
    let ranks = ranks?;
    let order = order?;
    let count = ranks.len() as u64;
    let (tp, cp, pp) = (u64::from(l.tp), u64::from(l.cp), u64::from(l.pp));
    let tcp = tp.saturating_mul(cp).saturating_mul(pp);
    let dp = match l.dp {
        Some(dp) => {
            if tcp.saturating_mul(u64::from(dp)) != count {
                ds.error(join(&lp, "dp"), Rule::LayoutDegrees, format!("tp x cp x pp x dp = {} x {} x {} x {} = {} but the placement has {count} ranks", l.tp, l.cp, l.pp, dp, tcp.saturating_mul(u64::from(dp))));
            }
            dp
        }
        None => {
            if !count.is_multiple_of(tcp) {
                ds.error(
                    &lp,
                    Rule::LayoutDegrees,
                    format!("tp x cp x pp = {tcp} does not divide the placement's {count} ranks"),
                );
            }
            u32::try_from((count / tcp).max(1)).unwrap_or(u32::MAX)
        }
    };
    // tp against the architecture.
    match &m.body {
        Body::Projector(mlp) => {
            for (i, &w) in mlp
                .widths
                .iter()
                .enumerate()
                .skip(1)
                .take(mlp.widths.len().saturating_sub(2))
            {
                if w % l.tp != 0 {
                    ds.error(
                        join(&lp, "tp"),
                        Rule::LayoutTp,
                        format!(
                            "{} does not divide the projector's hidden width {w} (widths[{i}])",
                            l.tp
                        ),
                    );
                }
            }
            if l.cp > 1 {
                ds.error(
                    join(&lp, "cp"),
                    Rule::LayoutCp,
                    "a projector has no attention to split: cp must be 1",
                );
            }
        }
        _ => {
            if let Some(t) = m.transformer() {
                if t.heads % l.tp != 0 {
                    ds.error(
                        join(&lp, "tp"),
                        Rule::LayoutTp,
                        format!("{} does not divide heads {}", l.tp, t.heads),
                    );
                }
                if t.kv_heads() % l.tp != 0 {
                    ds.error(
                        join(&lp, "tp"),
                        Rule::LayoutTp,
                        format!("{} does not divide KV heads {}", l.tp, t.kv_heads()),
                    );
                }
                let ffn = t
                    .moe
                    .as_ref()
                    .map_or(t.ffn_hidden, |moe| moe.expert_ffn_hidden);
                if ffn % l.tp != 0 || t.ffn_hidden % l.tp != 0 {
                    ds.error(
                        join(&lp, "tp"),
                        Rule::LayoutTp,
                        format!("{} does not divide the FFN hidden size {ffn}", l.tp),
                    );
                }
            }
        }
    }
    // Layers over stages.
    let layers = m.layer_count();
    let chunks = u64::from(l.pp) * u64::from(l.vpp);
    let mut chunk_layers: Vec<u32> = Vec::new();
    if chunks > MAX_CHUNKS {
        ds.error(
            join(&lp, "pp"),
            Rule::LayoutLayers,
            format!("pp x vpp = {chunks} pipeline chunks; at most {MAX_CHUNKS} are supported"),
        );
        return None;
    }
    match &l.stage_layers {
        Some(list) => {
            let sp = join(&lp, "stage_layers");
            if list.len() as u64 != chunks {
                ds.error(
                    &sp,
                    Rule::LayoutStageLayers,
                    format!("has {} entries; pp x vpp = {chunks}", list.len()),
                );
            }
            if list.contains(&0) {
                ds.error(
                    &sp,
                    Rule::LayoutStageLayers,
                    "every chunk holds at least one layer",
                );
            }
            let sum: u64 = list.iter().map(|&x| u64::from(x)).sum();
            if sum != u64::from(layers) {
                ds.error(
                    &sp,
                    Rule::LayoutStageLayers,
                    format!("sums to {sum}; the module has {layers} layers"),
                );
            }
            chunk_layers.clone_from(list);
        }
        None => {
            if u64::from(layers) < chunks {
                ds.error(
                    join(&lp, "pp"),
                    Rule::LayoutLayers,
                    format!("{layers} layers cannot fill pp x vpp = {chunks} pipeline chunks"),
                );
            } else if u64::from(layers) % chunks != 0 {
                ds.error(join(&lp, "pp"), Rule::LayoutLayers, format!("pp x vpp = {chunks} does not divide {layers} layers; give stage_layers for an uneven split"));
            } else {
                chunk_layers = vec![layers / (chunks as u32); chunks as usize];
            }
        }
    }
    if l.vpp > 1 && l.pp == 1 {
        ds.error(
            join(&lp, "vpp"),
            Rule::LayoutVpp,
            "virtual pipeline chunks need pp > 1",
        );
    }
    // Experts.
    if l.ep > 1 {
        match m.transformer().and_then(|t| t.moe.as_ref()) {
            None => ds.error(
                join(&lp, "ep"),
                Rule::LayoutEp,
                "ep > 1 needs a mixture of experts",
            ),
            Some(moe) => {
                if moe.experts % l.ep != 0 {
                    ds.error(
                        join(&lp, "ep"),
                        Rule::LayoutEp,
                        format!("{} does not divide {} experts", l.ep, moe.experts),
                    );
                }
                if (u64::from(dp) * cp) % u64::from(l.ep) != 0 {
                    ds.error(
                        join(&lp, "ep"),
                        Rule::LayoutEp,
                        format!("{} does not divide dp x cp = {}", l.ep, u64::from(dp) * cp),
                    );
                }
            }
        }
    }
    if l.sequence_parallel && l.tp == 1 {
        ds.error(
            join(&lp, "sequence_parallel"),
            Rule::LayoutSequenceParallel,
            "sequence parallel splits activations over tp: needs tp > 1",
        );
    }
    if l.tp_comm_overlap && !(l.sequence_parallel && l.tp > 1) {
        ds.error(
            join(&lp, "tp_comm_overlap"),
            Rule::LayoutTpCommOverlap,
            format!(
                "overlapping tensor-parallel communication needs sequence_parallel and tp > 1 \
                 (as Megatron-LM's --tp-comm-overlap); this layout has tp {} and sequence_parallel {}",
                l.tp, l.sequence_parallel
            ),
        );
    }
    // Context parallel with load-balanced blocks: 2 x cp pieces of the attended sequence.
    if l.cp > 1 && !matches!(m.body, Body::Projector(_)) {
        let pieces = 2 * u64::from(l.cp);
        if m.kind == ModuleKind::LanguageModel
            || m.transformer()
                .is_some_and(|t| t.attention == AttentionKind::Causal && !m.kind.is_encoder())
        {
            let s = model.data().sequence_length;
            if u64::from(s) % pieces != 0 {
                ds.error(
                    join(&lp, "cp"),
                    Rule::LayoutCp,
                    format!("2 x cp = {pieces} does not divide the sequence length {s}"),
                );
            }
        } else if let Some(items) = model.items(m.id) {
            if let Some(t) = items
                .distinct_item_tokens()
                .into_iter()
                .find(|&t| u64::from(t) % pieces != 0)
            {
                ds.error(
                    join(&lp, "cp"),
                    Rule::LayoutCp,
                    format!("2 x cp = {pieces} does not divide an item of {t} tokens"),
                );
            }
        }
    }
    // Batch.
    let batch = u64::from(model.data().global_batch);
    let per_step = u64::from(dp) * u64::from(l.micro_batch_size);
    let per_step = if model.item_origin(m.id).is_some() {
        batch.max(1)
    } else {
        per_step
    };
    if batch % per_step != 0 {
        ds.error(join(&lp, "micro_batch_size"), Rule::LayoutBatch, format!("dp x micro_batch_size = {dp} x {} = {per_step} does not divide the global batch {batch}", l.micro_batch_size));
    }
    // Recompute.
    if let Some(k) = l.recompute.layers {
        let rp = join(&lp, "recompute.layers");
        if l.recompute.policy == RecomputePolicy::None {
            ds.error(
                &rp,
                Rule::LayoutRecompute,
                "recompute.layers needs a selective or full policy",
            );
        } else if let Some(&min) = chunk_layers.iter().min() {
            if k > min {
                ds.error(
                    &rp,
                    Rule::LayoutRecompute,
                    format!("{k} exceeds the {min} layers of the smallest pipeline chunk"),
                );
            }
        }
    }
    if ds.len() > before {
        return None;
    }
    let sizes = Coord {
        tp: l.tp,
        cp: l.cp,
        dp,
        pp: l.pp,
    };
    Some(ModulePlan {
        module: m.id,
        layout: Layout {
            tp: l.tp,
            cp: l.cp,
            pp: l.pp,
            dp,
            ep: l.ep,
            vpp: l.vpp,
            sequence_parallel: l.sequence_parallel,
            tp_comm_overlap: l.tp_comm_overlap,
            cp_comm: l.cp_comm,
            recompute: l.recompute.clone(),
            distributed_optimizer: l.distributed_optimizer,
            micro_batch_size: l.micro_batch_size,
            chunk_layers,
            micro_batches: u32::try_from(batch / per_step).unwrap_or(u32::MAX),
        },
        grid: RankGrid::new(ranks, order, sizes),
    })
}

fn check_ranks(
    path: &str,
    spec: &ModulePlanSpec,
    cluster: &Cluster,
    ds: &mut Diagnostics,
) -> Option<Vec<Rank>> {
    let rp = join(path, "ranks");
    let r = &spec.placement.ranks;
    let world = cluster.world_size();
    let ranks: Vec<u64> = match (r.offset, r.count, &r.list) {
        (Some(off), Some(count), None) => {
            if count == 0 {
                ds.error(
                    join(&rp, "count"),
                    Rule::PlacementRanks,
                    "must be at least 1",
                );
                return None;
            }
            let end = u64::from(off) + u64::from(count);
            if end > world {
                ds.error(&rp, Rule::PlacementRange, format!("ranks {off}..{end} reach outside the cluster's {world} GPUs (ranks 0..{world})"));
                return None;
            }
            (u64::from(off)..end).collect()
        }
        (None, None, Some(list)) => {
            if list.is_empty() {
                ds.error(
                    join(&rp, "list"),
                    Rule::PlacementRanks,
                    "must name at least one rank",
                );
                return None;
            }
            let mut seen = BTreeSet::new();
            for (i, &x) in list.iter().enumerate() {
                if !seen.insert(x) {
                    ds.error(
                        format!("{}[{i}]", join(&rp, "list")),
                        Rule::PlacementDuplicate,
                        format!("rank {x} appears twice"),
                    );
                }
            }
            list.iter().map(|&x| u64::from(x)).collect()
        }
        _ => {
            ds.error(
                &rp,
                Rule::PlacementRanks,
                "give either offset and count, or list",
            );
            return None;
        }
    };
    if let Some(&bad) = ranks.iter().find(|&&x| x >= world) {
        ds.error(
            &rp,
            Rule::PlacementRange,
            format!("rank {bad} is outside the cluster's {world} GPUs (ranks 0..{world})"),
        );
        return None;
    }
    Some(ranks.into_iter().map(|x| x as Rank).collect())
}

fn check_axis_order(path: &str, spec: &ModulePlanSpec, ds: &mut Diagnostics) -> Option<[Axis; 4]> {
    let Some(order) = &spec.placement.axis_order else {
        return Some(Axis::ALL);
    };
    let set: BTreeSet<Axis> = order.iter().copied().collect();
    match <[Axis; 4]>::try_from(order.as_slice()) {
        Ok(arr) if set.len() == 4 => Some(arr),
        _ => {
            ds.error(
                path,
                Rule::PlacementAxisOrder,
                "must list tp, cp, dp and pp once each",
            );
            None
        }
    }
}
