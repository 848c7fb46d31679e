//! A boundary's rows on one rank, by (sample, row): each a row of a tensor the store shares,
//! so storing a module's output or a received message copies nothing, and a transfer or a
//! module's input is assembled from the rows where they are: on the device when the
//! arithmetic is there (a gather per source tensor, one scatter), else on the host.

use std::collections::HashMap;
use std::sync::Arc;

use super::math::Math;
use crate::tensor::Tensor;
use crate::RuntimeError;

/// A row's key: row `row` of sample `sample`'s boundary rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub sample: u32,
    pub row: u64,
}

#[derive(Default)]
pub struct RowStore {
    rows: HashMap<Key, (Arc<Tensor>, usize)>,
}

impl RowStore {
    /// Row `k` of `t` under `keys[k]`, for every `k` (`keys` as long as `t` has rows).
    pub fn insert_rows(&mut self, t: Tensor, keys: impl IntoIterator<Item = Key>) {
        let t = Arc::new(t);
        for (k, key) in keys.into_iter().enumerate() {
            self.rows.insert(key, (t.clone(), k));
        }
    }

    /// Row `i` of `t` under `key`, for every `(key, i)`.
    pub fn insert_picked(&mut self, t: Arc<Tensor>, picks: impl IntoIterator<Item = (Key, usize)>) {
        for (key, i) in picks {
            self.rows.insert(key, (t.clone(), i));
        }
    }

    /// Every key held, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.rows.keys()
    }

    /// Whether `key` is held.
    pub fn contains(&self, key: &Key) -> bool {
        self.rows.contains_key(key)
    }

    /// One row's values on the host.
    pub fn get(&self, key: &Key) -> Option<&[f32]> {
        self.rows.get(key).map(|(t, i)| t.row(*i))
    }

    /// Bytes of the rows held (each counted once per key).
    pub fn bytes(&self) -> usize {
        self.rows.values().map(|(t, _)| t.cols() * 4).sum()
    }

    /// The rows `keys` in order as one `[n, width]` tensor; a missing key is returned.
    pub fn take(&self, mx: &dyn Math, keys: &[Key], width: usize) -> Result<Tensor, Taken> {
        let mut found = Vec::with_capacity(keys.len());
        for key in keys {
            found.push(self.rows.get(key).ok_or(Taken::Missing(*key))?);
        }
        if !mx.on_device() {
            let mut out = Vec::with_capacity(keys.len() * width);
            for (t, i) in &found {
                out.extend_from_slice(t.row(*i));
            }
            return Tensor::from_vec(&[keys.len(), width], out).map_err(Taken::Error);
        }
        // Per source tensor, in order of first use: its rows and where they go.
        let mut sources: Vec<(&Arc<Tensor>, Vec<usize>, Vec<usize>)> = Vec::new();
        for (k, (t, i)) in found.iter().enumerate() {
            match sources.iter_mut().find(|(s, _, _)| Arc::ptr_eq(s, t)) {
                Some((_, from, to)) => {
                    from.push(*i);
                    to.push(k);
                }
                None => sources.push((t, vec![*i], vec![k])),
            }
        }
        let mut parts = Vec::with_capacity(sources.len());
        let mut places = Vec::with_capacity(sources.len());
        for (t, from, to) in sources {
            parts.push(mx.gather_rows(t, &from).map_err(Taken::Error)?);
            places.push(to);
        }
        mx.scatter_rows(&parts, &places, keys.len(), width)
            .map_err(Taken::Error)
    }
}

/// Why [`RowStore::take`] failed.
#[derive(Debug)]
pub enum Taken {
    Missing(Key),
    Error(RuntimeError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::math::CpuMath;

    #[test]
    fn rows_come_back_in_the_order_asked_from_the_tensors_that_hold_them() {
        let mut s = RowStore::default();
        let a = Tensor::from_vec(&[2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let b = Tensor::from_vec(&[1, 2], vec![5.0, 6.0]).unwrap();
        let k = |sample, row| Key { sample, row };
        s.insert_rows(a, [k(0, 0), k(0, 1)]);
        s.insert_rows(b, [k(1, 0)]);
        let t = s.take(&CpuMath, &[k(1, 0), k(0, 1), k(0, 0)], 2).unwrap();
        assert_eq!(t.data(), &[5.0, 6.0, 3.0, 4.0, 1.0, 2.0]);
        assert_eq!(s.get(&k(0, 1)), Some(&[3.0f32, 4.0][..]));
        assert_eq!(s.bytes(), 3 * 2 * 4);
        assert!(matches!(
            s.take(&CpuMath, &[k(2, 0)], 2),
            Err(Taken::Missing(m)) if m == k(2, 0)
        ));
    }
}
