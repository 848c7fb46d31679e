//! The model verifier: checks a `ModelFile` and builds the `ModelGraph`, reporting every
//! violation rather than the first.
//!
//! Invariants checked here (rule ids in brackets; `crate::rule` describes each):
//! - at least one module and exactly one language model [model.modules];
//! - each module has exactly the parts its kind needs [module.part];
//! - sizes are at least 1, and those that drive work at most `limits` [arch.positive]; heads divide hidden (without `head_dim`) and KV heads
//!   divide heads [arch.heads]; MoE has 1 <= top_k <= experts [arch.moe];
//! - boundaries join two different existing modules, never enter an encoder [boundary.modules],
//!   are unique by name and by pair [boundary.duplicate], carry rows as wide as the destination
//!   takes [boundary.width], land at placeholders exactly when entering the language model and
//!   trace back to one origin [boundary.landing];
//! - the graph is acyclic [graph.cycle] and every encoder and projector reaches the language
//!   model [graph.connected];
//! - data: batch, sequence and token counts >= 1 and at most `limits` [data.positive]; one entry per encoder
//!   [data.encoders]; items given one way, per-sample lists as long as the batch [data.items];
//!   tokens per item divide by the projectors' token merge [data.token_merge]; every sample's
//!   rows fit the sequence [data.sequence]; items fit a learned position table [data.positions].

use std::collections::{BTreeMap, BTreeSet};

use super::arch::{EmbeddingKind, PositionKind, PositionsSpec, TransformerSpec};
use super::data::{ItemTokens, TrainingData};
use super::file::{Landing, ModelFile, ModuleKind, ModuleSpec};
use super::graph::{Body, Boundary, ModelGraph, Module};
use crate::diag::{index, join, Diagnostics};
use crate::ids::{BoundaryId, ModuleId};
use crate::rule::Rule;

/// Samples per step hetpar accepts (far above real global batches; bounds per-sample work).
pub const MAX_GLOBAL_BATCH: u32 = 1 << 20;

/// Two modules a boundary joins, from one to the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Joined {
    from: ModuleId,
    to: ModuleId,
}

