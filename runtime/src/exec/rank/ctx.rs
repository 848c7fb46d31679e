//! A module as one rank sees it: its program, unit, grid coordinate and groups.

use super::*;

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
    /// Same tp and stage, the `ep` consecutive members of the dp x cp group this rank is
    /// among, in ep index order: where a mixture of experts' rows are exchanged.
    pub ep_group: Vec<u32>,
    /// Same tp, stage and ep index, every ep group: where a routed expert's gradient is summed.
    pub expert_dp_group: Vec<u32>,
    /// Parameter names of this rank's stage.
    pub names: Vec<String>,
    pub incoming: Option<usize>,
    pub outgoing: Option<usize>,
    /// The language model's incoming boundaries by the encoder whose rows they carry.
    pub sources: Vec<(Source, usize)>,
    pub heads: usize,
    /// The unit's transformer stack (none for a projector).
    pub stack: Option<crate::reference::Stack>,
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
/// group, context-parallel group, data × context group (where gradients are summed), whole
/// stage (where replicated gradients are summed under sequence parallelism), ep group (where
/// a mixture of experts' rows are exchanged) and expert-data-parallel group (where a routed
/// expert's gradients are summed).
fn groups_at(m: &ModuleProgram, [t, c, d, s]: [u32; 4]) -> [Vec<u32>; 6] {
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
    // dp x cp members j = c + cp·d: ep group j / ep, ep index j % ep.
    let ep = m.ep.max(1) as usize;
    let j = (c + m.cp * d) as usize;
    let ep_group = dp_cp_group[j / ep * ep..(j / ep + 1) * ep].to_vec();
    let expert_dp_group = dp_cp_group
        .iter()
        .copied()
        .skip(j % ep)
        .step_by(ep)
        .collect();
    [
        tp_group,
        cp_group,
        dp_cp_group,
        stage_group,
        ep_group,
        expert_dp_group,
    ]
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
        names: &[String],
        rank: u32,
    ) -> Option<ModuleCtx<'a>> {
        let m = &program.modules[idx];
        let coord = m.coord_of(rank)?;
        let unit = unit_of(program, idx)?;
        let [tp_group, cp_group, dp_cp_group, stage_group, ep_group, expert_dp_group] =
            groups_at(m, coord);
        let find = |f: &dyn Fn(&hetpar_ir::program::BoundaryProgram) -> bool| {
            program.boundaries.iter().position(f)
        };
        let stack = match unit {
            Unit::Encoder(s) => Some(cfg.encoder(s)?.stack),
            Unit::Projector(_) => None,
            Unit::Llm => Some(cfg.llm.stack),
        };
        let width = stack.map_or(cfg.llm.stack.hidden, |s| s.hidden);
        let experts = stack.and_then(|s| s.moe).map_or(0, |m| m.experts);
        let names = names
            .iter()
            .filter(|n| {
                holds(n, unit, m, coord, experts)
                    || tied_copy(n, unit, m, coord[3], cfg.llm.tied_embeddings)
            })
            .cloned()
            .collect();
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
            ep_group,
            expert_dp_group,
            names,
            incoming: find(&|b| b.to == m.name),
            outgoing: find(&|b| b.from == m.name),
            heads: stack.map_or(1, |s| s.heads) / m.tp as usize,
            stack,
            width,
        })
    }

    /// Routed experts per mixture of experts (0 without one).
    pub fn experts(&self) -> usize {
        self.stack.and_then(|s| s.moe).map_or(0, |m| m.experts)
    }

    pub(super) fn last_chunk(&self) -> u32 {
        self.prog.pp * self.prog.vpp - 1
    }
}
