//! Which parameters a rank holds and its slice of each: a module stage's tensors (its
//! chunks' blocks, plus the embedding on the first chunk and the final norm and head on the
//! last), split over the tp group as the block computes them; a mixture of experts' routed
//! experts split over the ep group besides (`exec/moe.rs`), each member holding a contiguous
//! range of them.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use hetpar_ir::program::{ModuleProgram, Program};

use super::rank::unit_of;
use super::shard::Unit;
use crate::reference::Config;
use crate::tensor::Tensor;

/// How a tensor splits over the tp group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// Output rows (dimension 0): q, k, v, fc1, gate and up weights and biases.
    Column,
    /// Input columns (dimension 1): o, fc2 and down weights.
    Row,
    /// Whole on every tp rank.
    Replicated,
}

/// How `name` splits over the tp group (a routed expert like a dense gated FFN; the router
/// whole).
pub fn split_of(name: &str) -> Split {
    const COLUMN: [&str; 6] = [
        ".attn.q.",
        ".attn.k.",
        ".attn.v.",
        ".fc1.",
        ".mlp.gate.",
        ".mlp.up.",
    ];
    const ROW: [&str; 3] = [".attn.o.weight", ".fc2.weight", ".mlp.down.weight"];
    let expert = expert_of(name).is_some();
    // The embedding and the head split by vocabulary rows (`exec/vocab.rs`).
    if expert && (name.ends_with(".gate.weight") || name.ends_with(".up.weight")) {
        Split::Column
    } else if expert && name.ends_with(".down.weight") {
        Split::Row
    } else if COLUMN.iter().any(|c| name.contains(c))
        || name == "llm.embed.weight"
        || name == "llm.head.weight"
    {
        Split::Column
    } else if ROW.iter().any(|r| name.ends_with(r)) {
        Split::Row
    } else {
        Split::Replicated
    }
}

/// The routed expert whose tensor `name` is (`….moe.experts.{e}.…`), if it is one.
pub fn expert_of(name: &str) -> Option<usize> {
    let (_, rest) = name.split_once(".moe.experts.")?;
    rest.split('.').next()?.parse().ok()
}

/// The ep index (position in its ep group) of the rank at cp `c`, dp `d`: each `ep`
/// consecutive members of the dp x cp group, cp varying fastest, form an ep group.
pub fn ep_index(m: &ModuleProgram, c: u32, d: u32) -> u32 {
    (c + m.cp * d) % m.ep.max(1)
}

/// The ep index holding routed expert `e` of `experts`: member `q` holds experts
/// `[q·experts/ep, (q+1)·experts/ep)`.
pub fn expert_owner(m: &ModuleProgram, e: usize, experts: usize) -> u32 {
    let per = (experts / m.ep.max(1) as usize).max(1);
    (e / per) as u32
}

/// The (cp, dp) coordinate of the first rank holding `name` (a routed expert's holder in the
/// first ep group; every other tensor's at (0, 0)).
pub fn holder(name: &str, m: &ModuleProgram, experts: usize) -> (u32, u32) {
    match expert_of(name) {
        Some(e) => {
            let q = expert_owner(m, e, experts);
            (q % m.cp, q / m.cp)
        }
        None => (0, 0),
    }
}

/// Whether the rank at `coord` (tp, cp, dp, pp) holds `name`: its stage's tensors, of the
/// routed experts only its ep index's.
pub fn holds(name: &str, unit: Unit, m: &ModuleProgram, coord: [u32; 4], experts: usize) -> bool {
    belongs(name, unit, m, coord[3])
        && expert_of(name)
            .is_none_or(|e| expert_owner(m, e, experts) == ep_index(m, coord[1], coord[2]))
}

/// Whether `name` is a tied head's copy of the embedding on the language model's last stage
/// (under pp > 1 the first stage holds the embedding, the last its copy for the head; their
/// gradients are summed between the two, `exec/rank/sync.rs`).
pub fn tied_copy(name: &str, unit: Unit, m: &ModuleProgram, stage: u32, tied: bool) -> bool {
    tied && unit == Unit::Llm
        && name == "llm.embed.weight"
        && m.pp > 1
        && (m.pp * m.vpp - 1) % m.pp == stage
}

/// The tensor-name prefix of a module's parameters.
pub fn prefix(unit: Unit) -> String {
    match unit {
        Unit::Encoder(s) => s.prefix().to_string(),
        Unit::Projector(s) => format!("{}.proj", s.prefix()),
        Unit::Llm => "llm".to_string(),
    }
}

/// The blocks of global chunk `i`.
pub fn chunk_blocks(m: &ModuleProgram, i: usize) -> Range<usize> {
    let start: u32 = m.chunk_layers[..i].iter().sum();
    start as usize..(start + m.chunk_layers[i]) as usize
}

