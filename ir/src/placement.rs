//! Placement: the ranks a module runs on and the order of its axes over them.
//!
//! The rank grid numbers a module's ranks by axis coordinates, the first axis of `axis_order`
//! varying fastest (the default `tp, cp, dp, pp` puts a TP group on consecutive ranks, inside a
//! node).

use serde::{Deserialize, Serialize};

use crate::ids::Rank;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Axis {
    Tp,
    Cp,
    Dp,
    Pp,
}

impl Axis {
    pub const ALL: [Axis; 4] = [Axis::Tp, Axis::Cp, Axis::Dp, Axis::Pp];

    pub fn as_str(self) -> &'static str {
        match self {
            Axis::Tp => "tp",
            Axis::Cp => "cp",
            Axis::Dp => "dp",
            Axis::Pp => "pp",
        }
    }
}

/// Ranks as written: `offset` + `count` (a contiguous range) or an explicit `list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RanksSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list: Option<Vec<u32>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementSpec {
    pub ranks: RanksSpec,
    /// Axes from fastest to slowest varying; `["tp", "cp", "dp", "pp"]` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub axis_order: Option<Vec<Axis>>,
}

/// A coordinate in a rank grid.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Coord {
    pub tp: u32,
    pub cp: u32,
    pub dp: u32,
    pub pp: u32,
}

impl Coord {
    pub fn get(&self, a: Axis) -> u32 {
        match a {
            Axis::Tp => self.tp,
            Axis::Cp => self.cp,
            Axis::Dp => self.dp,
            Axis::Pp => self.pp,
        }
    }

    fn set(&mut self, a: Axis, v: u32) {
        match a {
            Axis::Tp => self.tp = v,
            Axis::Cp => self.cp = v,
            Axis::Dp => self.dp = v,
            Axis::Pp => self.pp = v,
        }
    }
}

/// A module's ranks arranged as a tp x cp x dp x pp grid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RankGrid {
    ranks: Vec<Rank>,
    order: [Axis; 4],
    sizes: Coord,
    /// The first rank when the ranks are one increasing run (the usual `offset` + `count`),
    /// which makes `coord_of` O(1).
    contiguous_from: Option<Rank>,
}

impl RankGrid {
    /// `ranks.len()` must equal the product of `sizes` and `order` must be a permutation (the
    /// plan verifier guarantees both before building a grid).
    pub fn new(ranks: Vec<Rank>, order: [Axis; 4], sizes: Coord) -> Self {
        let contiguous = ranks.windows(2).all(|w| w[1] == w[0].wrapping_add(1));
        let contiguous_from = if contiguous {
            ranks.first().copied()
        } else {
            None
        };
        RankGrid {
            ranks,
            order,
            sizes,
            contiguous_from,
        }
    }

    pub fn ranks(&self) -> &[Rank] {
        &self.ranks
    }

    pub fn order(&self) -> [Axis; 4] {
        self.order
    }

    pub fn size(&self, a: Axis) -> u32 {
        self.sizes.get(a)
    }

    /// The rank at a coordinate.
    pub fn rank_at(&self, c: Coord) -> Rank {
        let mut idx = 0usize;
        let mut stride = 1usize;
        for a in self.order {
            idx += c.get(a) as usize * stride;
            stride *= self.sizes.get(a) as usize;
        }
        self.ranks[idx]
    }

    /// The coordinate of a rank, if the module runs on it.
    pub fn coord_of(&self, rank: Rank) -> Option<Coord> {
        let mut idx = match self.contiguous_from {
            Some(first) => {
                let i = rank.checked_sub(first)? as usize;
                (i < self.ranks.len()).then_some(i)?
            }
            None => self.ranks.iter().position(|&r| r == rank)?,
        };
        let mut c = Coord::default();
        for a in self.order {
            let n = self.sizes.get(a).max(1) as usize;
            c.set(a, (idx % n) as u32);
            idx /= n;
        }
        Some(c)
    }

    /// The group along `axis` through coordinate `at` (its ranks by increasing coordinate).
    pub fn group_at(&self, axis: Axis, at: Coord) -> Vec<Rank> {
        (0..self.sizes.get(axis))
            .map(|v| {
                let mut c = at;
                c.set(axis, v);
                self.rank_at(c)
            })
            .collect()
    }

    /// Every group along `axis` (ranks that differ only in that coordinate), in a deterministic
    /// order; each group lists its ranks by increasing coordinate.
    pub fn groups(&self, axis: Axis) -> Vec<Vec<Rank>> {
        let mut out = Vec::new();
        let others: Vec<Axis> = Axis::ALL.into_iter().filter(|&a| a != axis).collect();
        let counts: Vec<u32> = others.iter().map(|&a| self.sizes.get(a)).collect();
        let total: u32 = counts.iter().product();
        for k in 0..total {
            let mut c = Coord::default();
            let mut rest = k;
            for (i, &a) in others.iter().enumerate() {
                c.set(a, rest % counts[i].max(1));
                rest /= counts[i].max(1);
            }
            let group = (0..self.sizes.get(axis))
                .map(|v| {
                    let mut cc = c;
                    cc.set(axis, v);
                    self.rank_at(cc)
                })
                .collect();
            out.push(group);
        }
        out
    }
}
