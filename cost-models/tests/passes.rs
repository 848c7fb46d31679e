//! Encoder passes in the cost model: encoders and projectors price each replica's dealt items
//! of each pass (`ir::shard::pass_deal`), `encoder_chunk` micro-batches per pass, and the
//! language model's first forward of micro-batch j waits for pass floor(j / k).

mod common;

use common::{h100, images, plan, rel, simulate, vlm};
use hetpar_cost::compute::Work;
use hetpar_cost::estimate::Estimate;
use hetpar_cost::memory::chunk_activations;
use hetpar_cost::schedule::units::units;
use hetpar_cost::simulate::Timeline;
use hetpar_cost::tasks::{DepKind, TaskGraph, TaskKind};
use hetpar_cost::{estimate_quick, AttentionKernel, Options};
use hetpar_ir::{ModelGraph, Plan};
use serde_json::json;

// ---------------------------------------------------------------------------------------------
// Helpers.

fn id(m: &ModelGraph, name: &str) -> usize {
    m.module_by_name(name).unwrap().id.index()
}

/// Activation bytes of `items` images of `tokens` at the vision encoder on one rank.
fn image_activations(m: &ModelGraph, p: &Plan, items: u32, tokens: u32) -> f64 {
    let v = m.module_by_name("vision").unwrap();
    let l = &p.module(v.id).layout;
    let n = f64::from(tokens);
    let w = Work {
        rows: f64::from(items) * n,
        pairs: f64::from(items) * n * n,
    };
    chunk_activations(v, l, 0, w, 2.0, AttentionKernel::Flash)
}

/// Per pass, the activation bytes of each vision replica's forward.
fn vision_forwards(m: &ModelGraph, g: &TaskGraph) -> Vec<Vec<f64>> {
    let v = id(m, "vision");
    let mut out: Vec<Vec<f64>> = Vec::new();
    for t in &g.tasks {
        if t.kind == TaskKind::Forward && t.module.map(|x| x.index()) == Some(v) {
            let p = t.micro_batch as usize;
            if out.len() <= p {
                out.resize(p + 1, Vec::new());
            }
            out[p].push(t.activation_bytes);
        }
    }
    out
}

fn peak_activations(e: &Estimate) -> f64 {
    e.per_rank
        .iter()
        .map(|r| r.memory.activations)
        .fold(0.0, f64::max)
}

// ---------------------------------------------------------------------------------------------
// Each replica prices its dealt items.

#[test]
fn an_encoder_with_more_replicas_than_samples_per_micro_batch_does_only_its_dealt_items() {
    // 16 GPUs colocated: vision tp1 dp16 beside the LLM tp4 dp4 mbs1: M = 4 micro-batches of 4
    // samples, 3 images of 256 patches each. encoder_chunk 4: one pass of 48 images, 3 per
    // replica; encoder_chunk 1: four passes of 12 images, 1 each for 12 replicas, 4 idle.
    let c = h100(2);
    let m = vlm(16, 2048, images(3, 256));
    let lm = json!({"tp": 4, "micro_batch_size": 1});
    let one = |p: &Plan| image_activations(&m, p, 1, 256);
    for (k, passes, per_replica) in [
        (4, 1, vec![3; 16]),
        (1, 4, [vec![1; 12], vec![0; 4]].concat()),
    ] {
        let p = plan(
            &m,
            &c,
            "colocated_chunked",
            Some(k),
            json!({}),
            (0, 16),
            lm.clone(),
            (0, 16),
        );
        let (e, g, _) = simulate(&m, &c, &p);
        assert!(e.feasible, "{:?}", e.infeasible_reason);
        let fwd = vision_forwards(&m, &g);
        assert_eq!(fwd.len(), passes, "k = {k}");
        for (pass, acts) in fwd.iter().enumerate() {
            let mut images: Vec<u32> = acts.iter().map(|a| (a / one(&p)).round() as u32).collect();
            images.sort_unstable_by(|a, b| b.cmp(a));
            assert_eq!(images, per_replica, "k = {k}, pass {pass}");
        }
    }
}

/// The busiest vision replica's forward + backward seconds in pass 0, from the task graph.
fn busiest_pass_time(m: &ModelGraph, g: &TaskGraph) -> f64 {
    let v = id(m, "vision");
    let mut per_replica = std::collections::BTreeMap::<u32, f64>::new();
    for t in &g.tasks {
        let is_vision = t.module.map(|x| x.index()) == Some(v);
        if is_vision
            && t.micro_batch == 0
            && matches!(t.kind, TaskKind::Forward | TaskKind::Backward)
        {
            *per_replica.entry(t.replica).or_default() += t.duration;
        }
    }
    per_replica.values().copied().fold(0.0, f64::max)
}

