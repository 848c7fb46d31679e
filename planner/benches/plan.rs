//! Full plan search speed (targets: a two-encoder VLM on 64 GPUs under 1 s, on 1024 GPUs under
//! 5 s; 16384 GPUs reported from one run): every arrangement, schedule kind and pass size,
//! and the homogeneous baseline.
//!
//! `cargo bench -p hetpar-planner --bench plan`

use criterion::{criterion_group, criterion_main, Criterion};
use hetpar_ir::{load_cluster, load_model};
use hetpar_planner::search::{search, SearchOptions};

fn bench(c: &mut Criterion) {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let text = std::fs::read_to_string(format!("{root}/models/vision-audio-7b.json")).unwrap();
    let mut g = c.benchmark_group("plan");
    g.sample_size(10);
    for nodes in [8u32, 128, 2048] {
        // Two samples per GPU: the global batch grows with the cluster, as it does in practice.
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["data"]["global_batch"] = serde_json::json!(2 * 8 * nodes);
        let model = load_model(&v.to_string()).unwrap().0;
        let cluster = load_cluster(&format!(
            r#"{{"kind": "cluster", "format_version": 1, "name": "h100", "nodes": {nodes}, "gpus_per_node": 8, "gpu": {{"model": "h100_sxm_80gb"}}}}"#
        ))
        .unwrap();
        let r = search(&model, &cluster, SearchOptions::default());
        eprintln!(
            "vision-audio-7b on {} GPUs (global batch {}): {} plans priced, {} simulated, {:.2} s, best {:.3} s per step",
            nodes * 8,
            2 * 8 * nodes,
            r.stats.candidates,
            r.stats.simulated,
            r.stats.elapsed_s,
            r.best.as_ref().and_then(|b| b.estimate.as_ref()).map_or(f64::NAN, |e| e.iteration_time_s)
        );
        // 16,384 GPUs: the single run above is the figure (minutes per search).
        if nodes <= 128 {
            g.bench_function(format!("vision_audio_7b_{}_gpus", nodes * 8), |b| {
                b.iter(|| search(&model, &cluster, SearchOptions::default()))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
