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
    let v = cfg.vision.expect("a vision encoder");
    let s = v.stack;
    assert_eq!(
        (
            s.layers,
            s.hidden,
            s.heads,
            s.ffn,
            v.patch_len,
            v.max_rows,
            v.projector_hidden
        ),
        (2, 32, 4, 64, 48, 64, 64),
        "vision and projector sizes from examples/models/tiny-uneven.json"
    );
    let (l, s) = (cfg.llm, cfg.llm.stack);
    assert_eq!(
        (s.layers, s.hidden, s.heads, s.ffn, l.vocab, l.seq_len),
        (4, 64, 4, 128, 256, 128)
    );
    assert!(
        cfg.is_reference(),
        "tiny-uneven computes as the reference model"
    );
    // The configuration is usable: parameters initialise and pass their own check.
    Params::init(&cfg, 1).expect("parameters for the configuration");
}

#[test]
fn a_model_the_runtime_does_not_compute_is_refused_with_every_difference() {
    let e = Config::from_model(&model("vision-audio-7b.json")).unwrap_err();
    let RuntimeError::Unsupported(msg) = &e else {
        panic!("{e}")
    };
    for want in [
        "audio: the runtime has no 1-D convolution stack",
        "vision: the runtime has no temporal patches",
        "vision: positions are not a learned table",
        "vision_merger: the runtime's projector is",
    ] {
        assert!(msg.contains(want), "missing {want:?} in: {msg}");
    }
}

#[test]
fn llava_maps_to_a_clip_tower_read_before_its_last_layer() {
    let cfg = Config::from_model(&model("llava-1.5-7b.json")).expect("LLaVA computes");
    let v = cfg.vision.expect("a vision encoder");
    assert_eq!(
        (v.stack.layers, v.patch_len, v.max_rows, v.image_patch),
        (23, 3 * 14 * 14, 577, Some((3, 14))),
        "CLIP-L/14 at 336 px, features of the penultimate layer"
    );
    assert!(v.class_token && v.pre_norm && !v.final_norm && !v.embed_bias);
    assert_eq!(v.token_id, Some(32000));
    assert!(!cfg.is_reference());
}

#[test]
fn a_second_encoder_is_an_audio_encoder_with_its_own_projector() {
    let cfg = Config::from_model(&model("reference-tiny-two-encoders.json")).unwrap();
    let a = cfg.audio.expect("the audio encoder");
    assert_eq!(
        (
            a.stack.layers,
            a.stack.hidden,
            a.stack.heads,
            a.stack.ffn,
            a.patch_len,
            a.max_rows,
            a.projector_hidden
        ),
        (1, 8, 2, 16, 6, 16, 24),
        "audio and audio_projector sizes from examples/models/reference-tiny-two-encoders.json"
    );
    let p = Params::init(&cfg, 1).unwrap();
    assert_eq!(
        p.get("audio.proj.fc2.weight").unwrap().shape(),
        &[cfg.llm.stack.hidden, 24]
    );
    // A real two-encoder model is refused with each encoder's differences named.
    let e = Config::from_model(&model("vision-audio-7b.json")).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("audio: the runtime has no 1-D convolution stack")
            && msg.contains("vision: the runtime has no temporal patches"),
        "{msg}"
    );
}