/// Verifies `file` and builds its graph. `Ok` carries warnings (possibly none); `Err` carries
/// every error found (and the warnings).
pub fn build(file: ModelFile) -> Result<(ModelGraph, Diagnostics), Diagnostics> {
    let mut ds = Diagnostics::new();

    // Modules, in name order (the file's map is sorted): ids are dense and deterministic.
    let mut modules: Vec<Option<Module>> = Vec::new();
    let mut names: BTreeMap<String, ModuleId> = BTreeMap::new();
    for (i, (name, spec)) in file.modules.iter().enumerate() {
        let id = ModuleId::new(i);
        names.insert(name.clone(), id);
        let path = join("modules", name);
        modules.push(check_module(&path, spec, &mut ds).map(|body| Module {
            id,
            name: name.clone(),
            kind: spec.kind,
            body,
        }));
    }
    let lms: Vec<ModuleId> = file
        .modules
        .values()
        .enumerate()
        .filter(|(_, m)| m.kind == ModuleKind::LanguageModel)
        .map(|(i, _)| ModuleId::new(i))
        .collect();
    if file.modules.is_empty() {
        ds.error(
            "modules",
            Rule::ModelModules,
            "a model needs at least one module",
        );
    } else if lms.len() != 1 {
        ds.error(
            "modules",
            Rule::ModelModules,
            format!(
                "a model has exactly one language_model module; found {}",
                lms.len()
            ),
        );
    }

    // Boundaries.
    let mut edges: Vec<(usize, ModuleId, ModuleId, Landing, String)> = Vec::new();
    let mut seen_names: BTreeSet<String> = BTreeSet::new();
    let mut seen_pairs: BTreeSet<Joined> = BTreeSet::new();
    for (i, b) in file.boundaries.iter().enumerate() {
        let path = index("boundaries", i);
        let name = b.name();
        if !seen_names.insert(name.clone()) {
            ds.error(
                join(&path, "name"),
                Rule::BoundaryDuplicate,
                format!("boundary name \"{name}\" is used twice"),
            );
        }
        let from = names.get(&b.from).copied();
        let to = names.get(&b.to).copied();
        if from.is_none() {
            ds.error(
                join(&path, "from"),
                Rule::BoundaryModules,
                format!("no module named \"{}\"", b.from),
            );
        }
        if to.is_none() {
            ds.error(
                join(&path, "to"),
                Rule::BoundaryModules,
                format!("no module named \"{}\"", b.to),
            );
        }
        let (Some(from), Some(to)) = (from, to) else {
            continue;
        };
        if from == to {
            ds.error(
                join(&path, "to"),
                Rule::BoundaryModules,
                "a boundary joins two different modules",
            );
            continue;
        }
        let to_kind = file.modules[&b.to].kind;
        if to_kind.is_encoder() {
            ds.error(
                join(&path, "to"),
                Rule::BoundaryModules,
                format!(
                    "\"{}\" is an encoder: encoders take raw input, no boundary enters them",
                    b.to
                ),
            );
            continue;
        }
        if !seen_pairs.insert(Joined { from, to }) {
            ds.error(
                &path,
                Rule::BoundaryDuplicate,
                format!("a second boundary from \"{}\" to \"{}\"", b.from, b.to),
            );
            continue;
        }
        let wants = if to_kind == ModuleKind::LanguageModel {
            Landing::Placeholders
        } else {
            Landing::Rows
        };
        if b.landing != wants {
            ds.error(
                join(&path, "landing"),
                Rule::BoundaryLanding,
                match wants {
                    Landing::Placeholders => "rows entering a language model land at its placeholders: use \"placeholders\"",
                    Landing::Rows => "only a language model has placeholder positions: use \"rows\"",
                },
            );
        }
        edges.push((i, from, to, b.landing, name));
    }

    // Topological order (Kahn, ties by id) and cycle detection.
    let n = modules.len();
    let mut indeg = vec![0usize; n];
    let mut succ: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut pred: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (k, (_, f, t, _, _)) in edges.iter().enumerate() {
        indeg[t.index()] += 1;
        succ[f.index()].push(k);
        pred[t.index()].push(k);
    }
    let mut ready: BTreeSet<usize> = (0..n).filter(|&i| indeg[i] == 0).collect();
    let mut topo: Vec<ModuleId> = Vec::new();
    while let Some(&i) = ready.iter().next() {
        ready.remove(&i);
        topo.push(ModuleId::new(i));
        for &k in &succ[i] {
            let t = edges[k].2.index();
            indeg[t] -= 1;
            if indeg[t] == 0 {
                ready.insert(t);
            }
        }
    }
    let acyclic = topo.len() == n;
    if !acyclic {
        let stuck: Vec<&str> = file
            .modules
            .keys()
            .enumerate()
            .filter(|(i, _)| indeg[*i] > 0)
            .map(|(_, k)| k.as_str())
            .collect();
        ds.error(
            "boundaries",
            Rule::GraphCycle,
            format!("the module graph has a cycle through {}", stuck.join(", ")),
        );
    }

    // Origins, merges and widths, in topological order.
    let mut origin: Vec<Option<ModuleId>> = vec![None; n];
    let mut merge: Vec<u64> = vec![1; n];
    let mut boundaries: Vec<Boundary> = Vec::new();
    if acyclic {
        for &m in &topo {
            let i = m.index();
            let Some(module) = &modules[i] else { continue };
            let incoming = &pred[i];
            match module.kind {
                k if k.is_encoder() => origin[i] = Some(m),
                ModuleKind::LanguageModel => origin[i] = Some(m),
                _ => {
                    let sources: BTreeSet<Option<ModuleId>> = incoming
                        .iter()
                        .map(|&k| origin[edges[k].1.index()])
                        .collect();
                    if incoming.len() == 1 {
                        let f = edges[incoming[0]].1.index();
                        origin[i] = origin[f];
                        merge[i] = merge[f].saturating_mul(u64::from(module.token_merge()));
                    } else if incoming.is_empty() {
                        ds.error(
                            join("modules", &module.name),
                            Rule::GraphConnected,
                            format!("no boundary feeds the {}", module.kind.as_str()),
                        );
                    } else if sources.len() > 1 || incoming.len() > 1 {
                        ds.error(
                            join("modules", &module.name),
                            Rule::BoundaryLanding,
                            format!(
                                "a {} takes rows from exactly one boundary; {} enter it",
                                module.kind.as_str(),
                                incoming.len()
                            ),
                        );
                    }
                }
            }
        }
        for &(i, f, t, landing, ref name) in &edges {
            let path = index("boundaries", i);
            let (Some(src), Some(dst)) = (&modules[f.index()], &modules[t.index()]) else {
                continue;
            };
            let width = src.output_width();
            if let Some(want) = dst.input_width() {
                if width != want {
                    ds.error(
                        &path,
                        Rule::BoundaryWidth,
                        format!(
                            "\"{}\" outputs rows of width {width} but \"{}\" takes rows of width {want}",
                            src.name, dst.name
                        ),
                    );
                }
            }
            if landing == Landing::Placeholders {
                let o =
                    origin[f.index()].map(|o| file.modules.values().nth(o.index()).map(|s| s.kind));
                if !matches!(o, Some(Some(k)) if k.is_encoder()) {
                    ds.error(
                        join(&path, "from"),
                        Rule::BoundaryLanding,
                        format!("rows placed at placeholders come from an encoder; \"{}\" does not trace back to one", src.name),
                    );
                }
            }
            if let Some(o) = origin[f.index()] {
                boundaries.push(Boundary {
                    id: BoundaryId::new(boundaries.len()),
                    name: name.clone(),
                    from: f,
                    to: t,
                    landing,
                    origin: o,
                    merge: u32::try_from(merge[f.index()]).unwrap_or(u32::MAX),
                    width,
                });
            }
        }
        // Every encoder and projector reaches the language model.
        if let [lm] = lms[..] {
            let mut reaches = vec![false; n];
            reaches[lm.index()] = true;
            for &m in topo.iter().rev() {
                if succ[m.index()].iter().any(|&k| reaches[edges[k].2.index()]) {
                    reaches[m.index()] = true;
                }
            }
            for (i, (name, spec)) in file.modules.iter().enumerate() {
                if (spec.kind.is_encoder() || spec.kind == ModuleKind::Projector) && !reaches[i] {
                    ds.error(
                        join("modules", name),
                        Rule::GraphConnected,
                        format!(
                            "the {} \"{name}\" does not reach the language model",
                            spec.kind.as_str()
                        ),
                    );
                }
            }
        }
    }

    // Data.
    let data = &file.data;
    if data.global_batch == 0 {
        ds.error(
            "data.global_batch",
            Rule::DataPositive,
            "must be at least 1",
        );
    } else if data.global_batch > MAX_GLOBAL_BATCH {
        ds.error(
            "data.global_batch",
            Rule::DataPositive,
            format!(
                "{} samples; at most {MAX_GLOBAL_BATCH} are supported",
                data.global_batch
            ),
        );
    }
    if data.sequence_length == 0 {
        ds.error(
            "data.sequence_length",
            Rule::DataPositive,
            "must be at least 1",
        );
    }
    let mut items: BTreeMap<ModuleId, ItemTokens> = BTreeMap::new();
    for (name, d) in &data.encoders {
        let path = join("data.encoders", name);
        let Some(&id) = names.get(name) else {
            ds.error(
                &path,
                Rule::DataEncoders,
                format!("no module named \"{name}\""),
            );
            continue;
        };
        let spec = &file.modules[name];
        if !spec.kind.is_encoder() {
            ds.error(
                &path,
                Rule::DataEncoders,
                format!("\"{name}\" is a {}, not an encoder", spec.kind.as_str()),
            );
            continue;
        }
        if let Some(it) = check_items(&path, d, spec.tokens_per_item, data.global_batch, &mut ds) {
            items.insert(id, it);
        }
    }
    for (i, (name, spec)) in file.modules.iter().enumerate() {
        if spec.kind.is_encoder() && !data.encoders.contains_key(name) {
            ds.error(
                "data.encoders",
                Rule::DataEncoders,
                format!("the encoder \"{name}\" has no entry (how many items per sample, of how many tokens)"),
            );
        }
        // Items vs. the encoder's position table.
        if let (
            Some(Some(Module {
                body:
                    Body::Encoder {
                        positions,
                        class_token,
                        ..
                    },
                ..
            })),
            Some(it),
        ) = (modules.get(i), items.get(&ModuleId::new(i)))
        {
            if let (PositionKind::Learned, Some(max)) = (positions.kind, positions.max_positions) {
                let lead = u32::from(*class_token);
                if let Some(&big) = it.distinct_item_tokens().last() {
                    if big.saturating_add(lead) > max {
                        let class = if lead > 0 { " and its class row" } else { "" };
                        ds.error(
                            join("data.encoders", name),
                            Rule::DataPositions,
                            format!("an item of {big} tokens{class} exceeds the encoder's learned position table of {max}"),
                        );
                    }
                }
            }
        }
    }
    // Token merges and sequence fit, per boundary into the language model.
    if acyclic && !ds.has_errors() {
        // Fixed item counts make every sample alike: one entry then stands for all of them.
        let samples = if items.values().any(ItemTokens::is_uneven) {
            data.global_batch as usize
        } else {
            1
        };
        let mut placed: Vec<u64> = vec![0; samples];
        for b in &boundaries {
            if b.landing != Landing::Placeholders {
                continue;
            }
            let Some(it) = items.get(&b.origin) else {
                continue;
            };
            let origin_name = &modules[b.origin.index()]
                .as_ref()
                .map(|m| m.name.clone())
                .unwrap_or_default();
            for t in it.distinct_item_tokens() {
                if u64::from(t) % u64::from(b.merge) != 0 {
                    ds.error(
                        join("data.encoders", origin_name),
                        Rule::DataTokenMerge,
                        format!("an item of {t} tokens does not divide into groups of {} (the token merge on the way to the language model)", b.merge),
                    );
                    break;
                }
            }
            for (s, p) in placed.iter_mut().enumerate() {
                *p = p.saturating_add(it.tokens_of(s) / u64::from(b.merge));
            }
        }
        if let Some((s, &rows)) = placed
            .iter()
            .enumerate()
            .find(|(_, &r)| r > u64::from(data.sequence_length))
        {
            ds.error(
                "data",
                Rule::DataSequence,
                format!(
                    "sample {s} places {rows} encoder rows into a sequence of {} tokens",
                    data.sequence_length
                ),
            );
        }
    }

    // Last, so that the rules above still report on a file with a size out of bounds.
    super::limits::check(&file, &mut ds);
    if ds.has_errors() {
        return Err(ds);
    }
    let modules: Vec<Module> = modules.into_iter().flatten().collect();
    let training = TrainingData {
        global_batch: data.global_batch,
        sequence_length: data.sequence_length,
        precision: data.precision,
        optimizer: data.optimizer,
    };
    let lm = lms[0];
    let graph = ModelGraph::assemble(file, modules, boundaries, topo, lm, training, items);
    Ok((graph, ds))
}

