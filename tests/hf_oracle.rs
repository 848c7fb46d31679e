//! The runtime against Hugging Face `transformers` (`tests/oracle/hf_models.py`): tiny Llama,
//! Llama 3 (rotary rescaling), tied-embedding Llama, Qwen2 (q/k/v biases) and Mixtral (a
//! sparse mixture of experts, under expert parallelism too) models, their
//! weights loaded by Hugging Face names, run under single-device and parallel plans. The loss
//! matches within 1e-5 relative and every gradient within 1e-4 relative (floored at 1e-4 of
//! the largest), against float64 goldens. Llama 3 runs on the emulated GPU too (the CUDA
//! backend's kernels compiled for the CPU).

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use hetpar::ir::hf::{import, ImportOptions};
use hetpar::ir::model::ModelGraph;
use hetpar::runtime::exec::RunOutput;
use hetpar::runtime::hf_names::{params_from_hf, to_hf_in};
use hetpar::runtime::reference::{Batch, Config, Params};
use hetpar::runtime::tensor::Tensor;
use serde_json::{json, Value};

use common::parity::{at, bits, lower_with, opts, run_grouped};

fn golden(case: &str, file: &str) -> PathBuf {
    common::root().join(format!("tests/oracle/golden/hf/{case}/{file}"))
}

fn tensors(case: &str, file: &str) -> BTreeMap<String, Tensor> {
    let bytes = std::fs::read(golden(case, file)).expect("the golden file exists");
    hetpar::runtime::dump::from_bytes(&bytes).expect("f32 safetensors")
}

/// One case: the imported model, its configuration, its weights and its batch (read as
/// `--batch` reads Hugging Face's `input_ids` and `labels`: the labels shifted by one, as
/// `transformers` shifts them).
struct Case {
    name: &'static str,
    graph: ModelGraph,
    cfg: Config,
    params: Params,
    batch: Batch,
}

fn case(name: &'static str) -> Case {
    let bytes = std::fs::read(golden(name, "batch.safetensors")).unwrap();
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(golden(name, "config.json")).unwrap())
            .unwrap();
    // The batch's shape, from its token ids.
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let ids = st.tensor("input_ids").unwrap();
    let (b, s) = (ids.shape()[0], ids.shape()[1]);
    let opts = ImportOptions {
        name: Some(name.into()),
        global_batch: b as u32,
        sequence_length: s as u32,
        items_per_sample: 0,
        ..Default::default()
    };
    let mut file = import(&config, &opts).unwrap_or_else(|d| panic!("{name} imports: {d:?}"));
    let vlm = file.data.encoders.contains_key("vision");
    if vlm {
        // The images of each sample, as the batch's image tokens place them.
        let per_image = file.modules["vision"].tokens_per_item.unwrap();
        let token = i64::from(file.modules["vision"].token_id.unwrap());
        let tokens: Vec<i64> = ids
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let per_sample = tokens
            .chunks(s)
            .map(|row| {
                let n = row.iter().filter(|&&t| t == token).count() as u32 / per_image;
                vec![per_image; n as usize]
            })
            .collect();
        let d = file.data.encoders.get_mut("vision").unwrap();
        (d.items_per_sample, d.tokens_per_item, d.per_sample) = (None, None, Some(per_sample));
    }
    let (graph, _) = hetpar::ir::model::verify::build(file).expect("the import verifies");
    let cfg = Config::from_model(&graph).unwrap_or_else(|e| panic!("{name}: {e}"));
    let batch =
        hetpar::runtime::dump::batch_from_bytes(&bytes, &cfg).expect("a Hugging Face batch");
    let params = params_from_hf(tensors(name, "model.safetensors"), &cfg, name)
        .unwrap_or_else(|e| panic!("{e}"));
    Case {
        name,
        graph,
        cfg,
        params,
        batch,
    }
}

/// One step of `layout` (the language model's, on `ranks` GPUs) under `schedule`.
fn run(c: &Case, schedule: Value, layout: Value, ranks: u32) -> RunOutput {
    run_modules(c, schedule, json!({ "llm": at(layout, 0, ranks) }))
}

/// One step of the plan of `modules` under `schedule`.
fn run_modules(c: &Case, schedule: Value, modules: Value) -> RunOutput {
    let program = lower_with(&c.graph, schedule, modules);
    let mut o = opts(1);
    o.lr = 0.0;
    let batch = std::slice::from_ref(&c.batch);
    let out = hetpar::runtime::exec::run_with(&program, &c.cfg, &c.params, batch, &o, &|st| {
        st.keep_logits();
        st.interpret()
    })
    .unwrap_or_else(|e| panic!("{}: {e}", c.name));
    assert!(
        out.logits.is_some(),
        "{}: the ranks kept their logits",
        c.name
    );
    out
}

