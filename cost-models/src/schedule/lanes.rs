//! Lanes (ranks with the same data-parallel and pipeline coordinates in every module they run,
//! so they do identical work) and the id of every module task, by arithmetic on its key.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use hetpar_ir::placement::{Axis, Coord};
use hetpar_ir::plan::ModulePlan;
use hetpar_ir::{ModuleId, Plan, Rank};

use super::units::ModuleUnits;
use crate::tasks::{Lane, LaneId, TaskId};

/// Data-parallel replica `replica`, pipeline stage `stage` of module `module`: the part of a
/// module a lane runs, and the ranks that run it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplicaStage {
    pub module: ModuleId,
    pub replica: u32,
    pub stage: u32,
}

impl ReplicaStage {
    /// Replica `replica`, stage `stage` of the module at index `m`.
    pub fn new(m: usize, replica: u32, stage: u32) -> Self {
        ReplicaStage {
            module: ModuleId::new(m),
            replica,
            stage,
        }
    }

    /// The forward (`forward`) or backward of virtual chunk `chunk` of this replica stage for
    /// unit `unit`.
    pub fn task(self, chunk: u32, unit: u32, forward: bool) -> TaskKey {
        TaskKey {
            at: self,
            chunk,
            unit,
            forward,
        }
    }
}

/// A module task: the forward or backward of one virtual chunk of one replica stage for one
/// unit (a micro-batch or, for item modules, an encoder pass).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskKey {
    pub at: ReplicaStage,
    pub chunk: u32,
    pub unit: u32,
    pub forward: bool,
}

/// What a lane runs: the replica stage of every module it runs, in module order.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LaneKey(pub Vec<ReplicaStage>);

impl LaneKey {
    /// The replica stage of module `m` on this lane, if it runs `m`.
    pub fn of_module(&self, m: usize) -> Option<ReplicaStage> {
        self.0.iter().copied().find(|k| k.module.index() == m)
    }
}

pub struct Lanes {
    pub lanes: Vec<Lane>,
    pub keys: Vec<LaneKey>,
    stage_lanes: HashMap<ReplicaStage, Vec<LaneId>>,
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
            let key = LaneKey(
                coords
                    .iter()
                    .enumerate()
                    .filter_map(|(m, cm)| cm.get(&r).map(|c| ReplicaStage::new(m, c.dp, c.pp)))
                    .collect(),
            );
            let id = *lane_of_key.entry(key.clone()).or_insert_with(|| {
                lanes.push(Lane { ranks: Vec::new() });
                keys.push(key);
                (lanes.len() - 1) as LaneId
            });
            lanes[id as usize].ranks.push(r);
        }
        let mut stage_lanes: HashMap<ReplicaStage, Vec<LaneId>> = HashMap::new();
        for (l, key) in keys.iter().enumerate() {
            for &k in &key.0 {
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

    /// The lanes that run replica stage `at`.
    pub fn of_stage(&self, at: ReplicaStage) -> Vec<LaneId> {
        self.stage_lanes.get(&at).cloned().unwrap_or_default()
    }

    /// The ranks of replica stage `at`.
    pub fn rank_set(&self, at: ReplicaStage) -> BTreeSet<Rank> {
        let coords = &self.coords[at.module.index()];
        self.of_stage(at)
            .iter()
            .flat_map(|&l| self.lanes[l as usize].ranks.iter().copied())
            .filter(|r| {
                coords
                    .get(r)
                    .is_some_and(|c| c.dp == at.replica && c.pp == at.stage)
            })
            .collect()
    }
}

/// Module tasks are created in (module, replica, unit, stage, chunk, direction) order, so a
/// task's id is arithmetic on its key: no map to build or search.
pub struct TaskIndex {
    modules: Vec<ModuleTasks>,
}

/// Where one module's tasks start, and the extents its task ids are arithmetic over.
#[derive(Clone, Copy, Debug)]
struct ModuleTasks {
    first: TaskId,
    dp: u32,
    pp: u32,
    vpp: u32,
    units: u32,
}

impl TaskIndex {
    pub fn new(plan: &Plan, units: &[ModuleUnits]) -> Self {
        let mut next = 0u32;
        let modules = plan
            .modules()
            .iter()
            .zip(units)
            .map(|(mp, u)| {
                let l = &mp.layout;
                let b = ModuleTasks {
                    first: next,
                    dp: l.dp,
                    pp: l.pp,
                    vpp: l.vpp,
                    units: u.count,
                };
                next += l.dp * u.count * l.pp * l.vpp * 2;
                b
            })
            .collect();
        TaskIndex { modules }
    }

    pub fn get(&self, key: TaskKey) -> Option<TaskId> {
        let TaskKey {
            at,
            chunk: c,
            unit: j,
            forward,
        } = key;
        let t = self.modules.get(at.module.index())?;
        let (d, s) = (at.replica, at.stage);
        if d >= t.dp || s >= t.pp || c >= t.vpp || j >= t.units {
            return None;
        }
        Some(t.first + ((((d * t.units + j) * t.pp + s) * t.vpp + c) * 2 + u32::from(!forward)))
    }

    /// The id of a task that exists by construction.
    pub fn at(&self, key: TaskKey) -> TaskId {
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
