//! The reference model's configuration, its parameter tensors by their documented names, and
//! their deterministic initialisation from a seed.

use std::collections::BTreeMap;

use super::arch::{Act, BlockArch, Ffn, Norm, Stack};
use super::rng::SplitMix64;
use crate::error::RuntimeError;
use crate::tensor::Tensor;

/// A model the runtime computes: an optional vision encoder, an optional audio encoder (each
/// with its projector) and a language model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Config {
    /// The vision encoder (prefix `vision.`) and its projector.
    pub vision: Option<EncoderConfig>,
    /// The audio encoder (prefix `audio.`) and its projector.
    pub audio: Option<EncoderConfig>,
    pub llm: LlmConfig,
}

/// The language model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LlmConfig {
    pub stack: Stack,
    pub vocab: usize,
    /// The sequence length (a learned position table's length).
    pub seq_len: usize,
    /// A learned position table (`llm.pos`); rotary positions are the stack's.
    pub learned_positions: bool,
    /// The head reuses the embedding (`llm.embed.weight`; no `llm.head.weight`).
    pub tied_embeddings: bool,
}

/// One encoder and its projector `hidden -> projector_hidden -> H`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EncoderConfig {
    pub stack: Stack,
    /// The length of one input row (a flattened patch or frame window).
    pub patch_len: usize,
    /// The position table's length: the most rows one item may have.
    pub max_rows: usize,
    pub projector_hidden: usize,
    pub projector_act: Act,
    /// A bias on the patch embedding.
    pub embed_bias: bool,
    /// A learned class row (`{prefix}.class`, `[1, hidden]`) leads every item at position 0
    /// and leaves no output row (CLIP's).
    pub class_token: bool,
    /// A norm of the embedded rows before the first block (`{prefix}.pre_norm`; CLIP's
    /// `pre_layrnorm`).
    pub pre_norm: bool,
    /// A norm after the last block (`{prefix}.ln_f`).
    pub final_norm: bool,
    /// For images: (channels, patch side), by which pixel arrays are cut into patch rows.
    pub image_patch: Option<(usize, usize)>,
    /// The token id marking its rows in a Hugging Face batch's token ids.
    pub token_id: Option<i64>,
}

impl EncoderConfig {
    /// The reference model's encoder: a biased linear embedding, no class row, no pre-norm,
    /// a final norm.
    pub fn reference(
        stack: Stack,
        patch_len: usize,
        max_rows: usize,
        projector_hidden: usize,
    ) -> Self {
        EncoderConfig {
            stack,
            patch_len,
            max_rows,
            projector_hidden,
            projector_act: Act::GeluTanh,
            embed_bias: true,
            class_token: false,
            pre_norm: false,
            final_norm: true,
            image_patch: None,
            token_id: None,
        }
    }

    /// Rows leading every item that leave no output row (the class row).
    pub fn lead(&self) -> usize {
        usize::from(self.class_token)
    }
}

/// Which encoder: the tensor-name prefix and the batch inputs it reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    Vision,
    Audio,
}

impl Source {
    pub fn prefix(self) -> &'static str {
        match self {
            Source::Vision => "vision",
            Source::Audio => "audio",
        }
    }
}

fn zero(name: &str) -> RuntimeError {
    RuntimeError::InvalidConfig(format!("{name} is 0"))
}

fn check_stack(who: &str, s: &Stack) -> Result<(), RuntimeError> {
    for (name, v) in [
        ("layers", s.layers),
        ("hidden", s.hidden),
        ("heads", s.heads),
        ("kv_heads", s.kv_heads),
        ("head_dim", s.head_dim),
        ("ffn", s.ffn),
    ] {
        if v == 0 {
            return Err(zero(&format!("{who} {name}")));
        }
    }
    if !s.heads.is_multiple_of(s.kv_heads) {
        return Err(RuntimeError::InvalidConfig(format!(
            "{who}: {} heads are not a multiple of {} key/value heads",
            s.heads, s.kv_heads
        )));
    }
    if let Some(m) = s.moe {
        if m.experts == 0 || m.expert_ffn == 0 || m.layer_frequency == 0 {
            return Err(zero(&format!(
                "{who} experts, expert FFN or layer frequency"
            )));
        }
        if m.top_k == 0 || m.top_k > m.experts {
            return Err(RuntimeError::InvalidConfig(format!(
                "{who}: top {} of {} experts",
                m.top_k, m.experts
            )));
        }
    }
    if s.block.rope.is_some() && !s.head_dim.is_multiple_of(2) {
        return Err(RuntimeError::InvalidConfig(format!(
            "{who}: rotary positions need an even head size, not {}",
            s.head_dim
        )));
    }
    Ok(())
}

