//! Where encoder rows land in the language model's sequence.
//!
//! A sample's items from every encoder that feeds the language model are interleaved
//! round-robin over the encoders (in name order: item 0 of the first, item 0 of the second,
//! ..., then item 1 of each), each item's rows contiguous; the text tokens are spread evenly
//! before, between and after the items (n items leave n + 1 gaps, gap i holding
//! `floor((i+1) T / (n+1)) - floor(i T / (n+1))` of the T text tokens).

use super::graph::ModelGraph;
use crate::ids::BoundaryId;

/// One item's rows in a sample's sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// The boundary that carries the item's rows into the language model.
    pub boundary: BoundaryId,
    /// First row of the item among the boundary's rows of this sample.
    pub first_row: u64,
    /// First position in the sequence.
    pub position: u64,
    pub len: u64,
}

/// The item spans of sample `s`, in sequence order.
pub fn placeholder_spans(g: &ModelGraph, s: usize) -> Vec<Span> {
    let lm = g.language_model();
    // Per boundary into the language model: its items' row counts for this sample.
    let mut streams: Vec<(BoundaryId, Vec<u64>)> = g
        .incoming(lm)
        .into_iter()
        .filter_map(|b| {
            let bd = g.boundary(b);
            let items = g.items(bd.origin)?;
            let merge = u64::from(bd.merge.max(1));
            Some((
                b,
                items
                    .items_of(s)
                    .iter()
                    .map(|&t| u64::from(t) / merge)
                    .collect(),
            ))
        })
        .collect();
    streams.sort_by(|a, b| {
        let na = &g.module(g.boundary(a.0).origin).name;
        let nb = &g.module(g.boundary(b.0).origin).name;
        na.cmp(nb)
    });
    let mut order: Vec<(BoundaryId, u64, u64)> = Vec::new();
    let mut next_row = vec![0u64; streams.len()];
    let longest = streams.iter().map(|s| s.1.len()).max().unwrap_or(0);
    for i in 0..longest {
        for (k, (b, items)) in streams.iter().enumerate() {
            if let Some(&len) = items.get(i) {
                order.push((*b, next_row[k], len));
                next_row[k] += len;
            }
        }
    }
    let placed: u64 = order.iter().map(|o| o.2).sum();
    let text = u64::from(g.data().sequence_length).saturating_sub(placed);
    let n = order.len() as u64;
    let gap = |i: u64| (i + 1) * text / (n + 1) - i * text / (n + 1);
    let mut pos = 0u64;
    let mut out = Vec::with_capacity(order.len());
    for (i, (boundary, first_row, len)) in order.into_iter().enumerate() {
        pos += gap(i as u64);
        out.push(Span {
            boundary,
            first_row,
            position: pos,
            len,
        });
        pos += len;
    }
    out
}
