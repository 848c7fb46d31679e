//! A plan against the size of its cluster: the GPU count it was made for (`cluster_gpus`) and
//! the GPUs it leaves idle. Both are warnings: the plan still runs, but a cluster that kept its
//! name and changed its size, or a quarter of the GPUs idle, is rarely what was meant.

use std::collections::BTreeSet;

use super::{ModulePlan, PlanFile};
use crate::cluster::Cluster;
use crate::diag::Diagnostics;
use crate::ids::Rank;
use crate::rule::Rule;

/// Warns when the plan's `cluster_gpus` is not the cluster's GPU count.
pub(super) fn check_cluster_size(file: &PlanFile, cluster: &Cluster, ds: &mut Diagnostics) {
    let Some(gpus) = file.cluster_gpus else {
        return;
    };
    if u64::from(gpus) != cluster.world_size() {
        ds.warning(
            "cluster_gpus",
            Rule::PlanClusterSize,
            format!(
                "the plan was made for a cluster of {gpus} GPUs; cluster \"{}\" has {}",
                cluster.name,
                cluster.world_size()
            ),
        );
    }
}

/// Warns when some GPUs of the cluster run no module, naming them.
pub(super) fn check_unused(modules: &[ModulePlan], cluster: &Cluster, ds: &mut Diagnostics) {
    let used: BTreeSet<Rank> = modules
        .iter()
        .flat_map(|m| m.grid.ranks().iter().copied())
        .collect();
    let world = cluster.world_size();
    let idle = world.saturating_sub(used.len() as u64);
    if idle == 0 {
        return;
    }
    ds.warning(
        "modules",
        Rule::PlacementUnused,
        format!(
            "the plan uses {} of the cluster's {world} GPUs; {idle} are idle: ranks {}",
            used.len(),
            idle_ranges(&used, world)
        ),
    );
}

/// The ranks below `world` missing from `used`, as ranges (`816-1023`), the first few only.
fn idle_ranges(used: &BTreeSet<Rank>, world: u64) -> String {
    const SHOWN: usize = 8;
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    let mut next = 0u64;
    // Gaps between used ranks, then the tail after the last one.
    for r in used.iter().map(|&r| u64::from(r)).chain([world]) {
        if r > next {
            ranges.push((next, r - 1));
        }
        next = r + 1;
        if ranges.len() > SHOWN {
            break;
        }
    }
    let mut parts: Vec<String> = ranges
        .iter()
        .take(SHOWN)
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    if ranges.len() > SHOWN {
        parts.push("...".into());
    }
    parts.join(", ")
}
