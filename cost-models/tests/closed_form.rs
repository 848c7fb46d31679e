//! The closed form (`estimate_quick`) against the simulation: time within the tolerance
//! stated in `docs/cost-model.md`, memory never below the simulation's (the same
//! `memory::rank_memory`), and every schedule kind running a grid of plans without deadlock.

mod common;

use common::{h100, images, plan, rel, simulate, vlm};
use hetpar_cost::{estimate_quick, Options};
use hetpar_ir::{ModelGraph, Plan};
use serde_json::json;

// ---------------------------------------------------------------------------------------------
// The closed form against the simulation.

/// What the closed form may differ from the simulation by in time (`docs/cost-model.md`).
const TIME_TOLERANCE: f64 = 0.22;

#[test]
fn the_closed_form_is_within_the_stated_tolerance_of_the_simulation_and_never_below_its_memory() {
    let c16 = h100(2);
    let small = vlm(32, 2048, images(1, 1024));
    let wide = vlm(16, 2048, images(3, 256));
    let many = vlm(16, 2048, images(2, 512));
    let one = json!({"micro_batch_size": 1});
    let lm = |pp: u32, mbs: u32| json!({"pp": pp, "micro_batch_size": mbs});
    let plans: Vec<(&str, &ModelGraph, Plan)> = vec![
        (
            "colocated sequential pp1",
            &small,
            plan(
                &small,
                &c16,
                "colocated_sequential",
                None,
                json!({}),
                (0, 4),
                one.clone(),
                (0, 4),
            ),
        ),
        (
            "colocated chunked pp2 k2",
            &small,
            plan(
                &small,
                &c16,
                "colocated_chunked",
                Some(2),
                json!({}),
                (0, 4),
                lm(2, 2),
                (0, 4),
            ),
        ),
        (
            "colocated chunked pp2 k1",
            &small,
            plan(
                &small,
                &c16,
                "colocated_chunked",
                Some(1),
                json!({}),
                (0, 4),
                lm(2, 2),
                (0, 4),
            ),
        ),
        (
            "colocated chunked pp4 k2",
            &small,
            plan(
                &small,
                &c16,
                "colocated_chunked",
                Some(2),
                json!({}),
                (0, 4),
                lm(4, 1),
                (0, 4),
            ),
        ),
        (
            "colocated chunked pp4 k1",
            &small,
            plan(
                &small,
                &c16,
                "colocated_chunked",
                Some(1),
                json!({}),
                (0, 4),
                lm(4, 1),
                (0, 4),
            ),
        ),
        (
            "colocated three-phase pp4",
            &small,
            plan(
                &small,
                &c16,
                "colocated_three_phase",
                None,
                json!({}),
                (0, 4),
                lm(4, 1),
                (0, 4),
            ),
        ),
        (
            "colocated three-phase pp2",
            &small,
            plan(
                &small,
                &c16,
                "colocated_three_phase",
                None,
                json!({}),
                (0, 4),
                lm(2, 2),
                (0, 4),
            ),
        ),
        (
            "colocated dp16 beside tp4 dp4 k4",
            &wide,
            plan(
                &wide,
                &c16,
                "colocated_chunked",
                Some(4),
                json!({}),
                (0, 16),
                json!({"tp": 4, "micro_batch_size": 1}),
                (0, 16),
            ),
        ),
        (
            "non-colocated 1f1b k1",
            &many,
            plan(
                &many,
                &c16,
                "pipeline_1f1b",
                None,
                one.clone(),
                (0, 2),
                lm(2, 1),
                (2, 4),
            ),
        ),
        (
            "non-colocated 1f1b k2",
            &many,
            plan(
                &many,
                &c16,
                "pipeline_1f1b",
                Some(2),
                one.clone(),
                (0, 2),
                lm(2, 1),
                (2, 4),
            ),
        ),
        (
            "non-colocated dp5 uneven deal",
            &wide,
            plan(
                &wide,
                &c16,
                "pipeline_1f1b",
                None,
                json!({}),
                (0, 5),
                json!({"tp": 4, "dp": 2, "micro_batch_size": 2}),
                (5, 8),
            ),
        ),
        (
            "non-colocated interleaved k2",
            &many,
            plan(
                &many,
                &c16,
                "pipeline_interleaved",
                Some(2),
                one.clone(),
                (0, 2),
                json!({"pp": 2, "vpp": 2, "micro_batch_size": 1}),
                (2, 4),
            ),
        ),
    ];
    let mut worst: f64 = 0.0;
    for (name, m, p) in &plans {
        let (e, _, _) = simulate(m, &c16, p);
        let q = estimate_quick(m, &c16, p, &Options::default());
        let closed = q.time.as_secs().expect("a finite time");
        let err = (closed - e.iteration_time_s) / e.iteration_time_s;
        println!(
            "{name}: simulated {:.4e} s, closed form {closed:.4e} s ({:+.1}%); memory {:.4} vs {:.4} GiB",
            e.iteration_time_s,
            100.0 * err,
            e.peak_memory_bytes / f64::from(1u32 << 30),
            q.peak_memory_bytes / f64::from(1u32 << 30)
        );
        worst = worst.max(err.abs());
        assert!(
            err.abs() < TIME_TOLERANCE,
            "{name}: {closed} vs {}",
            e.iteration_time_s
        );
        assert!(
            q.peak_memory_bytes >= e.peak_memory_bytes * (1.0 - 1e-12),
            "{name}: closed-form memory {} below the simulation's {}",
            q.peak_memory_bytes,
            e.peak_memory_bytes
        );
    }
    println!("worst time error {:.1}%", 100.0 * worst);
}