fn check_items(
    path: &str,
    d: &super::file::EncoderDataSpec,
    default_tokens: Option<u32>,
    global_batch: u32,
    ds: &mut Diagnostics,
) -> Option<ItemTokens> {
    match (&d.items_per_sample, &d.per_sample) {
        (Some(items), None) => {
            let Some(tokens) = d.tokens_per_item.or(default_tokens) else {
                ds.error(
                    join(path, "tokens_per_item"),
                    Rule::DataItems,
                    "missing, and the encoder gives no tokens_per_item either",
                );
                return None;
            };
            if tokens == 0 {
                ds.error(
                    join(path, "tokens_per_item"),
                    Rule::DataPositive,
                    "must be at least 1",
                );
                return None;
            }
            Some(ItemTokens::Fixed {
                items: *items,
                tokens,
            })
        }
        (None, Some(list)) => {
            if d.tokens_per_item.is_some() {
                ds.error(
                    join(path, "tokens_per_item"),
                    Rule::DataItems,
                    "per_sample lists give every item's tokens; tokens_per_item does not apply",
                );
            }
            if list.len() != global_batch as usize {
                ds.error(
                    join(path, "per_sample"),
                    Rule::DataItems,
                    format!(
                        "has {} entries; the global batch has {global_batch} samples",
                        list.len()
                    ),
                );
                return None;
            }
            let mut ok = true;
            for (s, sample) in list.iter().enumerate() {
                if let Some(j) = sample.iter().position(|&t| t == 0) {
                    ds.error(
                        format!("{}[{s}][{j}]", join(path, "per_sample")),
                        Rule::DataPositive,
                        "an item has at least 1 token",
                    );
                    ok = false;
                }
            }
            ok.then(|| ItemTokens::PerSample(list.clone()))
        }
        (Some(_), Some(_)) => {
            ds.error(
                path,
                Rule::DataItems,
                "give either items_per_sample or per_sample, not both",
            );
            None
        }
        (None, None) => {
            ds.error(
                path,
                Rule::DataItems,
                "give items_per_sample (with tokens_per_item) or a per_sample list",
            );
            None
        }
    }
}