/// The loss within 1e-5 relative and every gradient within 1e-4 relative of the goldens.
fn assert_matches(c: &Case, what: &str, got: &RunOutput) {
    let want = tensors(c.name, "expect.safetensors");
    let loss = f64::from(want["loss"].data()[0]);
    let rel = (f64::from(got.losses[0]) - loss).abs() / loss.abs();
    if std::env::var("PARITY_VERBOSE").is_ok() {
        eprintln!("{} {what}: loss off by {rel:.2e} relative", c.name);
    }
    assert!(
        rel <= 1e-5,
        "{} {what}: loss {} against {loss} ({rel:.2e})",
        c.name,
        got.losses[0]
    );
    // Logits: the largest difference over the largest golden logit.
    if let Some(logits) = &got.logits {
        let w = &want["logits"];
        assert_eq!(
            logits.shape(),
            w.shape(),
            "{} {what}: logits' shape",
            c.name
        );
        let scale = w.data().iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let diff = logits
            .data()
            .iter()
            .zip(w.data())
            .fold(0.0f32, |a, (x, y)| a.max((x - y).abs()));
        let rel = f64::from(diff / scale);
        assert!(rel <= 1e-5, "{} {what}: logits off by {rel:.2e}", c.name);
    }
    let mut grads = Params::default();
    let mut compared = std::collections::BTreeSet::new();
    for (n, ours) in got.grads.iter() {
        let hf = format!("grad.{}", to_hf_in(n, &c.cfg).unwrap_or_else(|| n.clone()));
        let g = want
            .get(&hf)
            .unwrap_or_else(|| panic!("{}: no golden gradient of {hf}", c.name));
        // A patch convolution's and a class embedding's values under hetpar's shape.
        let g = g.reshaped(ours.shape()).unwrap_or_else(|_| g.clone());
        grads.insert(n.clone(), g);
        compared.insert(hf);
    }
    assert_eq!(grads.len(), got.grads.len());
    // What hetpar does not compute (LLaVA's tower past its feature layer) feeds nothing.
    for (n, g) in want.iter().filter(|(n, _)| n.starts_with("grad.")) {
        if !compared.contains(n) {
            let big = g.data().iter().fold(0.0f32, |a, v| a.max(v.abs()));
            assert!(
                big == 0.0,
                "{}: {n} is not computed, but its gradient is {big}",
                c.name
            );
        }
    }
    let (worst, at) = common::worst_gradient(&format!("{} {what}", c.name), &got.grads, &grads);
    assert!(
        worst <= 1e-4,
        "{} {what}: gradient {at} off by {worst:.2e} relative",
        c.name
    );
}

const CASES: [&str; 4] = ["llama", "llama3", "llama_tied", "qwen2"];

#[test]
fn one_device_matches_transformers_on_every_language_model() {
    for name in CASES {
        let c = case(name);
        let b = c.batch.batch_size;
        let got = run(
            &c,
            json!({"kind": "pipeline_1f1b"}),
            json!({"tp": 1, "micro_batch_size": b}),
            1,
        );
        assert_matches(&c, "one device", &got);
    }
}

#[test]
fn parallel_plans_match_transformers() {
    let one_f_one_b = json!({"kind": "pipeline_1f1b"});
    let interleaved = json!({"kind": "pipeline_interleaved"});
    for name in CASES {
        let c = case(name);
        let b = c.batch.batch_size;
        let mut plans = vec![
            (
                "tp 2, sp",
                json!({"tp": 2, "sequence_parallel": true, "micro_batch_size": b}),
                2,
            ),
            ("tp 2, no sp", json!({"tp": 2, "micro_batch_size": b}), 2),
            ("cp 2", json!({"cp": 2, "micro_batch_size": b}), 2),
            (
                "dp 2, micro-batches of 1",
                json!({"dp": 2, "micro_batch_size": 1}),
                2,
            ),
            (
                "tp 2, cp 2, dp 2, sp, full recompute",
                json!({"tp": 2, "cp": 2, "dp": 2, "sequence_parallel": true, "micro_batch_size": 1,
                       "recompute": {"policy": "full"}}),
                8,
            ),
            (
                "tp 2, cp 2, dp 2, sp, distributed optimizer",
                json!({"tp": 2, "cp": 2, "dp": 2, "sequence_parallel": true, "micro_batch_size": 1,
                       "distributed_optimizer": true}),
                8,
            ),
        ];
        plans.push(("pp 2", json!({"pp": 2, "micro_batch_size": 1}), 2));
        for (what, layout, ranks) in plans {
            let got = run(&c, one_f_one_b.clone(), layout, ranks);
            assert_matches(&c, what, &got);
        }
        if c.cfg.llm.stack.layers >= 4 {
            let layout = json!({"pp": 2, "vpp": 2, "tp": 2, "sequence_parallel": true,
                                "micro_batch_size": 1});
            let got = run(&c, interleaved.clone(), layout, 4);
            assert_matches(&c, "pp 2, vpp 2, tp 2", &got);
        }
    }
}