#[test]
fn closed_form_and_simulation_count_the_same_memory_where_units_alive_coincide() {
    // Colocated sequential on a pp-1 LLM: one unit of every module alive at once, all at the
    // same moment; the closed form's memory (transient terms, NCCL, margin included) is the
    // simulation's.
    let c = h100(1);
    let m = vlm(32, 2048, images(1, 1024));
    let one = json!({"micro_batch_size": 1});
    let p = plan(
        &m,
        &c,
        "colocated_sequential",
        None,
        json!({}),
        (0, 4),
        one,
        (0, 4),
    );
    let (e, _, _) = simulate(&m, &c, &p);
    let q = estimate_quick(&m, &c, &p, &Options::default());
    let transient = e.per_rank[0].memory.transient().total();
    assert!(transient > 0.0);
    assert!(
        rel(q.peak_memory_bytes, e.peak_memory_bytes) < 1e-12,
        "closed form {} vs simulation {} (transient {transient})",
        q.peak_memory_bytes,
        e.peak_memory_bytes
    );
}

#[test]
fn every_schedule_runs_a_grid_of_plans_without_deadlock_and_the_closed_form_bounds_memory() {
    // 16 samples with 2 images each, or uneven ones; every placement, language-model pipeline
    // depth, encoder replicas and encoder_chunk that fit on 8 GPUs at this size.
    let c = h100(1);
    let fixed = vlm(16, 2048, images(2, 512));
    let uneven = vlm(
        16,
        2048,
        json!({"per_sample": [[512], [], [1024, 512], [256], [], [512, 512, 512], [1024], [],
            [256, 256], [512], [], [], [1024, 1024], [512], [256], [768]]}),
    );
    let mut runs = 0;
    let mut check = |m: &ModelGraph, p: Plan| {
        let (e, _, _) = simulate(m, &c, &p);
        let q = estimate_quick(m, &c, &p, &Options::default());
        assert!(
            q.peak_memory_bytes >= e.peak_memory_bytes * (1.0 - 1e-12),
            "{:?}",
            p.file()
        );
        runs += 1;
    };
    for m in [&fixed, &uneven] {
        // Colocated on 4 GPUs.
        for (pp, mbs) in [(1, 1), (1, 2), (2, 1), (2, 2), (4, 1), (4, 2)] {
            let lm = json!({"pp": pp, "micro_batch_size": mbs});
            let micro_batches = 16 / (4 / pp * mbs);
            for enc_tp in [1, 2, 4] {
                let enc = json!({"tp": enc_tp});
                for k in 1..=micro_batches {
                    let p = plan(
                        m,
                        &c,
                        "colocated_chunked",
                        Some(k),
                        enc.clone(),
                        (0, 4),
                        lm.clone(),
                        (0, 4),
                    );
                    check(m, p);
                }
                let p = plan(
                    m,
                    &c,
                    "colocated_three_phase",
                    None,
                    enc.clone(),
                    (0, 4),
                    lm.clone(),
                    (0, 4),
                );
                check(m, p);
            }
        }
        // Nested: the encoder on the language model's first stage (ranks 0-1 of pp2 dp2).
        for k in [1, 2, 4, 8] {
            let lm = json!({"pp": 2, "micro_batch_size": 1});
            check(
                m,
                plan(
                    m,
                    &c,
                    "colocated_chunked",
                    Some(k),
                    json!({}),
                    (0, 2),
                    lm,
                    (0, 4),
                ),
            );
        }
        // Non-colocated: the encoder on the first e GPUs, the language model after it.
        for e in [1u32, 2, 3] {
            for (kind, lm, n) in [
                ("pipeline_1f1b", json!({"pp": 1, "micro_batch_size": 1}), 2),
                ("pipeline_1f1b", json!({"pp": 2, "micro_batch_size": 1}), 4),
                ("pipeline_1f1b", json!({"pp": 4, "micro_batch_size": 2}), 4),
                (
                    "pipeline_interleaved",
                    json!({"pp": 2, "vpp": 2, "micro_batch_size": 1}),
                    2,
                ),
            ] {
                let layout = &lm;
                let dp = n / layout["pp"].as_u64().unwrap() as u32;
                let micro_batches = 16 / (dp * layout["micro_batch_size"].as_u64().unwrap() as u32);
                for k in 1..=micro_batches {
                    let p = plan(m, &c, kind, Some(k), json!({}), (0, e), lm.clone(), (e, n));
                    check(m, p);
                }
            }
        }
    }
    println!("{runs} plans");
}