fn check_transformer(path: &str, t: &TransformerSpec, ds: &mut Diagnostics) -> bool {
    let before = ds.len();
    super::verify_reals::check_transformer(path, t, ds);
    for (field, v) in [
        ("layers", t.layers),
        ("hidden", t.hidden),
        ("heads", t.heads),
        ("ffn_hidden", t.ffn_hidden),
    ] {
        if v == 0 {
            ds.error(join(path, field), Rule::ArchPositive, "must be at least 1");
        }
    }
    for (field, v) in [("kv_heads", t.kv_heads), ("head_dim", t.head_dim)] {
        if v == Some(0) {
            ds.error(join(path, field), Rule::ArchPositive, "must be at least 1");
        }
    }
    if t.heads > 0 && t.head_dim.is_none() && !t.hidden.is_multiple_of(t.heads) {
        ds.error(
            join(path, "heads"),
            Rule::ArchHeads,
            format!(
                "{} heads do not divide hidden {} (give head_dim to decouple them)",
                t.heads, t.hidden
            ),
        );
    }
    let kv = t.kv_heads();
    if kv > 0 && !t.heads.is_multiple_of(kv) {
        ds.error(
            join(path, "kv_heads"),
            Rule::ArchHeads,
            format!("{kv} KV heads do not divide {} heads", t.heads),
        );
    }
    if let Some(m) = &t.moe {
        let mp = join(path, "moe");
        if m.experts == 0 || m.expert_ffn_hidden == 0 {
            ds.error(
                &mp,
                Rule::ArchPositive,
                "experts and expert_ffn_hidden must be at least 1",
            );
        }
        if m.top_k == 0 || m.top_k > m.experts {
            ds.error(
                join(&mp, "top_k"),
                Rule::ArchMoe,
                format!("top_k {} is not within 1..={}", m.top_k, m.experts),
            );
        }
        if m.layer_frequency == 0 {
            ds.error(
                join(&mp, "layer_frequency"),
                Rule::ArchMoe,
                "must be at least 1",
            );
        }
    }
    ds.len() == before
}