impl Config {
    /// Every encoder with its sizes: vision, then audio, those present.
    pub fn encoders(&self) -> Vec<(Source, EncoderConfig)> {
        self.vision
            .map(|v| (Source::Vision, v))
            .into_iter()
            .chain(self.audio.map(|a| (Source::Audio, a)))
            .collect()
    }

    /// The sizes of encoder `s`, if the model has it.
    pub fn encoder(&self, s: Source) -> Option<EncoderConfig> {
        match s {
            Source::Audio => self.audio,
            Source::Vision => self.vision,
        }
    }

    /// Whether every stack is the reference model's (`docs/reference-model.md`), which the
    /// single-device reference in this module computes.
    pub fn is_reference(&self) -> bool {
        let l = &self.llm;
        self.vision.is_some()
            && l.learned_positions
            && !l.tied_embeddings
            && std::iter::once(&l.stack)
                .chain(self.encoders().iter().map(|(_, e)| &e.stack))
                .all(|s| {
                    s.block == BlockArch::REFERENCE && s.kv_heads == s.heads && s.moe.is_none()
                })
            && self.encoders().iter().all(|(_, e)| {
                e.projector_act == Act::GeluTanh
                    && e.embed_bias
                    && !e.class_token
                    && !e.pre_norm
                    && e.final_norm
            })
    }

    /// Every size is positive and each stack's heads fit its key/value heads.
    pub fn validate(&self) -> Result<(), RuntimeError> {
        for (src, e) in self.encoders() {
            check_stack(src.prefix(), &e.stack)?;
            for (name, v) in [
                ("patch_len", e.patch_len),
                ("max_rows", e.max_rows),
                ("projector_hidden", e.projector_hidden),
            ] {
                if v == 0 {
                    return Err(zero(&format!("{} {name}", src.prefix())));
                }
            }
        }
        check_stack("llm", &self.llm.stack)?;
        if self.llm.vocab == 0 {
            return Err(zero("llm vocab"));
        }
        if self.llm.seq_len == 0 {
            return Err(zero("llm seq_len"));
        }
        Ok(())
    }
}

/// How a parameter tensor starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    /// Drawn from the seed's stream with [`SplitMix64::symmetric`] (weights, embeddings,
    /// position tables).
    Random,
    /// All ones (LayerNorm weights).
    Ones,
    /// All zeros (biases).
    Zeros,
}

/// One parameter tensor of the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

fn spec(out: &mut Vec<ParamSpec>, name: String, shape: &[usize], init: Init) {
    out.push(ParamSpec {
        name,
        shape: shape.to_vec(),
        init,
    });
}

fn linear_specs(out: &mut Vec<ParamSpec>, name: &str, fan_out: usize, fan_in: usize, bias: bool) {
    spec(
        out,
        format!("{name}.weight"),
        &[fan_out, fan_in],
        Init::Random,
    );
    if bias {
        spec(out, format!("{name}.bias"), &[fan_out], Init::Zeros);
    }
}

fn norm_specs(out: &mut Vec<ParamSpec>, name: &str, width: usize, norm: Norm) {
    spec(out, format!("{name}.weight"), &[width], Init::Ones);
    if let Norm::Layer { .. } = norm {
        spec(out, format!("{name}.bias"), &[width], Init::Zeros);
    }
}

