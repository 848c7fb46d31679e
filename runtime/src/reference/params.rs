//! The reference model's configuration, its parameter tensors by their documented names, and
//! their deterministic initialisation from a seed.

use std::collections::BTreeMap;

use super::rng::SplitMix64;
use crate::error::RuntimeError;
use crate::tensor::Tensor;

/// The sizes of the reference model (`docs/reference-model.md`, "Shapes").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Vision encoder blocks (`Lv`).
    pub lv: usize,
    /// Vision hidden size (`Hv`).
    pub hv: usize,
    /// Vision attention heads (`Av`); head size `Hv/Av`.
    pub av: usize,
    /// Vision FFN hidden size (`Fv`).
    pub fv: usize,
    /// Patch vector length (`P`): the flattened pixels of one patch.
    pub p: usize,
    /// Vision position table length (`Np`): the most patches one image may have.
    pub np: usize,
    /// Projector hidden size (`Hp`): `Hv -> Hp -> H`.
    pub hp: usize,
    /// Language model blocks (`L`).
    pub l: usize,
    /// Language model hidden size (`H`).
    pub h: usize,
    /// Language model attention heads (`A`); head size `H/A`.
    pub a: usize,
    /// Language model FFN hidden size (`F`).
    pub f: usize,
    /// Vocabulary size (`V`).
    pub v: usize,
    /// Sequence length (`S`): the length of the language model's position table.
    pub s: usize,
    /// The optional second encoder (prefix `audio.`) and its projector.
    pub audio: Option<EncoderConfig>,
}

/// One encoder's sizes and its projector's hidden size (`Hp`): the vision encoder's are the
/// `Lv Hv Av Fv P Np Hp` of [`Config`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncoderConfig {
    /// Blocks.
    pub l: usize,
    /// Hidden size.
    pub h: usize,
    /// Attention heads.
    pub a: usize,
    /// FFN hidden size.
    pub f: usize,
    /// Patch (frame) vector length.
    pub p: usize,
    /// Position table length: the most rows one item may have.
    pub np: usize,
    /// Projector hidden size.
    pub hp: usize,
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

impl Config {
    /// The vision encoder's sizes.
    pub fn vision(&self) -> EncoderConfig {
        EncoderConfig {
            l: self.lv,
            h: self.hv,
            a: self.av,
            f: self.fv,
            p: self.p,
            np: self.np,
            hp: self.hp,
        }
    }

    /// Every encoder with its sizes: vision, then audio if present.
    pub fn encoders(&self) -> Vec<(Source, EncoderConfig)> {
        std::iter::once((Source::Vision, self.vision()))
            .chain(self.audio.map(|a| (Source::Audio, a)))
            .collect()
    }

    /// The sizes of encoder `s` (the vision encoder's when there is no audio encoder).
    pub fn encoder(&self, s: Source) -> EncoderConfig {
        match s {
            Source::Audio => self.audio.unwrap_or_else(|| self.vision()),
            Source::Vision => self.vision(),
        }
    }

    /// Every size is positive and each hidden size divides into its heads.
    pub fn validate(&self) -> Result<(), RuntimeError> {
        if let Some(a) = self.audio {
            let sizes = [
                ("La", a.l),
                ("Ha", a.h),
                ("Aa", a.a),
                ("Fa", a.f),
                ("Pa", a.p),
                ("Na", a.np),
                ("Hpa", a.hp),
            ];
            if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
                return Err(RuntimeError::InvalidConfig(format!("{name} is 0")));
            }
            if !a.h.is_multiple_of(a.a) {
                return Err(RuntimeError::InvalidConfig(format!(
                    "Ha {} is not a multiple of Aa {}",
                    a.h, a.a
                )));
            }
        }
        let sizes = [
            ("Lv", self.lv),
            ("Hv", self.hv),
            ("Av", self.av),
            ("Fv", self.fv),
            ("P", self.p),
            ("Np", self.np),
            ("Hp", self.hp),
            ("L", self.l),
            ("H", self.h),
            ("A", self.a),
            ("F", self.f),
            ("V", self.v),
            ("S", self.s),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(RuntimeError::InvalidConfig(format!("{name} is 0")));
        }
        if !self.hv.is_multiple_of(self.av) {
            return Err(RuntimeError::InvalidConfig(format!(
                "Hv {} is not a multiple of Av {}",
                self.hv, self.av
            )));
        }
        if !self.h.is_multiple_of(self.a) {
            return Err(RuntimeError::InvalidConfig(format!(
                "H {} is not a multiple of A {}",
                self.h, self.a
            )));
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

fn linear_specs(out: &mut Vec<ParamSpec>, name: &str, fan_out: usize, fan_in: usize) {
    spec(
        out,
        format!("{name}.weight"),
        &[fan_out, fan_in],
        Init::Random,
    );
    spec(out, format!("{name}.bias"), &[fan_out], Init::Zeros);
}

fn norm_specs(out: &mut Vec<ParamSpec>, name: &str, width: usize) {
    spec(out, format!("{name}.weight"), &[width], Init::Ones);
    spec(out, format!("{name}.bias"), &[width], Init::Zeros);
}

fn block_specs(out: &mut Vec<ParamSpec>, prefix: &str, hidden: usize, ffn: usize) {
    norm_specs(out, &format!("{prefix}.ln1"), hidden);
    for proj in ["q", "k", "v", "o"] {
        linear_specs(out, &format!("{prefix}.attn.{proj}"), hidden, hidden);
    }
    norm_specs(out, &format!("{prefix}.ln2"), hidden);
    linear_specs(out, &format!("{prefix}.mlp.fc1"), ffn, hidden);
    linear_specs(out, &format!("{prefix}.mlp.fc2"), hidden, ffn);
}

/// Every parameter tensor of the model, in the documented order (the order in which
/// [`Params::init`] draws them).
pub fn param_specs(cfg: &Config) -> Vec<ParamSpec> {
    let mut out = Vec::new();
    for (source, e) in cfg.encoders() {
        let pre = source.prefix();
        linear_specs(&mut out, &format!("{pre}.patch"), e.h, e.p);
        spec(&mut out, format!("{pre}.pos"), &[e.np, e.h], Init::Random);
        for i in 0..e.l {
            block_specs(&mut out, &format!("{pre}.blocks.{i}"), e.h, e.f);
        }
        norm_specs(&mut out, &format!("{pre}.ln_f"), e.h);
        linear_specs(&mut out, &format!("{pre}.proj.fc1"), e.hp, e.h);
        linear_specs(&mut out, &format!("{pre}.proj.fc2"), cfg.h, e.hp);
    }
    spec(
        &mut out,
        "llm.embed.weight".into(),
        &[cfg.v, cfg.h],
        Init::Random,
    );
    spec(&mut out, "llm.pos".into(), &[cfg.s, cfg.h], Init::Random);
    for i in 0..cfg.l {
        block_specs(&mut out, &format!("llm.blocks.{i}"), cfg.h, cfg.f);
    }
    norm_specs(&mut out, "llm.ln_f", cfg.h);
    spec(
        &mut out,
        "llm.head.weight".into(),
        &[cfg.v, cfg.h],
        Init::Random,
    );
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
