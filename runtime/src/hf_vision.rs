//! Hugging Face names of a LLaVA model's parts other than its language model: the CLIP vision
//! tower (`vision_tower.`, with or without CLIP's own `vision_model.` level) and the projector
//! (`multi_modal_projector.`). Two tensors change shape on the way: the patch convolution's
//! `[D, C, p, p]` is hetpar's linear `[D, C·p·p]` (the same values: a convolution of stride =
//! kernel over one patch flattened as (channel, row, column)), and the class embedding's `[D]`
//! is `[1, D]`.

use crate::reference::params::Config;
use crate::tensor::Tensor;

const TOWER: &str = "vision_tower.";
/// CLIP's own level, present in some checkpoints (`vision_tower.vision_model.…`).
const CLIP: &str = "vision_model.";

/// A tower layer's parts: Hugging Face's suffix after `encoder.layers.{i}.`, hetpar's after
/// `vision.blocks.{i}.`.
const LAYER: [(&str, &str); 8] = [
    ("layer_norm1", "ln1"),
    ("layer_norm2", "ln2"),
    ("self_attn.q_proj", "attn.q"),
    ("self_attn.k_proj", "attn.k"),
    ("self_attn.v_proj", "attn.v"),
    ("self_attn.out_proj", "attn.o"),
    ("mlp.fc1", "mlp.fc1"),
    ("mlp.fc2", "mlp.fc2"),
];

/// Whole-tower tensors, after `vision_tower.`.
const TOP: [(&str, &str); 7] = [
    ("embeddings.patch_embedding.weight", "vision.patch.weight"),
    ("embeddings.class_embedding", "vision.class"),
    ("embeddings.position_embedding.weight", "vision.pos"),
    ("pre_layrnorm.weight", "vision.pre_norm.weight"),
    ("pre_layrnorm.bias", "vision.pre_norm.bias"),
    ("post_layernorm.weight", "vision.ln_f.weight"),
    ("post_layernorm.bias", "vision.ln_f.bias"),
];

const PROJECTOR: [(&str, &str); 2] = [
    ("multi_modal_projector.linear_1", "vision.proj.fc1"),
    ("multi_modal_projector.linear_2", "vision.proj.fc2"),
];

fn tower_rest(name: &str) -> Option<&str> {
    let rest = name.strip_prefix(TOWER)?;
    Some(rest.strip_prefix(CLIP).unwrap_or(rest))
}

/// hetpar's name of a vision tower or projector tensor, if it is one hetpar knows.
pub fn from_hf(name: &str) -> Option<String> {
    if let Some(rest) = tower_rest(name) {
        if let Some((_, ours)) = TOP.iter().find(|(hf, _)| *hf == rest) {
            return Some((*ours).to_string());
        }
        let (i, part) = rest.strip_prefix("encoder.layers.")?.split_once('.')?;
        let i: usize = i.parse().ok()?;
        let (stem, leaf) = part.rsplit_once('.')?;
        let (_, ours) = LAYER.iter().find(|(hf, _)| *hf == stem)?;
        return Some(format!("vision.blocks.{i}.{ours}.{leaf}"));
    }
    let (stem, leaf) = name.rsplit_once('.')?;
    let (_, ours) = PROJECTOR.iter().find(|(hf, _)| *hf == stem)?;
    Some(format!("{ours}.{leaf}"))
}

/// The Hugging Face name of a vision encoder or projector tensor of hetpar's.
pub fn to_hf(name: &str) -> Option<String> {
    if let Some((hf, _)) = TOP.iter().find(|(_, ours)| *ours == name) {
        return Some(format!("{TOWER}{hf}"));
    }
    let (stem, leaf) = name.rsplit_once('.')?;
    if let Some((hf, _)) = PROJECTOR.iter().find(|(_, ours)| *ours == stem) {
        return Some(format!("{hf}.{leaf}"));
    }
    let (i, part) = stem.strip_prefix("vision.blocks.")?.split_once('.')?;
    let i: usize = i.parse().ok()?;
    let (hf, _) = LAYER.iter().find(|(_, ours)| *ours == part)?;
    Some(format!("{TOWER}encoder.layers.{i}.{hf}.{leaf}"))
}

