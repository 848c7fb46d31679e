//! The device check's real-shaped Llama: a stack of Llama-3-8B layers (hidden 4096, 32 heads,
//! 8 key/value heads, SwiGLU 14336, RMSNorm, rotary positions) trained on one GPU with bf16
//! products, its step time, model TFLOP/s and MFU against the GPU's dense bf16 peak.

// Without the feature only the arithmetic is compiled (and tested).
#![cfg_attr(not(feature = "cuda"), allow(dead_code))]

use serde_json::json;

/// The stack's Hugging Face config: Llama-3-8B's layer shape, `layers` of them, a 32k
/// vocabulary (the head's share of a step stays small, as in the 32-layer model).
pub fn config(layers: u32) -> serde_json::Value {
    json!({
        "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
        "num_hidden_layers": layers, "num_attention_heads": 32, "num_key_value_heads": 8,
        "vocab_size": 32000, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "tie_word_embeddings": false, "hidden_act": "silu"
    })
}

/// Model TFLOP/s and MFU of a step of `flops` taking `seconds`, against `peak` FLOP/s.
pub fn throughput(flops: f64, seconds: f64, peak: f64) -> (f64, f64) {
    let per_second = flops / seconds;
    (per_second / 1e12, per_second / peak)
}

/// Trains the stack `steps` steps (the first a warm-up) on GPU `dev`; prints one line and
/// returns whether it ran with finite losses.
#[cfg(feature = "cuda")]
pub fn check(
    dev: &std::sync::Arc<hetpar::runtime::cuda::Device>,
    cluster_text: &str,
    layers: u32,
    seq: u32,
    steps: usize,
    seed: u64,
) -> anyhow::Result<bool> {
    use hetpar::ir::hf::{import, ImportOptions};
    use hetpar::runtime::cuda::Precision;
    use hetpar::runtime::exec::{generated::synthetic_batches, run, Backend, RunOptions};
    use hetpar::runtime::reference::{Config, Params};
    let opts = ImportOptions {
        name: Some("llama-stack".into()),
        global_batch: 1,
        sequence_length: seq,
        items_per_sample: 0,
        ..Default::default()
    };
    let file = import(&config(layers), &opts).map_err(|d| anyhow::anyhow!("{d:?}"))?;
    let (g, _) = hetpar::ir::model::verify::build(file).map_err(|d| anyhow::anyhow!("{d:?}"))?;
    let cluster = hetpar::ir::load_cluster(cluster_text).map_err(|d| anyhow::anyhow!("{d:?}"))?;
    let plan = json!({
        "kind": "plan", "format_version": 1, "model": "llama-stack", "cluster": cluster.name,
        "schedule": {"kind": "pipeline_1f1b"},
        "modules": {"llm": {"layout": {"micro_batch_size": 1},
                            "placement": {"ranks": {"offset": 0, "count": 1}}}},
    });
    let (plan, _) =
        hetpar::ir::plan_from_value(&plan, &g, &cluster).map_err(|d| anyhow::anyhow!("{d:?}"))?;
    let program = hetpar::planner::lower::lower(&g, &cluster, &plan)?;
    let cfg = Config::from_model(&g)?;
    let init = Params::init(&cfg, seed)?;
    let batches = synthetic_batches(&g, &cfg, seed, steps)?;
    let backend = Backend::Cuda {
        device: dev.clone(),
        precision: Precision::Bf16,
        nccl: false,
    };
    let opts = RunOptions {
        steps,
        lr: 1e-4,
        timeout: std::time::Duration::from_secs(300),
        backend,
        save: None,
    };
    let out = run(&program, &cfg, &init, &batches, &opts)?;
    let timed = &out.step_seconds[1.min(out.step_seconds.len() - 1)..];
    let seconds = timed.iter().sum::<f64>() / timed.len() as f64;
    let flops = hetpar::ir::model::module_flops(&g, g.language_model()).training();
    let peak = cluster.gpu.dense_bf16_flops;
    let (tflops, mfu) = throughput(flops, seconds, peak);
    println!(
        "llama stack ({layers} Llama-3-8B layers, sequence {seq}, bf16 products): {:.1} ms a \
         step, {tflops:.1} TFLOP/s, MFU {:.1}% of {:.0} TFLOP/s; losses {:?}",
        seconds * 1e3,
        mfu * 100.0,
        peak / 1e12,
        out.losses
    );
    Ok(out.losses.iter().all(|l| l.is_finite()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stack_imports_with_llama_3_8b_layers() {
        let opts = hetpar::ir::hf::ImportOptions {
            global_batch: 1,
            sequence_length: 4096,
            items_per_sample: 0,
            ..Default::default()
        };
        let file = hetpar::ir::hf::import(&config(2), &opts).unwrap();
        let (g, _) = hetpar::ir::model::verify::build(file).unwrap();
        let cfg = hetpar::runtime::reference::Config::from_model(&g).unwrap();
        let s = cfg.llm.stack;
        assert_eq!(
            (s.hidden, s.heads, s.kv_heads, s.ffn, s.layers),
            (4096, 32, 8, 14336, 2)
        );
    }

    #[test]
    fn throughput_is_flops_over_time_against_the_peak() {
        let (tflops, mfu) = throughput(2e12, 0.5, 8e12);
        assert_eq!((tflops, mfu), (4.0, 0.5));
    }
}