#[test]
fn the_encoders_pass_time_shrinks_as_its_replicas_grow_and_the_busiest_replica_decides() {
    // Non-colocated on 32 GPUs: vision + projector tp1 on dp of ranks 0.., the LLM tp4 dp4 on
    // ranks 16..32, M = 4 micro-batches of 4 samples x 3 images of 1024 patches,
    // encoder_chunk 1: 12 images per pass. dp4: 3 each; dp5: 2 or 3; dp6: 2; dp12: 1. Were
    // every replica to take whole samples, a replica would hold 3 images whatever the dp.
    let c = h100(4);
    let m = vlm(16, 4096, images(3, 1024));
    let lm = json!({"tp": 4, "micro_batch_size": 1});
    let run = |dp: u32| {
        let p = plan(
            &m,
            &c,
            "pipeline_1f1b",
            None,
            json!({}),
            (0, dp),
            lm.clone(),
            (16, 16),
        );
        let (_, g, _) = simulate(&m, &c, &p);
        let q = estimate_quick(&m, &c, &p, &Options::default());
        (
            busiest_pass_time(&m, &g),
            q.module_time[id(&m, "vision")],
            p,
        )
    };
    let (t4, q4, p4) = run(4);
    let (t5, q5, p5) = run(5);
    let (t6, _, _) = run(6);
    let (t12, _, _) = run(12);
    println!("busiest replica's pass: dp4 {t4:.3e} s, dp5 {t5:.3e}, dp6 {t6:.3e}, dp12 {t12:.3e}");
    assert!(t4 > t6 && t6 > t12, "{t4} {t6} {t12}");
    // 3 images against 1: over 2x (each layer's kernel launches are paid whatever the rows).
    assert!(t4 > 2.0 * t12, "dp4 {t4} vs dp12 {t12}");
    // dp5 deals 2, 3, 2, 3, 2 images: its busiest replica does what a dp4 replica does.
    assert!(rel(t5, t4) < 1e-12, "dp5 {t5} vs dp4 {t4}");
    let deal: Vec<usize> = units(&m, &p5)[id(&m, "vision")].passes[0]
        .runs
        .iter()
        .map(|r| r.len())
        .collect();
    assert_eq!(deal, vec![2, 3, 2, 3, 2]);
    // The closed form prices each pass on its busiest replica, over the 4 passes.
    assert!(rel(q5, 4.0 * t5) < 1e-12, "closed form {q5} vs 4 x {t5}");
    assert!(rel(q4, q5) < 1e-12);
    assert_eq!(p4.passes().count(), 4);
}

#[test]
fn equal_items_that_divide_keep_megatrons_whole_samples_per_replica() {
    // vision dp4 beside the LLM tp2 dp2 mbs2 on 4 GPUs, one image per sample: micro-batch j's
    // replica dv (samples 4j + 2dv, 4j + 2dv + 1) takes its rows from projector replicas 2dv
    // and 2dv + 1 of pass j, each holding one whole sample (Megatron MIMO's rule).
    let c = h100(1);
    let m = vlm(16, 2048, images(1, 1024));
    let p = plan(
        &m,
        &c,
        "colocated_sequential",
        None,
        json!({}),
        (0, 4),
        json!({"tp": 2, "micro_batch_size": 2}),
        (0, 4),
    );
    let (_, g, _) = simulate(&m, &c, &p);
    let (lm, proj) = (id(&m, "llm"), id(&m, "projector"));
    let mut seen = 0;
    for t in &g.tasks {
        if t.kind != TaskKind::Forward || t.module.map(|x| x.index()) != Some(lm) {
            continue;
        }
        let mut from: Vec<(u32, u32)> = t
            .deps
            .iter()
            .filter(|d| d.kind == DepKind::Boundary)
            .map(|d| &g.tasks[d.task as usize])
            .inspect(|s| assert_eq!(s.module.map(|x| x.index()), Some(proj)))
            .map(|s| (s.micro_batch, s.replica))
            .collect();
        from.sort_unstable();
        let (j, dv) = (t.micro_batch, t.replica);
        assert_eq!(
            from,
            vec![(j, 2 * dv), (j, 2 * dv + 1)],
            "micro-batch {j} replica {dv}"
        );
        seen += 1;
    }
    assert_eq!(seen, 4 * 2);
    // Each encoder replica's pass is one whole sample: one image.
    for acts in vision_forwards(&m, &g) {
        for a in acts {
            assert!(rel(a, image_activations(&m, &p, 1, 1024)) < 1e-12);
        }
    }
}