/// Block `i`'s tensors under `prefix` (`{stack}.blocks.{i}`).
fn block_specs(out: &mut Vec<ParamSpec>, prefix: &str, i: usize, s: &Stack) {
    let (a, h) = (&s.block, s.hidden);
    norm_specs(out, &format!("{prefix}.ln1"), h, a.norm);
    let attn = format!("{prefix}.attn");
    linear_specs(out, &format!("{attn}.q"), s.q_width(), h, a.qkv_bias);
    linear_specs(out, &format!("{attn}.k"), s.kv_width(), h, a.qkv_bias);
    linear_specs(out, &format!("{attn}.v"), s.kv_width(), h, a.qkv_bias);
    linear_specs(out, &format!("{attn}.o"), h, s.q_width(), a.linear_bias);
    norm_specs(out, &format!("{prefix}.ln2"), h, a.norm);
    if let Some(m) = s.moe_at(i) {
        // The router, then every expert's gated FFN (`exec/moe.rs`); no biases.
        let moe = format!("{prefix}.moe");
        linear_specs(out, &format!("{moe}.router"), m.experts, h, false);
        for e in 0..m.experts {
            let x = format!("{moe}.experts.{e}");
            linear_specs(out, &format!("{x}.gate"), m.expert_ffn, h, false);
            linear_specs(out, &format!("{x}.up"), m.expert_ffn, h, false);
            linear_specs(out, &format!("{x}.down"), h, m.expert_ffn, false);
        }
        return;
    }
    match a.ffn {
        Ffn::Mlp(_) => {
            linear_specs(out, &format!("{prefix}.mlp.fc1"), s.ffn, h, a.linear_bias);
            linear_specs(out, &format!("{prefix}.mlp.fc2"), h, s.ffn, a.linear_bias);
        }
        Ffn::Gated(_) => {
            linear_specs(out, &format!("{prefix}.mlp.gate"), s.ffn, h, a.linear_bias);
            linear_specs(out, &format!("{prefix}.mlp.up"), s.ffn, h, a.linear_bias);
            linear_specs(out, &format!("{prefix}.mlp.down"), h, s.ffn, a.linear_bias);
        }
    }
}

/// Every parameter tensor of the model, in the documented order (the order in which
/// [`Params::init`] draws them).
pub fn param_specs(cfg: &Config) -> Vec<ParamSpec> {
    let mut out = Vec::new();
    let h = cfg.llm.stack.hidden;
    for (source, e) in cfg.encoders() {
        let pre = source.prefix();
        let (s, norm) = (&e.stack, e.stack.block.norm);
        linear_specs(
            &mut out,
            &format!("{pre}.patch"),
            s.hidden,
            e.patch_len,
            e.embed_bias,
        );
        if e.class_token {
            spec(
                &mut out,
                format!("{pre}.class"),
                &[1, s.hidden],
                Init::Random,
            );
        }
        spec(
            &mut out,
            format!("{pre}.pos"),
            &[e.max_rows, s.hidden],
            Init::Random,
        );
        if e.pre_norm {
            norm_specs(&mut out, &format!("{pre}.pre_norm"), s.hidden, norm);
        }
        for i in 0..s.layers {
            block_specs(&mut out, &format!("{pre}.blocks.{i}"), i, s);
        }
        if e.final_norm {
            norm_specs(&mut out, &format!("{pre}.ln_f"), s.hidden, norm);
        }
        linear_specs(
            &mut out,
            &format!("{pre}.proj.fc1"),
            e.projector_hidden,
            s.hidden,
            true,
        );
        linear_specs(
            &mut out,
            &format!("{pre}.proj.fc2"),
            h,
            e.projector_hidden,
            true,
        );
    }
    let l = &cfg.llm;
    spec(
        &mut out,
        "llm.embed.weight".into(),
        &[l.vocab, h],
        Init::Random,
    );
    if l.learned_positions {
        spec(&mut out, "llm.pos".into(), &[l.seq_len, h], Init::Random);
    }
    for i in 0..l.stack.layers {
        block_specs(&mut out, &format!("llm.blocks.{i}"), i, &l.stack);
    }
    norm_specs(&mut out, "llm.ln_f", h, l.stack.block.norm);
    if !l.tied_embeddings {
        spec(
            &mut out,
            "llm.head.weight".into(),
            &[l.vocab, h],
            Init::Random,
        );
    }
    out
}

/// Tensors by name: the model's weights, or their gradients ([`Grads`]), or optimizer state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Params {
    tensors: BTreeMap<String, Tensor>,
}

/// Gradients carry the parameters' names and shapes.
pub type Grads = Params;

/// The standard deviation of randomly initialised tensors in [`Params::init`].
pub const INIT_STD: f64 = 0.02;