/// Whether `name` is a tower tensor the model never reads: a layer after the one LLaVA
/// takes its features from, or the final norm it does not apply.
pub fn unused(name: &str, cfg: &Config) -> bool {
    let Some(e) = cfg.vision else {
        return false;
    };
    let Some(rest) = tower_rest(name) else {
        return false;
    };
    if rest.starts_with("post_layernorm.") {
        return !e.final_norm;
    }
    rest.strip_prefix("encoder.layers.")
        .and_then(|r| r.split('.').next())
        .and_then(|i| i.parse::<usize>().ok())
        .is_some_and(|i| i >= e.stack.layers)
}

/// `t` (hetpar's tensor `name`) in the shape Hugging Face gives it.
pub fn hf_shape(name: &str, t: &Tensor, cfg: &Config) -> Tensor {
    let e = cfg.vision;
    let shape = match (name, e.and_then(|e| e.image_patch)) {
        ("vision.patch.weight", Some((c, p))) => vec![t.rows(), c, p, p],
        ("vision.class", _) => vec![t.numel()],
        _ => return t.clone(),
    };
    t.reshaped(&shape).unwrap_or_else(|_| t.clone())
}

/// Whether a Hugging Face tensor of shape `got` holds the values of hetpar's `name` of shape
/// `want` (the two tensors whose shapes differ).
pub fn same_values(name: &str, got: &[usize], want: &[usize]) -> bool {
    match (name, got, want) {
        ("vision.patch.weight", [d, rest @ ..], [dw, len]) => {
            rest.len() == 3 && d == dw && rest.iter().product::<usize>() == *len
        }
        ("vision.class", [d], [1, dw]) => d == dw,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tower_and_projector_names_map_both_ways() {
        for (hf, ours) in [
            (
                "vision_tower.embeddings.patch_embedding.weight",
                "vision.patch.weight",
            ),
            ("vision_tower.embeddings.class_embedding", "vision.class"),
            ("vision_tower.pre_layrnorm.bias", "vision.pre_norm.bias"),
            (
                "vision_tower.encoder.layers.3.self_attn.out_proj.weight",
                "vision.blocks.3.attn.o.weight",
            ),
            (
                "vision_tower.encoder.layers.0.layer_norm2.bias",
                "vision.blocks.0.ln2.bias",
            ),
            (
                "multi_modal_projector.linear_2.bias",
                "vision.proj.fc2.bias",
            ),
        ] {
            assert_eq!(from_hf(hf).as_deref(), Some(ours), "{hf}");
            assert_eq!(to_hf(ours).as_deref(), Some(hf), "{ours}");
        }
        // CLIP's own level is read too.
        assert_eq!(
            from_hf("vision_tower.vision_model.encoder.layers.1.mlp.fc1.weight").as_deref(),
            Some("vision.blocks.1.mlp.fc1.weight")
        );
        assert_eq!(
            from_hf("vision_tower.encoder.layers.1.mlp.fc3.weight"),
            None
        );
        assert_eq!(from_hf("multi_modal_projector.linear_3.weight"), None);
    }

    #[test]
    fn only_the_two_reshaped_tensors_match_other_shapes() {
        assert!(same_values(
            "vision.patch.weight",
            &[32, 3, 8, 8],
            &[32, 192]
        ));
        assert!(!same_values(
            "vision.patch.weight",
            &[32, 3, 8, 4],
            &[32, 192]
        ));
        assert!(!same_values(
            "vision.patch.weight",
            &[16, 3, 8, 16],
            &[32, 192]
        ));
        assert!(same_values("vision.class", &[32], &[1, 32]));
        assert!(!same_values("vision.class", &[16], &[1, 32]));
        assert!(!same_values("vision.pos", &[17, 32], &[1, 544]));
    }
}