fn check_positions(path: &str, p: &PositionsSpec, ds: &mut Diagnostics) -> bool {
    let before = ds.len();
    super::verify_reals::check_positions(path, p, ds);
    if ds.len() != before {
        return false;
    }
    match (p.kind, p.max_positions) {
        (PositionKind::Learned, None) => {
            ds.error(
                join(path, "max_positions"),
                Rule::ModulePart,
                "a learned table needs max_positions",
            );
            false
        }
        (PositionKind::Learned, Some(0)) => {
            ds.error(
                join(path, "max_positions"),
                Rule::ArchPositive,
                "must be at least 1",
            );
            false
        }
        (PositionKind::Rope | PositionKind::None, Some(_)) => {
            ds.error(
                join(path, "max_positions"),
                Rule::ModulePart,
                "only a learned table has max_positions",
            );
            false
        }
        _ => true,
    }
}

/// Checks that a module has the parts of its kind; returns its body when it is sound.
fn check_module(path: &str, m: &ModuleSpec, ds: &mut Diagnostics) -> Option<Body> {
    let before = ds.len();
    let kind = m.kind.as_str();
    let need = |present: bool, field: &str, ds: &mut Diagnostics| {
        if !present {
            ds.error(
                join(path, field),
                Rule::ModulePart,
                format!("a {kind} needs `{field}`"),
            );
        }
    };
    let forbid = |present: bool, field: &str, ds: &mut Diagnostics| {
        if present {
            ds.error(
                join(path, field),
                Rule::ModulePart,
                format!("a {kind} has no `{field}`"),
            );
        }
    };
    let is_enc = m.kind.is_encoder();
    let is_lm = m.kind == ModuleKind::LanguageModel;
    let is_proj = m.kind == ModuleKind::Projector;
    let is_gen = m.kind == ModuleKind::Generator;
    need(m.transformer.is_some() || is_proj, "transformer", ds);
    forbid(m.transformer.is_some() && is_proj, "transformer", ds);
    need(m.embedding.is_some() || !is_enc, "embedding", ds);
    forbid(m.embedding.is_some() && !is_enc, "embedding", ds);
    need(m.positions.is_some() || !(is_enc || is_lm), "positions", ds);
    forbid(m.positions.is_some() && !(is_enc || is_lm), "positions", ds);
    forbid(
        m.tokens_per_item.is_some() && !is_enc,
        "tokens_per_item",
        ds,
    );
    forbid(m.pre_norm.is_some() && !is_enc, "pre_norm", ds);
    forbid(m.class_token.is_some() && !is_enc, "class_token", ds);
    forbid(m.final_norm.is_some() && !is_enc, "final_norm", ds);
    forbid(m.token_id.is_some() && !is_enc, "token_id", ds);
    need(m.mlp.is_some() || !is_proj, "mlp", ds);
    forbid(m.mlp.is_some() && !is_proj, "mlp", ds);
    need(m.vocab_size.is_some() || !is_lm, "vocab_size", ds);
    forbid(m.vocab_size.is_some() && !is_lm, "vocab_size", ds);
    forbid(m.tied_embeddings.is_some() && !is_lm, "tied_embeddings", ds);
    forbid(m.out_features.is_some() && !is_gen, "out_features", ds);
    if ds.len() > before {
        return None;
    }
    let t_ok = m
        .transformer
        .as_ref()
        .is_none_or(|t| check_transformer(&join(path, "transformer"), t, ds));
    let p_ok = m
        .positions
        .as_ref()
        .is_none_or(|p| check_positions(&join(path, "positions"), p, ds));
    if m.tokens_per_item == Some(0) {
        ds.error(
            join(path, "tokens_per_item"),
            Rule::ArchPositive,
            "must be at least 1",
        );
    }
    if m.vocab_size == Some(0) {
        ds.error(
            join(path, "vocab_size"),
            Rule::ArchPositive,
            "must be at least 1",
        );
    }
    if m.out_features == Some(0) {
        ds.error(
            join(path, "out_features"),
            Rule::ArchPositive,
            "must be at least 1",
        );
    }
    if let Some(e) = &m.embedding {
        let ep = join(path, "embedding");
        let (needs, forbids): (&[&str], &[&str]) = match e.kind {
            EmbeddingKind::Patch => (
                &["patch_size", "channels"],
                &["in_features", "kernel_size", "conv_layers"],
            ),
            EmbeddingKind::Conv1d => (
                &["in_features", "kernel_size", "conv_layers"],
                &["patch_size", "temporal_patch_size", "channels"],
            ),
            EmbeddingKind::Linear => (
                &["in_features"],
                &[
                    "patch_size",
                    "temporal_patch_size",
                    "channels",
                    "kernel_size",
                    "conv_layers",
                ],
            ),
        };
        let field = |f: &str| match f {
            "patch_size" => e.patch_size,
            "temporal_patch_size" => e.temporal_patch_size,
            "channels" => e.channels,
            "in_features" => e.in_features,
            "kernel_size" => e.kernel_size,
            _ => e.conv_layers,
        };
        for f in needs {
            match field(f) {
                None => ds.error(
                    join(&ep, f),
                    Rule::ModulePart,
                    format!("a {:?} embedding needs `{f}`", e.kind).to_lowercase(),
                ),
                Some(0) => ds.error(join(&ep, f), Rule::ArchPositive, "must be at least 1"),
                Some(_) => {}
            }
        }
        if e.temporal_patch_size == Some(0) {
            ds.error(
                join(&ep, "temporal_patch_size"),
                Rule::ArchPositive,
                "must be at least 1",
            );
        }
        for f in forbids {
            if field(f).is_some() {
                ds.error(
                    join(&ep, f),
                    Rule::ModulePart,
                    format!("a {:?} embedding has no `{f}`", e.kind).to_lowercase(),
                );
            }
        }
    }
    if let Some(mlp) = &m.mlp {
        let mp = join(path, "mlp");
        if mlp.widths.len() < 2 {
            ds.error(
                join(&mp, "widths"),
                Rule::ModulePart,
                "an MLP needs at least two widths (input and output)",
            );
        }
        for (i, &w) in mlp.widths.iter().enumerate() {
            if w == 0 {
                ds.error(
                    index(&join(&mp, "widths"), i),
                    Rule::ArchPositive,
                    "must be at least 1",
                );
            }
        }
        if mlp.token_merge == 0 {
            ds.error(
                join(&mp, "token_merge"),
                Rule::ArchPositive,
                "must be at least 1",
            );
        } else if let Some(&w0) = mlp.widths.first() {
            if w0 % mlp.token_merge != 0 {
                ds.error(
                    join(&mp, "token_merge"),
                    Rule::BoundaryWidth,
                    format!(
                        "the merged input width {w0} does not divide into {} rows",
                        mlp.token_merge
                    ),
                );
            }
        }
    }
    if ds.len() > before || !t_ok || !p_ok {
        return None;
    }
    // Parts are present: the verifier checked them above.
    let t = m.transformer.clone();
    Some(match m.kind {
        k if k.is_encoder() => Body::Encoder {
            transformer: t?,
            embedding: m.embedding.clone()?,
            positions: m.positions.clone()?,
            tokens_per_item: m.tokens_per_item.unwrap_or(0),
            pre_norm: m.pre_norm.unwrap_or(false),
            class_token: m.class_token.unwrap_or(false),
            final_norm: m.final_norm.unwrap_or(true),
            token_id: m.token_id,
        },
        ModuleKind::Projector => Body::Projector(m.mlp.clone()?),
        ModuleKind::LanguageModel => Body::LanguageModel {
            transformer: t?,
            vocab_size: m.vocab_size?,
            tied_embeddings: m.tied_embeddings.unwrap_or(false),
            positions: m.positions.clone()?,
        },
        _ => Body::Generator {
            transformer: t?,
            out_features: m.out_features,
        },
    })
}
