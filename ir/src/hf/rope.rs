//! `rope_scaling` (or, from `transformers` 5, `rope_parameters`): Llama 3.1's frequency
//! rescaling is read; Qwen-VL's multimodal rotary positions rescale nothing and are read as
//! none; any other kind is refused by name, since ignoring it would describe some other model.

use super::fields::Fields;
use crate::model::{Real, RopeScaling, RopeScalingKind};

/// The decoder's `rope_scaling`, `None` when absent, `null` or not a rescaling.
pub(crate) fn scaling(f: &Fields<'_>) -> Option<RopeScaling> {
    let key = ["rope_scaling", "rope_parameters"]
        .into_iter()
        .find(|k| f.get(k).is_some())?;
    let v = f.get(key)?;
    let Some(obj) = v.as_object() else {
        f.error(key, "expected a JSON object or null".into());
        return None;
    };
    let kind = obj
        .get("rope_type")
        .or_else(|| obj.get("type"))
        .and_then(|k| k.as_str());
    match kind {
        Some("llama3") => {}
        Some("default" | "mrope") | None if key == "rope_parameters" => return None,
        Some("default" | "mrope") => return None,
        other => {
            f.error(
                key,
                format!(
                    "rope_type {} is not one hetpar reads (llama3, mrope, default)",
                    other.map_or("(missing)".to_string(), |k| format!("`{k}`"))
                ),
            );
            return None;
        }
    }
    let num = |field: &str| {
        let x = obj
            .get(field)
            .and_then(|x| x.as_f64())
            .filter(|x| x.is_finite() && *x > 0.0);
        if x.is_none() {
            f.error(
                &format!("{key}.{field}"),
                "expected a finite positive number (llama3 scaling needs it)".into(),
            );
        }
        x
    };
    let (factor, low, high, max) = (
        num("factor"),
        num("low_freq_factor"),
        num("high_freq_factor"),
        num("original_max_position_embeddings"),
    );
    let (factor, low, high, max) = (factor?, low?, high?, max?);
    if high <= low {
        f.error(
            &format!("{key}.high_freq_factor"),
            format!("must exceed low_freq_factor ({low})"),
        );
        return None;
    }
    Some(RopeScaling {
        kind: RopeScalingKind::Llama3,
        factor: Real(factor),
        low_freq_factor: Real(low),
        high_freq_factor: Real(high),
        original_max_positions: max.min(f64::from(u32::MAX)) as u32,
    })
}

/// The rotary base: `rope_theta`, at the top or (from `transformers` 5) in `rope_parameters`.
pub(crate) fn theta(f: &Fields<'_>) -> Option<f64> {
    f.get("rope_theta")
        .or_else(|| f.get("rope_parameters")?.get("rope_theta"))
        .and_then(|v| v.as_f64())
}
