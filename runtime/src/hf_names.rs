//! Hugging Face tensor names and hetpar's (`docs/runtime.md`, "Tensor names"), both ways, for
//! the models the runtime computes (Llama, Mistral, Qwen2, Mixtral, and LLaVA: its language
//! model's names under `language_model.`, its tower's and projector's in `hf_vision`): weights
//! load from a `save_pretrained` directory's safetensors, and gradients dump under the names
//! they came by.

use std::collections::BTreeMap;

use crate::hf_vision;
use crate::reference::params::{param_specs, Config, Params};
use crate::tensor::Tensor;
use crate::RuntimeError;

/// Per-layer parts: Hugging Face's suffix after `model.layers.{i}.`, hetpar's after
/// `llm.blocks.{i}.`.
const LAYER: [(&str, &str); 9] = [
    ("input_layernorm", "ln1"),
    ("post_attention_layernorm", "ln2"),
    ("self_attn.q_proj", "attn.q"),
    ("self_attn.k_proj", "attn.k"),
    ("self_attn.v_proj", "attn.v"),
    ("self_attn.o_proj", "attn.o"),
    ("mlp.gate_proj", "mlp.gate"),
    ("mlp.up_proj", "mlp.up"),
    ("mlp.down_proj", "mlp.down"),
];

/// A mixture of experts' parts (Mixtral's `block_sparse_moe`): Hugging Face's suffix after
/// `experts.{e}.`, hetpar's after `moe.experts.{e}.`.
const EXPERT: [(&str, &str); 3] = [("w1", "gate"), ("w3", "up"), ("w2", "down")];

/// Hugging Face's router, hetpar's.
const ROUTER: (&str, &str) = ("block_sparse_moe.gate", "moe.router");

/// A layer's part under the other naming: `to_ours` from Hugging Face's, else to it.
fn layer_part(part: &str, to_ours: bool) -> Option<String> {
    let pick = |(hf, ours): (&'static str, &'static str)| {
        if to_ours {
            (hf, ours)
        } else {
            (ours, hf)
        }
    };
    if let Some((_, other)) = LAYER.iter().map(|&p| pick(p)).find(|(x, _)| *x == part) {
        return Some(other.to_string());
    }
    let (router_from, router_to) = pick(ROUTER);
    if part == router_from {
        return Some(router_to.to_string());
    }
    let (from, to) = pick(("block_sparse_moe.experts.", "moe.experts."));
    let (e, leaf) = part.strip_prefix(from)?.split_once('.')?;
    let e: usize = e.parse().ok()?;
    let (_, other) = EXPERT.iter().map(|&p| pick(p)).find(|(x, _)| *x == leaf)?;
    Some(format!("{to}{e}.{other}"))
}

/// Whole-model parts.
const TOP: [(&str, &str); 3] = [
    ("model.embed_tokens", "llm.embed"),
    ("model.norm", "llm.ln_f"),
    ("lm_head", "llm.head"),
];

/// Splits `name` into (module, `weight` or `bias`).
fn split_leaf(name: &str) -> Option<(&str, &str)> {
    let (stem, leaf) = name.rsplit_once('.')?;
    matches!(leaf, "weight" | "bias").then_some((stem, leaf))
}

/// A VLM's language model's tensors: its causal LM's names after this.
const LANGUAGE_MODEL: &str = "language_model.";

/// hetpar's name of a Hugging Face tensor, if it is one hetpar knows.
pub fn from_hf(name: &str) -> Option<String> {
    if let Some(rest) = name.strip_prefix(LANGUAGE_MODEL) {
        return from_hf(rest).filter(|n| n.starts_with("llm."));
    }
    if let Some(ours) = hf_vision::from_hf(name) {
        return Some(ours);
    }
    let (stem, leaf) = split_leaf(name)?;
    if let Some((_, ours)) = TOP.iter().find(|(hf, _)| *hf == stem) {
        return Some(format!("{ours}.{leaf}"));
    }
    let rest = stem.strip_prefix("model.layers.")?;
    let (i, part) = rest.split_once('.')?;
    let i: usize = i.parse().ok()?;
    let ours = layer_part(part, true)?;
    Some(format!("llm.blocks.{i}.{ours}.{leaf}"))
}

/// The Hugging Face name of one of hetpar's tensors, if the model has one.
pub fn to_hf(name: &str) -> Option<String> {
    let (stem, leaf) = split_leaf(name)?;
    if let Some((hf, _)) = TOP.iter().find(|(_, ours)| *ours == stem) {
        return Some(format!("{hf}.{leaf}"));
    }
    let rest = stem.strip_prefix("llm.blocks.")?;
    let (i, part) = rest.split_once('.')?;
    let i: usize = i.parse().ok()?;
    let hf = layer_part(part, false)?;
    Some(format!("model.layers.{i}.{hf}.{leaf}"))
}

/// The Hugging Face name of one of hetpar's tensors in model `cfg`: a VLM's language model's
/// under `language_model.`, its encoder's and projector's as LLaVA names them.
pub fn to_hf_in(name: &str, cfg: &Config) -> Option<String> {
    if name.starts_with("vision.") {
        return hf_vision::to_hf(name);
    }
    let hf = to_hf(name)?;
    Some(if cfg.vision.is_some() {
        format!("{LANGUAGE_MODEL}{hf}")
    } else {
        hf
    })
}

