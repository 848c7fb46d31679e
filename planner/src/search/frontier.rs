//! Pareto frontiers in (time, tail, memory): the options of a group of modules that no other
//! option beats on all three. Exact for any objective that grows with time and tail, under any
//! memory limit: a dominated option (no faster, no shorter tail and no lighter than another)
//! is never the only best choice. `combine` in the cost model grows with both times.

/// One option: its work time, tail time and memory, and what it stands for.
#[derive(Clone, Debug, PartialEq)]
pub struct Point<T> {
    pub time: f64,
    pub tail: f64,
    pub memory: f64,
    pub value: T,
}

impl<T> Point<T> {
    fn dominates<U>(&self, o: &Point<U>) -> bool {
        self.time <= o.time && self.tail <= o.tail && self.memory <= o.memory
    }
}

/// Points sorted by memory, then time, then tail; none dominated by another.
#[derive(Clone, Debug, PartialEq)]
pub struct Frontier<T> {
    points: Vec<Point<T>>,
}

impl<T: Clone> Frontier<T> {
    /// The frontier of `points`; of equal points the first given stays (deterministic).
    pub fn new(mut points: Vec<Point<T>>) -> Self {
        points.retain(|p| p.time.is_finite() && p.tail.is_finite() && p.memory.is_finite());
        // Stable, so equal points keep their given order.
        points.sort_by(|a, b| {
            a.memory
                .total_cmp(&b.memory)
                .then(a.time.total_cmp(&b.time))
                .then(a.tail.total_cmp(&b.tail))
        });
        let mut out: Vec<Point<T>> = Vec::new();
        for p in points {
            // Everything kept sorts before p, so only a kept point can dominate it.
            if !out.iter().any(|q| q.dominates(&p)) {
                out.push(p);
            }
        }
        Frontier { points: out }
    }

    pub fn points(&self) -> &[Point<T>] {
        &self.points
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The points within `memory`.
    pub fn within(&self, memory: f64) -> &[Point<T>] {
        let n = self.points.partition_point(|p| p.memory <= memory);
        &self.points[..n]
    }

    /// Every pair of points combined (times and memories added), as a frontier.
    pub fn sum<U: Clone, V: Clone>(
        &self,
        other: &Frontier<U>,
        join: impl Fn(&T, &U) -> V,
    ) -> Frontier<V> {
        let mut v = Vec::with_capacity(self.points.len() * other.points.len());
        for a in &self.points {
            for b in &other.points {
                v.push(Point {
                    time: a.time + b.time,
                    tail: a.tail + b.tail,
                    memory: a.memory + b.memory,
                    value: join(&a.value, &b.value),
                });
            }
        }
        Frontier::new(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(time: f64, memory: f64, value: u32) -> Point<u32> {
        Point {
            time,
            tail: 0.0,
            memory,
            value,
        }
    }

    fn fastest(f: &Frontier<impl Clone>, limit: f64) -> f64 {
        f.within(limit)
            .iter()
            .map(|q| q.time + q.tail)
            .fold(f64::INFINITY, f64::min)
    }

    #[test]
    fn dominated_points_are_dropped_and_the_rest_ordered() {
        let f = Frontier::new(vec![
            p(3.0, 1.0, 0),
            p(2.0, 2.0, 1),
            p(2.5, 3.0, 2),
            p(1.0, 4.0, 3),
        ]);
        let kept: Vec<u32> = f.points().iter().map(|q| q.value).collect();
        assert_eq!(kept, vec![0, 1, 3], "2 is slower and heavier than 1");
    }

    #[test]
    fn a_point_with_a_shorter_tail_is_kept_though_slower() {
        let mut slow = p(2.0, 1.0, 1);
        slow.tail = 0.0;
        let mut fast = p(1.0, 1.0, 0);
        fast.tail = 5.0;
        assert_eq!(Frontier::new(vec![fast, slow]).points().len(), 2);
    }

    #[test]
    fn the_points_within_a_memory_limit_hold_the_fastest() {
        let f = Frontier::new(vec![p(3.0, 1.0, 0), p(2.0, 2.0, 1), p(1.0, 4.0, 3)]);
        assert_eq!(fastest(&f, 3.9), 2.0);
        assert_eq!(fastest(&f, 4.0), 1.0);
        assert!(f.within(0.5).is_empty());
    }

    #[test]
    fn a_sum_of_frontiers_holds_the_best_pair_for_every_limit() {
        let a = Frontier::new(vec![p(4.0, 1.0, 0), p(1.0, 3.0, 1), p(5.0, 3.5, 2)]);
        let b = Frontier::new(vec![p(2.0, 1.0, 0), p(1.0, 2.0, 1)]);
        let s = a.sum(&b, |x, y| (*x, *y));
        // Brute force over every pair, dominated ones included, for every limit.
        let all_a = [p(4.0, 1.0, 0), p(1.0, 3.0, 1), p(5.0, 3.5, 2)];
        for limit in [2.0, 3.0, 4.0, 5.0, 6.0] {
            let mut best = f64::INFINITY;
            for x in &all_a {
                for y in b.points() {
                    if x.memory + y.memory <= limit {
                        best = best.min(x.time + y.time);
                    }
                }
            }
            assert_eq!(fastest(&s, limit), best, "limit {limit}");
        }
    }
}