#[test]
fn many_small_uneven_items_are_dealt_evenly_so_no_replica_straggles() {
    // Colocated on 2 GPUs, every module dp2: samples 0 and 2 have 4 images of 512 patches,
    // samples 1 and 3 none. Whole samples per replica would give replica 0 all 8 images and
    // replica 1 none; the deal gives each replica 2 images of every pass.
    let c = h100(1);
    let m = vlm(
        4,
        2048,
        json!({"per_sample": [[512, 512, 512, 512], [], [512, 512, 512, 512], []]}),
    );
    let one = json!({"micro_batch_size": 1});
    let p = plan(
        &m,
        &c,
        "colocated_sequential",
        None,
        one.clone(),
        (0, 2),
        one,
        (0, 2),
    );
    let (e, g, _) = simulate(&m, &c, &p);
    for acts in vision_forwards(&m, &g) {
        for a in acts {
            assert!(rel(a, image_activations(&m, &p, 2, 512)) < 1e-12);
        }
    }
    let busy = |r: usize| {
        let t = &e.per_rank[r].time;
        t.compute + t.recompute + t.tp_comm
    };
    assert_eq!(e.per_rank.len(), 2);
    assert!(rel(busy(0), busy(1)) < 1e-9, "{} vs {}", busy(0), busy(1));
}

// ---------------------------------------------------------------------------------------------
// encoder_chunk: items in flight and task counts.

#[test]
fn a_pass_size_k_holds_k_micro_batches_of_items_and_runs_m_over_k_encoder_tasks() {
    // 4 GPUs colocated, the LLM tp1 pp1 dp4 mbs1, 32 samples: M = 8. vision dp4, one image of
    // 1024 patches per sample: each pass gives each replica k images, all alive until the
    // pass's backward.
    let c = h100(1);
    let m = vlm(32, 2048, images(1, 1024));
    let one = json!({"micro_batch_size": 1});
    let enc_per_mb = {
        let p = plan(
            &m,
            &c,
            "colocated_chunked",
            Some(1),
            json!({}),
            (0, 4),
            one.clone(),
            (0, 4),
        );
        let proj = m.module_by_name("projector").unwrap();
        let pl = &p.module(proj.id).layout;
        let rows = Work {
            rows: 1024.0,
            pairs: 0.0,
        };
        image_activations(&m, &p, 1, 1024)
            + chunk_activations(proj, pl, 0, rows, 2.0, AttentionKernel::Flash)
    };
    // The closed form's peak is a rank's total, whose allocator margin grows with what is
    // allocated.
    let margin = 1.0 + hetpar_cost::Constants::for_gpu(c.gpu_model).allocator_margin;
    let mut base: Option<(f64, f64)> = None;
    for k in [1u32, 2, 4, 8] {
        let p = plan(
            &m,
            &c,
            "colocated_chunked",
            Some(k),
            json!({}),
            (0, 4),
            one.clone(),
            (0, 4),
        );
        let (e, g, _) = simulate(&m, &c, &p);
        let q = estimate_quick(&m, &c, &p, &Options::default());
        let tasks = vision_forwards(&m, &g).iter().map(Vec::len).sum::<usize>();
        assert_eq!(tasks as u32, 4 * 8 / k, "k = {k}");
        let (sim, closed) = (peak_activations(&e), q.peak_memory_bytes);
        let (sim1, closed1) = *base.get_or_insert((sim, closed));
        let more = f64::from(k - 1) * enc_per_mb;
        println!("k = {k}: peak activations {sim:.4e} B, closed-form peak {closed:.4e} B");
        if k > 1 {
            assert!(
                rel(sim - sim1, more) < 0.01,
                "k = {k}: +{} vs {more}",
                sim - sim1
            );
            assert!(
                rel(closed - closed1, more * margin) < 0.01,
                "k = {k}: +{} vs {more} x {margin}",
                closed - closed1
            );
        }
    }
}

