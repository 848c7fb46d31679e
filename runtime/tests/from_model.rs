//! The reference configuration of a hetpar model: the tiny example maps field for field, and a
//! model the reference does not compute is refused with every difference named.

use hetpar_ir::load_model;
use hetpar_runtime::reference::{Config, Params};
use hetpar_runtime::RuntimeError;

fn model(file: &str) -> hetpar_ir::ModelGraph {
    let p = format!("{}/../examples/models/{file}", env!("CARGO_MANIFEST_DIR"));
    load_model(&std::fs::read_to_string(&p).unwrap()).unwrap().0
}

#[test]
fn the_tiny_example_maps_to_its_reference_configuration() {
    let cfg =
        Config::from_model(&model("tiny-uneven.json")).expect("tiny-uneven is a reference model");
    assert_eq!(
        (cfg.lv, cfg.hv, cfg.av, cfg.fv, cfg.p, cfg.np, cfg.hp),
        (2, 32, 4, 64, 48, 64, 64),
        "vision and projector sizes from examples/models/tiny-uneven.json"
    );
    assert_eq!(
        (cfg.l, cfg.h, cfg.a, cfg.f, cfg.v, cfg.s),
        (4, 64, 4, 128, 256, 128)
    );
    // The configuration is usable: parameters initialise and pass their own check.
    Params::init(&cfg, 1).expect("parameters for the configuration");
}

#[test]
fn a_model_the_reference_does_not_compute_is_refused_with_every_difference() {
    let e = Config::from_model(&model("llava-1.5-7b.json")).unwrap_err();
    let RuntimeError::Unsupported(msg) = &e else {
        panic!("{e}")
    };
    for want in [
        "llm: the FFN is not a GELU MLP",
        "llm: the norm is not LayerNorm",
        "vision: the patch embedding",
        "vision: the reference has no pre-norm",
    ] {
        assert!(msg.contains(want), "missing {want:?} in: {msg}");
    }
}