/// Whether `name` belongs to stage `stage` of the module.
pub fn belongs(name: &str, unit: Unit, m: &ModuleProgram, stage: u32) -> bool {
    let chunks = m.pp * m.vpp;
    let first = stage == 0;
    let last = (chunks - 1) % m.pp == stage;
    let blocks: BTreeSet<usize> = (0..m.vpp)
        .flat_map(|c| chunk_blocks(m, (c * m.pp + stage) as usize))
        .collect();
    let in_blocks = |pre: &str| {
        name.strip_prefix(&format!("{pre}.blocks."))
            .and_then(|rest| rest.split('.').next())
            .and_then(|i| i.parse::<usize>().ok())
            .is_some_and(|i| blocks.contains(&i))
    };
    match unit {
        Unit::Encoder(s) => {
            let pre = s.prefix();
            (first
                && (name.starts_with(&format!("{pre}.patch."))
                    || name.starts_with(&format!("{pre}.pre_norm."))
                    || name == format!("{pre}.pos")
                    || name == format!("{pre}.class")))
                || in_blocks(pre)
                || (last && name.starts_with(&format!("{pre}.ln_f.")))
        }
        Unit::Projector(s) => name.starts_with(&format!("{}.proj.", s.prefix())),
        Unit::Llm => {
            (first && (name == "llm.embed.weight" || name == "llm.pos"))
                || in_blocks("llm")
                || (last && (name.starts_with("llm.ln_f.") || name == "llm.head.weight"))
        }
    }
}

/// The part tp rank `t` of `tp` holds of `n` rows (a column split) or columns (a row split).
pub fn tp_part(n: usize, tp: usize, t: usize) -> Range<usize> {
    hetpar_ir::shard::even_part(n, tp, t)
}

/// Slice `t` of `tp` of a whole tensor.
pub fn slice(x: &Tensor, split: Split, t: usize, tp: usize) -> Tensor {
    match split {
        Split::Replicated => x.clone(),
        Split::Column => {
            let Range { start: a, end: b } = tp_part(x.shape()[0], tp, t);
            let inner: usize = x.shape()[1..].iter().product();
            let mut shape = x.shape().to_vec();
            shape[0] = b - a;
            Tensor::from_vec(&shape, x.data()[a * inner..b * inner].to_vec()).expect("slice")
        }
        Split::Row => {
            let rows = x.rows();
            let Range { start: a, end: b } = tp_part(x.cols(), tp, t);
            let mut data = Vec::with_capacity(rows * (b - a));
            for r in 0..rows {
                data.extend_from_slice(&x.row(r)[a..b]);
            }
            Tensor::from_vec(&[rows, b - a], data).expect("slice")
        }
    }
}

/// The whole tensor from its tp slices in order.
pub fn unslice(parts: &[&Tensor], split: Split) -> Tensor {
    match split {
        Split::Replicated => parts[0].clone(),
        Split::Column => {
            let mut shape = parts[0].shape().to_vec();
            shape[0] = parts.iter().map(|p| p.shape()[0]).sum();
            let data = parts
                .iter()
                .flat_map(|p| p.data().iter().copied())
                .collect();
            Tensor::from_vec(&shape, data).expect("unslice")
        }
        Split::Row => {
            let rows = parts[0].rows();
            let cols: usize = parts.iter().map(|p| p.cols()).sum();
            let mut data = Vec::with_capacity(rows * cols);
            for r in 0..rows {
                for p in parts {
                    data.extend_from_slice(p.row(r));
                }
            }
            Tensor::from_vec(&[rows, cols], data).expect("unslice")
        }
    }
}

/// Every parameter of `names`' first holders: the ranks of its tp slices in order, at its
/// holder's cp and dp coordinate ([`holder`]) on the stage it belongs to, and its split. What
/// a run's output and a checkpoint assemble whole tensors from.
pub fn holders(
    program: &Program,
    cfg: &Config,
    names: &[String],
) -> BTreeMap<String, (Vec<u32>, Split)> {
    let mut out = BTreeMap::new();
    for name in names {
        for (k, m) in program.modules.iter().enumerate() {
            let Some(unit) = unit_of(program, k) else {
                continue;
            };
            let experts = match unit {
                Unit::Llm => cfg.llm.stack.moe.map_or(0, |x| x.experts),
                _ => 0,
            };
            let (c, d) = holder(name, m, experts);
            if let Some(stage) = (0..m.pp).find(|&p| belongs(name, unit, m, p)) {
                let ranks = (0..m.tp).map(|t| m.rank_at(t, c, d, stage)).collect();
                out.insert(name.clone(), (ranks, split_of(name)));
            }
        }
    }
    out
}
