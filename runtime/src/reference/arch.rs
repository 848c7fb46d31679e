//! The variants a transformer stack may take (`docs/runtime.md`, "Architectures"): its norm,
//! FFN and activation, biases, grouped-query attention and rotary positions. The reference
//! model is one point of this space ([`BlockArch::REFERENCE`]); Llama, Qwen2 and CLIP others.

/// A norm over each row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Norm {
    /// `(x - mean) / √(var + eps) · w + b`.
    Layer { eps: f64 },
    /// `x / √(mean(x²) + eps) · w`, no bias.
    Rms { eps: f64 },
}

/// An elementwise activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// `x·Φ(x)`, the exact GELU.
    Gelu,
    /// GELU's tanh approximation (the reference model's).
    GeluTanh,
    /// `x·σ(1.702·x)`.
    QuickGelu,
    /// `x·σ(x)`.
    Silu,
}

/// The feed-forward block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ffn {
    /// `fc2(act(fc1(x)))`.
    Mlp(Act),
    /// `down(act(gate(x)) · up(x))` (SwiGLU with `Silu`).
    Gated(Act),
}

/// Llama 3.1's rescaling of the rotary frequencies.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_positions: f64,
}

/// Rotary positions on queries and keys (the rotate-half form of Llama and Qwen2).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rope {
    pub base: f64,
    pub llama3: Option<Llama3Scaling>,
}

impl Rope {
    /// The `head_dim / 2` inverse frequencies `base^(-2i/d)`, rescaled (Llama 3), in f64
    /// (`transformers` rounds them to f32; the oracle's and this runtime's tables are exact).
    pub fn inv_freq(&self, head_dim: usize) -> Vec<f64> {
        (0..head_dim / 2)
            .map(|i| {
                let exp = (2 * i) as f64 / head_dim as f64;
                let f = 1.0 / self.base.powf(exp);
                match &self.llama3 {
                    Some(s) => llama3(f, s),
                    None => f,
                }
            })
            .collect()
    }
}

/// One frequency under Llama 3's rule: wavelengths shorter than `original / high` are kept,
/// longer than `original / low` divided by `factor`, and those between blended.
fn llama3(f: f64, s: &Llama3Scaling) -> f64 {
    let (factor, low, high, orig) = (
        s.factor,
        s.low_freq_factor,
        s.high_freq_factor,
        s.original_max_positions,
    );
    let wavelen = 2.0 * std::f64::consts::PI / f;
    let (low_wavelen, high_wavelen) = (orig / low, orig / high);
    if wavelen > low_wavelen {
        f / factor
    } else if wavelen < high_wavelen {
        f
    } else {
        let smooth = (orig / wavelen - low) / (high - low);
        (1.0 - smooth) * f / factor + smooth * f
    }
}

/// How every block of a stack computes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockArch {
    pub norm: Norm,
    pub ffn: Ffn,
    /// Biases on q, k and v.
    pub qkv_bias: bool,
    /// Biases on the attention output and the FFN's linears.
    pub linear_bias: bool,
    /// Rotary positions, if the stack uses them.
    pub rope: Option<Rope>,
}

impl BlockArch {
    /// The reference model's blocks (`docs/reference-model.md`).
    pub const REFERENCE: BlockArch = BlockArch {
        norm: Norm::Layer { eps: 1e-5 },
        ffn: Ffn::Mlp(Act::GeluTanh),
        qkv_bias: true,
        linear_bias: true,
        rope: None,
    };
}

/// A sparse mixture of experts in place of the dense FFN (Mixtral's): a softmax router over
/// `experts` (no bias), each row sent to its `top_k` most probable experts, their
/// probabilities renormalised to sum to 1; every expert a gated FFN of width `expert_ffn`
/// with the stack's activation; no token dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Moe {
    pub experts: usize,
    pub top_k: usize,
    pub expert_ffn: usize,
    /// Every `layer_frequency`-th block is a mixture of experts (1: all of them).
    pub layer_frequency: usize,
}

/// One transformer stack: its sizes and its blocks' variant.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stack {
    pub layers: usize,
    pub hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention: each serves `heads / kv_heads` query heads).
    pub kv_heads: usize,
    pub head_dim: usize,
    /// The FFN's hidden size.
    pub ffn: usize,
    pub block: BlockArch,
    /// The mixture of experts of some blocks ([`Stack::is_moe_layer`]).
    pub moe: Option<Moe>,
}

impl Stack {
    /// A reference-model stack: multi-head attention with head size `hidden / heads`.
    pub fn reference(layers: usize, hidden: usize, heads: usize, ffn: usize) -> Stack {
        Stack {
            layers,
            hidden,
            heads,
            kv_heads: heads,
            head_dim: hidden.checked_div(heads).unwrap_or(0),
            ffn,
            block: BlockArch::REFERENCE,
            moe: None,
        }
    }

    /// The mixture of experts of block `i`, if it has one (`TransformerSpec::is_moe_layer`).
    pub fn moe_at(&self, i: usize) -> Option<Moe> {
        self.moe
            .filter(|m| m.layer_frequency > 0 && (i + 1).is_multiple_of(m.layer_frequency))
    }

    /// Width of the queries (`heads · head_dim`).
    pub fn q_width(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Width of the keys and of the values (`kv_heads · head_dim`).
    pub fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}