/// The CUDA backend's kernels for these architectures (RMSNorm, SiLU and the gated product,
/// rotary positions with Llama 3's rescaling, the key/value head repetition and its sum) on
/// the emulated GPU (`kernels.cu` compiled for the CPU; skipped without a C++ compiler):
/// Llama 3 under tp 2 with sequence parallelism, every rank's arithmetic `GpuMath`, against
/// `transformers` as the CPU backend is.
#[test]
fn emulated_gpu_matches_transformers_on_llama3() {
    let Some(dev) = common::emulated_gpu() else {
        return;
    };
    let c = case("llama3");
    let b = c.batch.batch_size;
    let layout = json!({"tp": 2, "sequence_parallel": true, "micro_batch_size": b});
    let program = lower_with(
        &c.graph,
        json!({"kind": "pipeline_1f1b"}),
        json!({ "llm": at(layout, 0, 2) }),
    );
    let got = one_step_emulated(&dev, &c, &program);
    assert_matches(&c, "tp 2, sp, emulated GPU", &got);
}

/// One step of `program` at learning rate 0 on the emulated GPU, f32 products.
fn one_step_emulated(
    dev: &std::sync::Arc<hetpar::runtime::cuda::emulated::EmuDevice>,
    c: &Case,
    program: &hetpar::ir::program::Program,
) -> RunOutput {
    let mut o = opts(1);
    o.lr = 0.0;
    let batch = std::slice::from_ref(&c.batch);
    let precision = hetpar::runtime::cuda::Precision::F32;
    common::run_emulated(dev, precision, program, &c.cfg, &c.params, batch, &o)
        .unwrap_or_else(|e| panic!("{} on the emulated GPU: {e}", c.name))
}

/// Mixtral (4 experts, top 2, every layer a mixture of experts) on one device and with its
/// experts split over ep ranks, alone and with tp, sp, cp and pp.
#[test]
fn mixtral_matches_transformers_with_expert_parallelism() {
    let c = case("mixtral");
    let b = c.batch.batch_size;
    let plans = [
        ("one device", json!({"micro_batch_size": b}), 1),
        (
            "tp 2, sp",
            json!({"tp": 2, "sequence_parallel": true, "micro_batch_size": b}),
            2,
        ),
        ("dp 2", json!({"dp": 2, "micro_batch_size": 1}), 2),
        (
            "dp 2, ep 2",
            json!({"dp": 2, "ep": 2, "micro_batch_size": 1}),
            2,
        ),
        (
            "dp 2, ep 2, tp 2",
            json!({"dp": 2, "ep": 2, "tp": 2, "micro_batch_size": 2}),
            4,
        ),
        (
            "cp 2, ep 2, tp 2, sp",
            json!({"cp": 2, "ep": 2, "tp": 2, "sequence_parallel": true, "micro_batch_size": b}),
            4,
        ),
        (
            "dp 4, ep 4",
            json!({"dp": 4, "ep": 4, "micro_batch_size": 1}),
            4,
        ),
        (
            "dp 4, ep 2, distributed optimizer",
            json!({"dp": 4, "ep": 2, "micro_batch_size": 1, "distributed_optimizer": true}),
            4,
        ),
        (
            "dp 2, cp 2, ep 2, full recompute",
            json!({"dp": 2, "cp": 2, "ep": 2, "micro_batch_size": 1,
                   "recompute": {"policy": "full"}}),
            4,
        ),
        (
            "pp 2, dp 2, ep 2",
            json!({"pp": 2, "dp": 2, "ep": 2, "micro_batch_size": 1}),
            4,
        ),
    ];
    for (what, layout, ranks) in plans {
        let got = run(&c, json!({"kind": "pipeline_1f1b"}), layout, ranks);
        assert_matches(&c, what, &got);
    }
}