/// The model's parameters from tensors under Hugging Face names (`source` names them in
/// errors): every tensor of the configuration is present with its shape, and no other.
/// Every problem is reported at once.
pub fn params_from_hf(
    tensors: BTreeMap<String, Tensor>,
    cfg: &Config,
    source: &str,
) -> Result<Params, RuntimeError> {
    let specs = param_specs(cfg);
    let mut problems = Vec::new();
    let mut ours = BTreeMap::new();
    for (name, t) in tensors {
        // A LLaVA checkpoint's tower layers past the feature layer feed nothing.
        if hf_vision::unused(&name, cfg) {
            continue;
        }
        match from_hf(&name) {
            Some(n) if specs.iter().any(|s| s.name == n) => {
                ours.insert(n, (name, t));
            }
            _ => problems.push(format!("`{name}` is not a tensor of this model")),
        }
    }
    let mut out = Params::default();
    for s in &specs {
        let hf = to_hf_in(&s.name, cfg).unwrap_or_else(|| s.name.clone());
        match ours.remove(&s.name) {
            None => problems.push(format!("`{hf}` is missing")),
            Some((_, t)) if hf_vision::same_values(&s.name, t.shape(), &s.shape) => {
                out.insert(s.name.clone(), t.reshaped(&s.shape)?);
            }
            Some((_, t)) if t.shape() != s.shape.as_slice() => problems.push(format!(
                "`{hf}` has shape {:?}, the model needs {:?}",
                t.shape(),
                s.shape
            )),
            Some((_, t)) => {
                out.insert(s.name.clone(), t);
            }
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(RuntimeError::InvalidConfig(format!(
            "{source}: {}",
            problems.join("; ")
        )))
    }
}

/// Which names a weights file uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Naming {
    /// hetpar's documented names (`llm.blocks.0.attn.q.weight`).
    Hetpar,
    /// Hugging Face's (`model.layers.0.self_attn.q_proj.weight`).
    HuggingFace,
}

/// The model's parameters from a weights file under either naming (Hugging Face's when any
/// tensor has a Hugging Face name hetpar knows and none has hetpar's), and which it was.
pub fn params_from_either(
    tensors: BTreeMap<String, Tensor>,
    cfg: &Config,
    source: &str,
) -> Result<(Params, Naming), RuntimeError> {
    let hf = tensors.keys().any(|n| from_hf(n).is_some())
        && !tensors.keys().any(|n| n.starts_with("llm."));
    if hf {
        return Ok((params_from_hf(tensors, cfg, source)?, Naming::HuggingFace));
    }
    Ok((Params::from_tensors(tensors, cfg)?, Naming::Hetpar))
}

/// Safetensors bytes of `p` (of model `cfg`) under `naming`, names prefixed by `prefix`
/// (`"grad."`).
pub fn to_safetensors_named(
    p: &Params,
    cfg: &Config,
    prefix: &str,
    naming: Naming,
) -> Result<Vec<u8>, RuntimeError> {
    match naming {
        Naming::Hetpar => p.to_safetensors(prefix),
        Naming::HuggingFace => {
            let named = to_hf_names(p, cfg);
            crate::dump::to_bytes(named.iter().map(|(n, t)| (format!("{prefix}{n}"), t)))
        }
    }
}

/// `p`'s tensors under their Hugging Face names and shapes (those without one keep hetpar's).
pub fn to_hf_names(p: &Params, cfg: &Config) -> BTreeMap<String, Tensor> {
    p.iter()
        .map(|(n, t)| {
            let hf = to_hf_in(n, cfg).unwrap_or_else(|| n.clone());
            (hf, hf_vision::hf_shape(n, t, cfg))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        for (hf, ours) in [
            ("model.embed_tokens.weight", "llm.embed.weight"),
            (
                "model.layers.3.self_attn.k_proj.bias",
                "llm.blocks.3.attn.k.bias",
            ),
            (
                "model.layers.0.mlp.down_proj.weight",
                "llm.blocks.0.mlp.down.weight",
            ),
            (
                "model.layers.1.post_attention_layernorm.weight",
                "llm.blocks.1.ln2.weight",
            ),
            ("lm_head.weight", "llm.head.weight"),
            (
                "model.layers.1.block_sparse_moe.gate.weight",
                "llm.blocks.1.moe.router.weight",
            ),
            (
                "model.layers.0.block_sparse_moe.experts.3.w1.weight",
                "llm.blocks.0.moe.experts.3.gate.weight",
            ),
            (
                "model.layers.0.block_sparse_moe.experts.12.w2.weight",
                "llm.blocks.0.moe.experts.12.down.weight",
            ),
            (
                "model.layers.2.block_sparse_moe.experts.0.w3.weight",
                "llm.blocks.2.moe.experts.0.up.weight",
            ),
        ] {
            assert_eq!(from_hf(hf).as_deref(), Some(ours));
            assert_eq!(to_hf(ours).as_deref(), Some(hf));
        }
        assert_eq!(from_hf("model.layers.x.mlp.up_proj.weight"), None);
        assert_eq!(from_hf("model.rotary_emb.inv_freq"), None);
        assert_eq!(
            from_hf("model.layers.0.block_sparse_moe.experts.x.w1.weight"),
            None
        );
        assert_eq!(
            from_hf("model.layers.0.block_sparse_moe.experts.0.w4.weight"),
            None
        );
    }
}
