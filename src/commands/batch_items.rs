//! `run --batch` with other items per sample than the model's data: the program's boundaries
//! were synthesized for the model's items, so a plan is lowered again for the batch's (the
//! model's `data.encoders` replaced by the batch's `per_sample` lists); a lowered program is
//! refused, naming both.

use anyhow::{bail, Context};

use hetpar::ir::json::{detect_kind, parse_value, FileKind};
use hetpar::ir::model::ModuleKind;
use hetpar::ir::program::Program;
use hetpar::ir::ModelGraph;
use hetpar::runtime::reference::Batch;
use serde_json::{json, Value};

use super::run::ProgramInput;

/// Per sample, the token counts of its items, for `counts` (per item) and `per_sample` (items
/// per sample), as a batch holds them.
fn lists(counts: &[i64], per_sample: &[i64]) -> Vec<Vec<u32>> {
    let mut at = 0usize;
    per_sample
        .iter()
        .map(|&n| {
            let n = usize::try_from(n).unwrap_or(0);
            let v = counts
                .get(at..at + n)
                .unwrap_or_default()
                .iter()
                .map(|&c| u32::try_from(c).unwrap_or(u32::MAX))
                .collect();
            at += n;
            v
        })
        .collect()
}

/// The encoders (by module name) whose items per sample in `batch` differ from `model`'s
/// data, with the batch's lists.
pub fn differing(model: &ModelGraph, batch: &Batch) -> Vec<(String, Vec<Vec<u32>>)> {
    let mut out = Vec::new();
    for m in model.modules().iter().filter(|m| m.kind.is_encoder()) {
        let (counts, per_sample) = match (m.kind, &batch.audio) {
            (ModuleKind::AudioEncoder, Some(a)) => (&a.patch_counts, &a.sample_images),
            (ModuleKind::AudioEncoder, None) => continue,
            _ => (&batch.patch_counts, &batch.sample_images),
        };
        let given = lists(counts, per_sample);
        let Some(items) = model.items(m.id) else {
            continue;
        };
        if (0..given.len()).any(|s| items.items_of(s) != given[s]) {
            out.push((m.name.clone(), given));
        }
    }
    out
}

/// The program for a batch whose items differ from the model's (`differ`): the plan of
/// `input` lowered for the model with the batch's items.
pub fn relower(
    input: &ProgramInput,
    model_text: &str,
    differ: &[(String, Vec<Vec<u32>>)],
) -> anyhow::Result<Program> {
    let name = input.input.display().to_string();
    let said: Vec<String> = differ
        .iter()
        .map(|(m, l)| {
            format!(
                "{m}: {:?} items per sample",
                l.iter().map(Vec::len).collect::<Vec<_>>()
            )
        })
        .collect();
    let text = std::fs::read_to_string(&input.input).with_context(|| name.clone())?;
    let plan = parse_value(&text).map_err(|d| anyhow::anyhow!("{name}: {d:?}"))?;
    if detect_kind(&plan) != Some(FileKind::Plan) {
        bail!(
            "{name}: the batch's items differ from the model's data ({}), for which this program \
             was lowered; give the plan instead, which `run` lowers for the batch",
            said.join("; ")
        );
    }
    let mut model: Value = serde_json::from_str(model_text)?;
    for (m, l) in differ {
        model["data"]["encoders"][m] = json!({ "per_sample": l });
    }
    let what = format!("the model with the batch's items ({})", said.join("; "));
    let (g, _) = hetpar::ir::model_from_value(&model)
        .map_err(|d| anyhow::anyhow!("{what}: {}", render(&d)))?;
    let cluster_path = input.cluster.as_deref().context("a plan needs --cluster")?;
    let cluster_text = std::fs::read_to_string(cluster_path)
        .with_context(|| cluster_path.display().to_string())?;
    let cluster =
        hetpar::ir::load_cluster(&cluster_text).map_err(|d| anyhow::anyhow!("{}", render(&d)))?;
    let (plan, _) = hetpar::ir::plan_from_value(&plan, &g, &cluster)
        .map_err(|d| anyhow::anyhow!("{name} for {what}: {}", render(&d)))?;
    let program = hetpar::planner::lower::lower(&g, &cluster, &plan)?;
    hetpar::runtime::exec::check_executed(&program).with_context(|| name.clone())?;
    Ok(program)
}

fn render(ds: &hetpar::ir::Diagnostics) -> String {
    ds.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}
