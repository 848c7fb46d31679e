//! `Cost`: a totally ordered time in seconds, with an explicit infeasible value. NaN cannot be
//! constructed, so comparisons never see it.

use std::cmp::Ordering;
use std::fmt;

/// A non-negative, finite number of seconds, or `Infeasible` (greater than every time).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub enum Cost {
    Seconds(Seconds),
    Infeasible,
}

/// Seconds as a finite non-negative f64 (the constructor rejects everything else).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(transparent)]
pub struct Seconds(f64);

impl Seconds {
    /// `None` for NaN, infinite or negative input.
    pub fn new(s: f64) -> Option<Seconds> {
        (s.is_finite() && s >= 0.0).then_some(Seconds(s))
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

impl Eq for Seconds {}

impl Ord for Seconds {
    fn cmp(&self, other: &Self) -> Ordering {
        // Both are finite, so partial_cmp always answers.
        self.0.partial_cmp(&other.0).unwrap_or(Ordering::Equal)
    }
}

impl PartialOrd for Seconds {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Cost {
    /// A finite time, or `Infeasible` when `s` is not a finite non-negative number.
    pub fn seconds(s: f64) -> Cost {
        Seconds::new(s).map_or(Cost::Infeasible, Cost::Seconds)
    }

    pub fn is_feasible(self) -> bool {
        matches!(self, Cost::Seconds(_))
    }

    pub fn as_secs(self) -> Option<f64> {
        match self {
            Cost::Seconds(s) => Some(s.get()),
            Cost::Infeasible => None,
        }
    }
}

impl Eq for Cost {}

impl Ord for Cost {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Cost::Seconds(a), Cost::Seconds(b)) => a.cmp(b),
            (Cost::Seconds(_), Cost::Infeasible) => Ordering::Less,
            (Cost::Infeasible, Cost::Seconds(_)) => Ordering::Greater,
            (Cost::Infeasible, Cost::Infeasible) => Ordering::Equal,
        }
    }
}

impl PartialOrd for Cost {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Cost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cost::Seconds(s) => write!(f, "{:.6} s", s.get()),
            Cost::Infeasible => write!(f, "infeasible"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_and_negative_times_become_infeasible_and_sort_last() {
        assert_eq!(Cost::seconds(f64::NAN), Cost::Infeasible);
        assert_eq!(Cost::seconds(-1.0), Cost::Infeasible);
        assert_eq!(Cost::seconds(f64::INFINITY), Cost::Infeasible);
        let mut v = [Cost::Infeasible, Cost::seconds(2.0), Cost::seconds(0.5)];
        v.sort();
        assert_eq!(
            v,
            [Cost::seconds(0.5), Cost::seconds(2.0), Cost::Infeasible]
        );
    }
}