/// Mixtral under dp 2, ep 2, tp 2 with sequence parallelism, trained two steps: the same bits
/// run to run, through group collectives with NCCL's contract, and (loss and gradients
/// against `transformers`) on the emulated GPU.
#[test]
fn mixtral_expert_parallelism_is_reproducible_grouped_and_on_the_emulated_gpu() {
    let c = case("mixtral");
    let layout = json!({"dp": 2, "ep": 2, "tp": 2, "sequence_parallel": true,
                        "micro_batch_size": 2});
    let program = lower_with(
        &c.graph,
        json!({"kind": "pipeline_1f1b"}),
        json!({ "llm": at(layout, 0, 4) }),
    );
    let batches = std::slice::from_ref(&c.batch);
    let once = || hetpar::runtime::exec::run(&program, &c.cfg, &c.params, batches, &opts(2));
    let first = once().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bits(&first), bits(&once().unwrap()), "run to run");
    let grouped = run_grouped(&program, &c.cfg, &c.params, batches, 2).unwrap();
    assert_eq!(bits(&first), bits(&grouped), "group collectives");
    let Some(dev) = common::emulated_gpu() else {
        return;
    };
    let mut o = opts(1);
    o.lr = 0.0;
    let precision = hetpar::runtime::cuda::Precision::F32;
    let got = common::run_emulated(&dev, precision, &program, &c.cfg, &c.params, batches, &o)
        .unwrap_or_else(|e| panic!("mixtral on the emulated GPU: {e}"));
    assert_matches(&c, "dp 2, ep 2, tp 2, sp, emulated GPU", &got);
}

/// Expert parallelism that does not split the experts or the dp x cp group is refused
/// before the run, naming the module.
#[test]
fn expert_parallelism_that_does_not_divide_is_refused() {
    let c = case("mixtral");
    let program = lower_with(
        &c.graph,
        json!({"kind": "pipeline_1f1b"}),
        json!({ "llm": at(json!({"dp": 2, "ep": 2, "micro_batch_size": 1}), 0, 2) }),
    );
    for (ep, dp, cp, want) in [
        (3, 3, 1, "ep 3 does not divide its 4 experts"),
        (4, 2, 1, "ep 4 does not divide dp x cp = 2"),
    ] {
        let mut p = program.clone();
        p.modules[0].ep = ep;
        p.modules[0].dp = dp;
        p.modules[0].cp = cp;
        let e = hetpar::runtime::exec::check::check(&p, &c.cfg, c.batch.batch_size).unwrap_err();
        assert!(e.to_string().contains(want), "{e}");
    }
}

