//! A LLaVA checkpoint (`tests/oracle/golden/hf/llava`, as `save_pretrained` wrote it) as a
//! starting point: its tower, projector and language model load by their Hugging Face names
//! and shapes, the first step's loss is `transformers`' own, and a save at learning rate 0
//! gives back every tensor it read, bit for bit, under the same names and shapes; the tower's
//! layers past its feature layer, which feed nothing, are left out.

mod common;

use common::{hetpar, scratch, stderr};

fn read(
    p: &std::path::Path,
) -> std::collections::BTreeMap<String, hetpar::runtime::tensor::Tensor> {
    hetpar::runtime::dump::from_bytes(&std::fs::read(p).unwrap()).unwrap()
}

#[test]
fn a_llava_checkpoint_starts_at_the_transformers_loss_and_saves_back_what_it_read() {
    let dir = scratch("checkpoint-llava");
    let golden = common::root().join("tests/oracle/golden/hf/llava");
    let save = dir.join("save");
    let dump = dir.join("dump");
    let o = hetpar(&[
        "run",
        "examples/plans/llava-tiny-tp2-2.json",
        "--model",
        "examples/models/llava-tiny.json",
        "--cluster",
        "examples/clusters/cpu-2.json",
        "--checkpoint",
        golden.to_str().unwrap(),
        "--batch",
        golden.join("batch.safetensors").to_str().unwrap(),
        "--steps",
        "1",
        "--lr",
        "0",
        "--save",
        save.to_str().unwrap(),
        "--save-every",
        "1",
        "--dump",
        dump.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let want = read(&golden.join("expect.safetensors"))["loss"].data()[0];
    let got = read(&dump.join("losses.safetensors"))["loss"].data()[0];
    assert!((got - want).abs() <= 1e-5 * want, "{got} against {want}");
    let source = read(&golden.join("model.safetensors"));
    let saved = read(&save.join("step-00000001").join("model.safetensors"));
    for (name, t) in &saved {
        let s = source
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not the source's"));
        assert_eq!(t.shape(), s.shape(), "{name}");
        assert!(
            t.data()
                .iter()
                .zip(s.data())
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{name} changed at learning rate 0"
        );
    }
    let left: Vec<&String> = source.keys().filter(|n| !saved.contains_key(*n)).collect();
    assert!(!left.is_empty());
    for n in left {
        assert!(
            n.starts_with("vision_tower.encoder.layers.1.")
                || n.starts_with("vision_tower.post_layernorm."),
            "{n} was read but not saved"
        );
    }
}
