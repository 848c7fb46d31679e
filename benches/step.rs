//! Step time of the reference-tiny model under a few plans on the CPU backend, against the
//! single-device reference, measured side by side (rounds interleave the configurations) and
//! printed as figures and ratios. Each figure is the fastest step of its configuration: on a
//! shared machine other work only ever slows a step down, in phases that last seconds.
//!
//! `cargo bench --bench step`

use std::time::{Duration, Instant};

use hetpar::ir::program::Program;
use hetpar::runtime::exec::{run, RunOptions};
use hetpar::runtime::reference::{train_step, Adam, Batch, Config, Params};
use serde_json::{json, Value};

const MODEL: &str = include_str!("../examples/models/reference-tiny.json");
const CLUSTER: &str = include_str!("../examples/clusters/h100-8.json");
const EXAMPLE: &str = include_str!("../examples/plans/reference-tiny-noncolocated-8.json");
const STEPS: usize = 5;
const ROUNDS: usize = 5;

fn plan(schedule: &str, layout: Value, count: u32) -> Value {
    let at = json!({"layout": layout, "placement": {"ranks": {"offset": 0, "count": count}}});
    json!({
        "kind": "plan", "format_version": 1, "model": "reference-tiny", "cluster": "h100-8",
        "schedule": {"kind": schedule},
        "modules": {"vision": at, "projector": at, "llm": at},
    })
}

fn main() {
    let (g, _) = hetpar::ir::load_model(MODEL).expect("model");
    let cluster = hetpar::ir::load_cluster(CLUSTER).expect("cluster");
    let cfg = Config::from_model(&g).expect("reference model");
    let lower = |v: &Value| -> Program {
        let (p, _) = hetpar::ir::plan_from_value(v, &g, &cluster).expect("plan");
        hetpar::planner::lower::lower(&g, &cluster, &p).expect("lowers")
    };
    let plans: Vec<(&str, Program)> = vec![
        (
            "one rank",
            lower(&plan(
                "colocated_sequential",
                json!({"micro_batch_size": 2}),
                1,
            )),
        ),
        (
            "tp2 dp2, every module (4 ranks)",
            lower(&plan(
                "colocated_sequential",
                json!({"tp": 2, "dp": 2, "micro_batch_size": 2}),
                4,
            )),
        ),
        (
            "dp8, every module (8 ranks)",
            lower(&plan(
                "colocated_sequential",
                json!({"dp": 8, "micro_batch_size": 1}),
                8,
            )),
        ),
        (
            "non-colocated example (8 ranks)",
            lower(&serde_json::from_str(EXAMPLE).expect("example plan")),
        ),
    ];
    let init = Params::init(&cfg, 0).expect("init");
    let batches: Vec<Batch> = (0..STEPS as u64)
        .map(|k| Batch::for_model(&g, &cfg, k).expect("batch"))
        .collect();
    let opts = RunOptions {
        steps: STEPS,
        lr: 1e-3,
        timeout: Duration::from_secs(60),
        backend: Default::default(),
        save: None,
    };
    // Per configuration, every measured step time (s); index 0 is the single device.
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); plans.len() + 1];
    for _ in 0..ROUNDS {
        let mut params = init.clone();
        let mut adam = Adam::new(1e-3);
        for b in &batches {
            let t = Instant::now();
            train_step(&cfg, &mut params, &mut adam, b).expect("reference step");
            times[0].push(t.elapsed().as_secs_f64());
        }
        for (k, (_, p)) in plans.iter().enumerate() {
            let out = run(p, &cfg, &init, &batches, &opts).expect("run");
            // The first step warms up allocations.
            times[k + 1].extend_from_slice(&out.step_seconds[1..]);
        }
    }
    let fastest = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let base = fastest(&times[0]);
    println!(
        "reference-tiny, batch {} x {} tokens, {ROUNDS} rounds of {STEPS} steps (fastest step)",
        batches[0].batch_size, batches[0].seq_len
    );
    println!(
        "{:<34} {:>10} {:>12} {:>10}",
        "configuration", "step ms", "samples/s", "vs 1 dev"
    );
    let names = std::iter::once("single-device reference").chain(plans.iter().map(|p| p.0));
    for (name, v) in names.zip(&times) {
        let m = fastest(v);
        println!(
            "{name:<34} {:>10.2} {:>12.1} {:>10.2}",
            m * 1e3,
            batches[0].batch_size as f64 / m,
            m / base
        );
    }
}