/// A tied head across pipeline stages: the first stage holds the embedding, the last its copy
/// for the head, and their gradients are summed between the two, so three steps train as on
/// one stage (the copies would drift apart otherwise).
#[test]
fn a_tied_head_across_pipeline_stages_trains_as_on_one_stage() {
    let c = case("llama_tied");
    let train = |layout: Value, ranks: u32| {
        let program = lower_with(
            &c.graph,
            json!({"kind": "pipeline_1f1b"}),
            json!({ "llm": at(layout, 0, ranks) }),
        );
        let batch = std::slice::from_ref(&c.batch);
        hetpar::runtime::exec::run(&program, &c.cfg, &c.params, batch, &opts(3))
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let one = train(json!({"micro_batch_size": 1}), 1);
    let staged = train(json!({"pp": 2, "tp": 2, "micro_batch_size": 1}), 4);
    for (a, b) in one.losses.iter().zip(&staged.losses) {
        assert!(
            (a - b).abs() <= 1e-5 * a.abs(),
            "{:?} against {:?}",
            staged.losses,
            one.losses
        );
    }
}

/// Under expert parallelism the distributed optimizer shards a routed expert's Adam state over
/// the ranks holding that expert (dp × cp / ep), the rest over dp × cp: three steps train to
/// the plain optimizer's weights bit for bit.
#[test]
fn mixtral_trains_alike_with_and_without_a_distributed_optimizer() {
    let c = case("mixtral");
    let train = |dist: bool| {
        let layout =
            json!({"dp": 4, "ep": 2, "micro_batch_size": 1, "distributed_optimizer": dist});
        let program = lower_with(
            &c.graph,
            json!({"kind": "pipeline_1f1b"}),
            json!({ "llm": at(layout, 0, 4) }),
        );
        let batch = std::slice::from_ref(&c.batch);
        hetpar::runtime::exec::run(&program, &c.cfg, &c.params, batch, &opts(3))
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let (plain, sharded) = (train(false), train(true));
    assert_eq!(plain.losses, sharded.losses);
    for (name, t) in plain.params.iter() {
        assert_eq!(t.data(), sharded.params.get(name).unwrap().data(), "{name}");
    }
    let bytes = |o: &hetpar::runtime::exec::RunOutput| -> usize {
        o.static_bytes.iter().map(|(_, b)| b.optimizer).sum()
    };
    assert!(bytes(&sharded) < bytes(&plain), "the moments are sharded");
}

/// LLaVA (a CLIP tower of 2 layers read at its first, 16 patches and a class row per image,
/// a GELU projector, a Llama) on samples of 1, 0, 2 and 1 images at varying positions: on
/// one device, and with the tower, projector and language model under their own layouts,
/// colocated or on separate ranks.
#[test]
fn llava_matches_transformers() {
    let c = case("llava");
    let b = c.batch.batch_size;
    let one = json!({"micro_batch_size": b});
    // Encoders and projectors take no micro-batch size.
    let enc = |layout: &Value| {
        let mut l = layout.clone();
        l.as_object_mut().unwrap().remove("micro_batch_size");
        l
    };
    // A projector has no attention to split: its cp ranks are replicas.
    let proj = |layout: &Value| {
        let mut l = enc(layout);
        let o = l.as_object_mut().unwrap();
        let cp = o.remove("cp").and_then(|v| v.as_u64()).unwrap_or(1);
        let dp = o.get("dp").and_then(Value::as_u64).unwrap_or(1);
        o.insert("dp".into(), json!(cp * dp));
        l
    };
    let all = |layout: Value, n: u32| {
        json!({"vision": at(enc(&layout), 0, n), "projector": at(proj(&layout), 0, n),
               "llm": at(layout, 0, n)})
    };
    let sp2 = json!({"tp": 2, "sequence_parallel": true, "micro_batch_size": b});
    let (colocated, separate) = (
        json!({"kind": "colocated_sequential"}),
        json!({"kind": "pipeline_1f1b"}),
    );
    let plans = [
        ("one device", all(one.clone(), 1)),
        ("tp 2, sp everywhere", all(sp2.clone(), 2)),
        (
            "tp 2 without sp everywhere",
            all(json!({"tp": 2, "micro_batch_size": b}), 2),
        ),
        (
            "cp 2 everywhere",
            all(json!({"cp": 2, "micro_batch_size": b}), 2),
        ),
        (
            "tower tp 2 sp, cp 2 language model, dp 2",
            json!({
                "vision": at(json!({"tp": 2, "sequence_parallel": true, "dp": 2}), 0, 4),
                "projector": at(json!({"tp": 2, "dp": 2}), 0, 4),
                "llm": at(json!({"cp": 2, "dp": 2, "micro_batch_size": 1}), 0, 4),
            }),
        ),
        (
            "tower and projector on ranks 0-1 (dp 2), language model tp 2 sp on ranks 2-3",
            json!({
                "vision": at(json!({"dp": 2}), 0, 2),
                "projector": at(json!({"dp": 2}), 0, 2),
                "llm": at(sp2.clone(), 2, 2),
            }),
        ),
        (
            "cp 2, tp 2, sp, full recompute everywhere",
            all(
                json!({"cp": 2, "tp": 2, "sequence_parallel": true,
                       "micro_batch_size": b, "recompute": {"policy": "full"}}),
                4,
            ),
        ),
    ];
    for (what, modules) in plans {
        let separate_ranks = what.contains("separate") || what.contains("ranks 2-3");
        let schedule = if separate_ranks {
            &separate
        } else {
            &colocated
        };
        let got = run_modules(&c, schedule.clone(), modules);
        assert_matches(&c, what, &got);
    }
}

/// LLaVA on the emulated GPU (the CUDA backend's kernels compiled for the CPU): the tower,
/// projector and language model under tp 2 with sequence parallelism, colocated, against
/// `transformers` as the CPU backend is.
#[test]
fn emulated_gpu_matches_transformers_on_llava() {
    let Some(dev) = common::emulated_gpu() else {
        return;
    };
    let c = case("llava");
    let b = c.batch.batch_size;
    let enc = json!({"tp": 2, "sequence_parallel": true});
    let program = lower_with(
        &c.graph,
        json!({"kind": "colocated_sequential"}),
        json!({
            "vision": at(enc.clone(), 0, 2),
            "projector": at(enc, 0, 2),
            "llm": at(json!({"tp": 2, "sequence_parallel": true, "micro_batch_size": b}), 0, 2),
        }),
    );
    let got = one_step_emulated(&dev, &c, &program);
    assert_matches(&c, "tp 2, sp, emulated GPU", &got);
}