impl Params {
    /// The model's parameters from `seed`, random tensors with standard deviation
    /// [`INIT_STD`]; see [`Params::init_with_std`].
    pub fn init(cfg: &Config, seed: u64) -> Result<Params, RuntimeError> {
        Params::init_with_std(cfg, seed, INIT_STD)
    }

    /// The model's parameters: one splitmix64 stream from `seed`; the [`Init::Random`]
    /// tensors, in [`param_specs`] order, each in row-major order, draw
    /// [`SplitMix64::symmetric`]`(std)`; LayerNorm weights are 1, biases 0.
    pub fn init_with_std(cfg: &Config, seed: u64, std: f64) -> Result<Params, RuntimeError> {
        cfg.validate()?;
        let mut rng = SplitMix64::new(seed);
        let mut tensors = BTreeMap::new();
        for s in param_specs(cfg) {
            let t = match s.init {
                Init::Ones => Tensor::full(&s.shape, 1.0),
                Init::Zeros => Tensor::zeros(&s.shape),
                Init::Random => {
                    let mut t = Tensor::zeros(&s.shape);
                    for v in t.data_mut() {
                        *v = rng.symmetric(std);
                    }
                    t
                }
            };
            tensors.insert(s.name, t);
        }
        Ok(Params { tensors })
    }

    /// Zeros with the model's names and shapes (gradients before accumulation).
    pub fn zeros(cfg: &Config) -> Params {
        Params {
            tensors: param_specs(cfg)
                .into_iter()
                .map(|s| (s.name, Tensor::zeros(&s.shape)))
                .collect(),
        }
    }

    /// Zeros with the names and shapes of `self`.
    pub fn zeros_like(&self) -> Params {
        Params {
            tensors: self
                .tensors
                .iter()
                .map(|(n, t)| (n.clone(), Tensor::zeros(t.shape())))
                .collect(),
        }
    }

    /// Every documented tensor is present with its shape, and no other.
    pub fn check(&self, cfg: &Config) -> Result<(), RuntimeError> {
        let specs = param_specs(cfg);
        for s in &specs {
            let t = self
                .tensors
                .get(&s.name)
                .ok_or_else(|| RuntimeError::MissingParam(s.name.clone()))?;
            if t.shape() != s.shape.as_slice() {
                return Err(RuntimeError::ParamShape {
                    name: s.name.clone(),
                    expected: s.shape.clone(),
                    got: t.shape().to_vec(),
                });
            }
        }
        if self.tensors.len() != specs.len() {
            let known: std::collections::BTreeSet<&str> =
                specs.iter().map(|s| s.name.as_str()).collect();
            if let Some(extra) = self.tensors.keys().find(|n| !known.contains(n.as_str())) {
                return Err(RuntimeError::UnexpectedParam(extra.clone()));
            }
        }
        Ok(())
    }

    /// Parameters from named tensors (a loaded safetensors file), checked against `cfg`.
    pub fn from_tensors(
        tensors: BTreeMap<String, Tensor>,
        cfg: &Config,
    ) -> Result<Params, RuntimeError> {
        let p = Params { tensors };
        p.check(cfg)?;
        Ok(p)
    }

    /// Safetensors bytes of every tensor, names prefixed by `prefix` (`""` for weights,
    /// `"grad."` for a gradient dump).
    pub fn to_safetensors(&self, prefix: &str) -> Result<Vec<u8>, RuntimeError> {
        crate::dump::to_bytes(
            self.tensors
                .iter()
                .map(|(n, t)| (format!("{prefix}{n}"), t)),
        )
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut Tensor> {
        self.tensors.get_mut(name)
    }

    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor) -> Option<Tensor> {
        self.tensors.insert(name.into(), tensor)
    }

    /// Tensors in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Tensor)> {
        self.tensors.iter()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&String, &mut Tensor)> {
        self.tensors.iter_mut()
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The tensor `name`, which [`Params::check`] has proven present.
    pub(crate) fn t(&self, name: &str) -> &Tensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("parameter `{name}` missing after Params::check"))
    }

    /// `self[name] += delta`.
    pub(crate) fn accumulate(&mut self, name: &str, delta: &Tensor) {
        self.tensors
            .get_mut(name)
            .unwrap_or_else(|| panic!("gradient `{name}` missing"))
            .add_assign(delta);
    }
}