/// An encoder on GPUs of its own running the whole step as one pass (k = M) ahead of the
/// language model: nothing of the language model overlaps the encoder's pass, so the step is
/// the encoder's pass plus the language model's whole step. The closed form once counted one
/// language-model micro-batch beside the bottleneck pass, 42% short.
#[test]
fn a_single_bottleneck_pass_brackets_every_micro_batch_of_the_language_model() {
    let model = hetpar_ir::load_model(
        &json!({"kind": "model", "format_version": 1, "name": "split",
        "modules": {
            "vision": {"kind": "vision_encoder",
                "transformer": {"layers": 24, "hidden": 2048, "heads": 16, "ffn_hidden": 8192, "ffn_kind": "gelu_mlp", "norm": "layer_norm", "attention": "bidirectional"},
                "embedding": {"kind": "patch", "patch_size": 14, "channels": 3}, "positions": {"kind": "rope"}},
            "projector": {"kind": "projector", "mlp": {"widths": [2048, 2048, 2048], "activation": "gelu"}},
            "llm": {"kind": "language_model",
                "transformer": {"layers": 10, "hidden": 2048, "heads": 16, "ffn_hidden": 8192, "ffn_kind": "swiglu", "norm": "rms_norm", "attention": "causal"},
                "positions": {"kind": "rope"}, "vocab_size": 32000}},
        "boundaries": [{"from": "vision", "to": "projector", "landing": "rows"}, {"from": "projector", "to": "llm", "landing": "placeholders"}],
        "data": {"global_batch": 30, "sequence_length": 4096, "precision": "bf16", "optimizer": "adam",
                 "encoders": {"vision": {"items_per_sample": 4, "tokens_per_item": 1024}}}})
        .to_string(),
    )
    .expect("model")
    .0;
    let cluster = h100(1);
    for k in [30, 5, 1] {
        let p = hetpar_ir::load_plan(
            &json!({"kind": "plan", "format_version": 1,
                "schedule": {"kind": "pipeline_1f1b", "encoder_chunk": k},
                "modules": {
                    "vision": {"layout": {"dp": 4}, "placement": {"ranks": {"offset": 0, "count": 4}}},
                    "projector": {"layout": {"dp": 4}, "placement": {"ranks": {"offset": 0, "count": 4}}},
                    "llm": {"layout": {"cp": 4}, "placement": {"ranks": {"offset": 4, "count": 4}}}}})
            .to_string(),
            &model,
            &cluster,
        )
        .expect("plan")
        .0;
        let q = estimate_quick(&model, &cluster, &p, &Options::default());
        let (s, _, _) = simulate(&model, &cluster, &p);
        let q = q.time.as_secs().expect("feasible");
        let e = rel(q, s.iteration_time_s);
        assert!(
            e <= 0.06,
            "k {k}: closed form {q:.3} s, simulation {:.3} s",
            s.iteration_time_s
        );
    }
}
