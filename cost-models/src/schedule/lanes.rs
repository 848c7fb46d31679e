//! Lanes (ranks with the same data-parallel and pipeline coordinates in every module they run,
//! so they do identical work) and the id of every module task, by arithmetic on its key.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use hetpar_ir::placement::{Axis, Coord};
use hetpar_ir::plan::ModulePlan;
use hetpar_ir::{Plan, Rank};

use super::units::ModuleUnits;
use crate::tasks::{Lane, LaneId, TaskId};

/// Key of a module task: (module, replica, stage, chunk, unit, forward?). The unit is a
/// micro-batch or, for item modules, an encoder pass.
pub type Key = (u32, u32, u32, u32, u32, bool);

/// Per lane, (module, dp, pp) of every module it runs, in module order.
pub type LaneKey = Vec<(u32, u32, u32)>;

pub struct Lanes {
    pub lanes: Vec<Lane>,
    pub keys: Vec<LaneKey>,
    stage_lanes: HashMap<(u32, u32, u32), Vec<LaneId>>,
    coords: Vec<HashMap<Rank, Coord>>,
}

fn coord_map(mp: &ModulePlan) -> HashMap<Rank, Coord> {
    let g = &mp.grid;
    let mut out = HashMap::with_capacity(g.ranks().len());
    for pp in 0..g.size(Axis::Pp) {
        for dp in 0..g.size(Axis::Dp) {
            for cp in 0..g.size(Axis::Cp) {
                for tp in 0..g.size(Axis::Tp) {
                    let c = Coord { tp, cp, dp, pp };
                    out.insert(g.rank_at(c), c);
                }
            }
        }
    }
    out
}

impl Lanes {
    pub fn new(plan: &Plan) -> Self {
        let coords: Vec<HashMap<Rank, Coord>> = plan.modules().iter().map(coord_map).collect();
        let mut lane_of_key: BTreeMap<LaneKey, LaneId> = BTreeMap::new();
        let mut lanes: Vec<Lane> = Vec::new();
        let mut keys: Vec<LaneKey> = Vec::new();
        for r in plan.used_ranks() {
            let key: LaneKey = coords
                .iter()
                .enumerate()
                .filter_map(|(m, cm)| cm.get(&r).map(|c| (m as u32, c.dp, c.pp)))
                .collect();
            let id = *lane_of_key.entry(key.clone()).or_insert_with(|| {
                lanes.push(Lane { ranks: Vec::new() });
                keys.push(key);
                (lanes.len() - 1) as LaneId
            });
            lanes[id as usize].ranks.push(r);
        }
        let mut stage_lanes: HashMap<(u32, u32, u32), Vec<LaneId>> = HashMap::new();
        for (l, key) in keys.iter().enumerate() {
            for &k in key {
                stage_lanes.entry(k).or_default().push(l as LaneId);
            }
        }
        Lanes {
            lanes,
            keys,
            stage_lanes,
            coords,
        }
    }

    /// The lanes that run replica `d`, stage `s` of module `m`.
    pub fn of_stage(&self, m: usize, d: u32, s: u32) -> Vec<LaneId> {
        self.stage_lanes
            .get(&(m as u32, d, s))
            .cloned()
            .unwrap_or_default()
    }

    /// The ranks of replica `d`, stage `s` of module `m`.
    pub fn rank_set(&self, m: usize, d: u32, s: u32) -> BTreeSet<Rank> {
        self.of_stage(m, d, s)
            .iter()
            .flat_map(|&l| self.lanes[l as usize].ranks.iter().copied())
            .filter(|r| {
                self.coords[m]
                    .get(r)
                    .is_some_and(|c| c.dp == d && c.pp == s)
            })
            .collect()
    }
}

/// (replica, stage) of module `m` on the lane with `key`.
pub fn lookup(key: &LaneKey, m: usize) -> Option<(u32, u32)> {
    key.iter().find(|k| k.0 as usize == m).map(|k| (k.1, k.2))
}

/// Module tasks are created in (module, replica, unit, stage, chunk, direction) order, so a
/// task's id is arithmetic on its key: no map to build or search.
pub struct TaskIndex {
    /// First task of each module, and its (dp, pp, vpp, units).
    base: Vec<(u32, u32, u32, u32, u32)>,
}

impl TaskIndex {
    pub fn new(plan: &Plan, units: &[ModuleUnits]) -> Self {
        let mut next = 0u32;
        let base = plan
            .modules()
            .iter()
            .zip(units)
            .map(|(mp, u)| {
                let l = &mp.layout;
                let b = (next, l.dp, l.pp, l.vpp, u.count);
                next += l.dp * u.count * l.pp * l.vpp * 2;
                b
            })
            .collect();
        TaskIndex { base }
    }

    pub fn get(&self, (m, d, s, c, j, fwd): Key) -> Option<TaskId> {
        let &(base, dp, pp, vpp, units) = self.base.get(m as usize)?;
        if d >= dp || s >= pp || c >= vpp || j >= units {
            return None;
        }
        Some(base + ((((d * units + j) * pp + s) * vpp + c) * 2 + u32::from(!fwd)))
    }

    /// The id of a task that exists by construction.
    pub fn at(&self, key: Key) -> TaskId {
        self.get(key).unwrap_or(TaskId::MAX)
    }
}

/// The first rank (tp = cp = 0) of replica `d`, stage `s` of a module.
pub fn first_rank(mp: &ModulePlan, d: u32, s: u32) -> Rank {
    mp.grid.rank_at(Coord {
        tp: 0,
        cp: 0,
        dp: d,
        pp: s,
    })
}
