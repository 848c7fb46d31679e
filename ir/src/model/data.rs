//! Training data in built form: per encoder, the token count of every item of every sample.

use super::file::{Optimizer, Precision};

/// Items of one encoder per sample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ItemTokens {
    /// Every sample has `items` items of `tokens` tokens.
    Fixed { items: u32, tokens: u32 },
    /// Sample s has items with token counts `per_sample[s]`.
    PerSample(Vec<Vec<u32>>),
}

impl ItemTokens {
    /// Token counts of the items of sample `s` (samples past the list have none).
    pub fn items_of(&self, s: usize) -> Vec<u32> {
        match self {
            ItemTokens::Fixed { items, tokens } => vec![*tokens; *items as usize],
            ItemTokens::PerSample(v) => v.get(s).cloned().unwrap_or_default(),
        }
    }

    /// Tokens of sample `s`, all items together.
    pub fn tokens_of(&self, s: usize) -> u64 {
        match self {
            ItemTokens::Fixed { items, tokens } => u64::from(*items) * u64::from(*tokens),
            ItemTokens::PerSample(v) => v
                .get(s)
                .map(|items| items.iter().map(|&t| u64::from(t)).sum())
                .unwrap_or(0),
        }
    }

    /// Every item size that occurs, for per-item checks.
    pub fn distinct_item_tokens(&self) -> Vec<u32> {
        let mut all: Vec<u32> = match self {
            ItemTokens::Fixed { items, tokens } if *items > 0 => vec![*tokens],
            ItemTokens::Fixed { .. } => vec![],
            ItemTokens::PerSample(v) => v.iter().flatten().copied().collect(),
        };
        all.sort_unstable();
        all.dedup();
        all
    }

    pub fn is_uneven(&self) -> bool {
        matches!(self, ItemTokens::PerSample(_))
    }
}

/// The training data of one optimizer step.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainingData {
    pub global_batch: u32,
    pub sequence_length: u32,
    pub precision: Precision,
    pub optimizer: Optimizer,
}
