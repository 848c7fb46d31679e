//! What the runtime's tests share.

use hetpar_runtime::reference::{Config, EncoderConfig, LlmConfig, Stack};

/// The tiny reference configuration: Hv 8, Av 2, Fv 16, P 6, Np 8, Lv 1, Hp 12; H 8, A 2, F 16,
/// V 11, S 12, L 2.
pub fn tiny() -> Config {
    Config {
        vision: Some(EncoderConfig::reference(
            Stack::reference(1, 8, 2, 16),
            6,
            8,
            12,
        )),
        audio: None,
        llm: LlmConfig {
            stack: Stack::reference(2, 8, 2, 16),
            vocab: 11,
            seq_len: 12,
            learned_positions: true,
            tied_embeddings: false,
        },
    }
}
