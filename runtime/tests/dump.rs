//! Safetensors dumps: parameters survive a round trip bit for bit under their documented names,
//! gradient dumps carry the `grad.` prefix, and bad bytes are errors, not panics.

use hetpar_runtime::dump::{from_bytes, losses_to_bytes};
use hetpar_runtime::reference::Params;
use hetpar_runtime::RuntimeError;

mod common;
use common::tiny;

#[test]
fn parameters_round_trip_bit_for_bit_with_deterministic_bytes() {
    let cfg = tiny();
    let p = Params::init(&cfg, 7).unwrap();
    let bytes = p.to_safetensors("").unwrap();
    assert_eq!(
        bytes,
        p.to_safetensors("").unwrap(),
        "the same parameters give the same bytes"
    );
    let back = Params::from_tensors(from_bytes(&bytes).unwrap(), &cfg).unwrap();
    for (name, t) in p.iter() {
        let b = back.get(name).unwrap();
        assert_eq!(t.shape(), b.shape(), "{name}");
        assert!(
            t.data()
                .iter()
                .zip(b.data())
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "{name}"
        );
    }
}

#[test]
fn gradient_dumps_prefix_every_name_with_grad() {
    let cfg = tiny();
    let g = Params::zeros(&cfg);
    let names: Vec<String> = from_bytes(&g.to_safetensors("grad.").unwrap())
        .unwrap()
        .into_keys()
        .collect();
    assert!(
        names.contains(&"grad.vision.patch.weight".to_string())
            && names.contains(&"grad.llm.head.weight".to_string())
    );
    assert!(names.iter().all(|n| n.starts_with("grad.")));
    // The loss dump: `loss` f32 [steps].
    let l = from_bytes(&losses_to_bytes(&[2.5, 2.0, 1.5]).unwrap()).unwrap();
    assert_eq!(l["loss"].shape(), &[3]);
    assert_eq!(l["loss"].data(), &[2.5, 2.0, 1.5]);
}

#[test]
fn truncated_bytes_and_missing_parameters_are_clear_errors() {
    let cfg = tiny();
    let bytes = Params::init(&cfg, 1).unwrap().to_safetensors("").unwrap();
    for cut in [0, 7, bytes.len() / 2, bytes.len() - 1] {
        assert!(
            matches!(from_bytes(&bytes[..cut]), Err(RuntimeError::Safetensors(_))),
            "cut at {cut}"
        );
    }
    let mut tensors = from_bytes(&bytes).unwrap();
    tensors.remove("llm.head.weight");
    let e = Params::from_tensors(tensors, &cfg).unwrap_err();
    assert!(e.to_string().contains("llm.head.weight"), "{e}");
}