/// Checks that every first-stage forward of micro-batch j of the LLM takes its boundary rows
/// from projector pass floor(j / k) only, and starts after them.
fn lm_waits_for_its_pass(m: &ModelGraph, g: &TaskGraph, t: &Timeline, k: u32) -> usize {
    let (lm, proj) = (id(m, "llm"), id(m, "projector"));
    let mut checked = 0;
    for (i, task) in g.tasks.iter().enumerate() {
        let first = task.stage == 0 && task.chunk == 0;
        if task.kind != TaskKind::Forward || task.module.map(|x| x.index()) != Some(lm) || !first {
            continue;
        }
        let deps: Vec<_> = task
            .deps
            .iter()
            .filter(|d| d.kind == DepKind::Boundary)
            .collect();
        assert!(
            !deps.is_empty(),
            "micro-batch {} has no boundary",
            task.micro_batch
        );
        for d in deps {
            let s = &g.tasks[d.task as usize];
            assert_eq!(s.module.map(|x| x.index()), Some(proj));
            assert_eq!(s.kind, TaskKind::Forward);
            assert_eq!(
                s.micro_batch,
                task.micro_batch / k,
                "micro-batch {}",
                task.micro_batch
            );
            assert!(t.start[i] >= t.end[d.task as usize]);
        }
        checked += 1;
    }
    checked
}

#[test]
fn a_pipeline_with_pass_size_k_runs_without_deadlock_and_the_llm_waits_for_its_pass() {
    // vision + projector tp1 dp2 on ranks 0-1 upstream of the LLM pp2 dp2 (1F1B) or pp2 vpp2
    // (interleaved) on ranks 2-5, 16 samples: M = 8, passes of k micro-batches (k = 3: a
    // short last pass).
    let c = h100(1);
    let m = vlm(16, 2048, images(2, 512));
    let one = json!({"micro_batch_size": 1});
    for (kind, lm, k) in [
        ("pipeline_1f1b", json!({"pp": 2, "micro_batch_size": 1}), 2),
        ("pipeline_1f1b", json!({"pp": 2, "micro_batch_size": 1}), 3),
        ("pipeline_1f1b", json!({"pp": 2, "micro_batch_size": 1}), 8),
        (
            "pipeline_interleaved",
            json!({"pp": 2, "vpp": 2, "micro_batch_size": 1}),
            2,
        ),
    ] {
        let p = plan(&m, &c, kind, Some(k), one.clone(), (0, 2), lm, (2, 4));
        let (e, g, t) = simulate(&m, &c, &p);
        assert!(e.iteration_time_s.is_finite() && e.iteration_time_s > 0.0);
        assert_eq!(
            lm_waits_for_its_pass(&m, &g, &t, k),
            8 * 2,
            "{kind} k = {k}"
        );
        // The encoder lanes hold at most all of the step's passes.
        let enc = e.per_rank.iter().find(|r| r.ranks == vec![0]).unwrap();
        let pass = 2.0 * f64::from(k) * image_activations(&m, &p, 1, 512);
        assert!(enc.memory.activations <= f64::from(p.passes().count()) * pass * 1.5);
    }
}

/// Passes the encoder's lane forwards before its first backward.
fn encoder_lead(m: &ModelGraph, g: &TaskGraph) -> usize {
    let v = id(m, "vision");
    let lane = g
        .tasks
        .iter()
        .find(|t| t.module.map(|x| x.index()) == Some(v))
        .unwrap()
        .lanes[0];
    g.orders[lane as usize]
        .iter()
        .map(|&t| &g.tasks[t as usize])
        .filter(|t| t.module.map(|x| x.index()) == Some(v))
        .take_while(|t| t.kind == TaskKind::Forward)
        .count()
}

#[test]
fn a_non_colocated_encoder_runs_ahead_by_1f1bs_warm_up_with_k_1_and_by_whole_passes_with_k_2() {
    // vision + projector on rank 0 upstream of the LLM pp2 on ranks 1-2: depth D = 3, M = 8.
    // k = 1: 1F1B's D - 1 = 2 warm-up forwards, so 3 passes before the first backward. k = 2:
    // the LLM's first stage forwards micro-batches 0-2 before its backward of 1 (pass 0's
    // last) and 3 right after it, so passes 0 and 1 before the encoder's first backward.
    let c = h100(1);
    let m = vlm(8, 2048, images(1, 1024));
    let lm = json!({"pp": 2, "micro_batch_size": 1});
    for (k, lead) in [(1, 3), (2, 2), (8, 1)] {
        let p = plan(
            &m,
            &c,
            "pipeline_1f1b",
            Some(k),
            json!({}),
            (0, 1),
            lm.clone(),
            (1, 2),
        );
        let (_, g, _) = simulate(&m, &c, &p);
        assert_eq!(encoder_lead(&m, &g), lead, "k = {k}");
    }
}
