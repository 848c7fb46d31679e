//! Load and save throughput of checkpoints, against a plain file copy of the same bytes on the
//! same disk, over a Llama-shaped checkpoint of about 0.7 GB of f32 weights (2 GB saved with
//! Adam's moments) generated on the fly: nothing large is committed.
//!
//! - **copy**: the weights files read and written again through user memory, each flushed to
//!   disk (`sync_all`) as a save flushes its files.
//! - **load**: opening the directory (headers, every tensor checked) and every rank's slices
//!   under tp 2, each of the 2 ranks a thread, as `RankState::new` reads them: every byte of
//!   the weights read once, memory-mapped, and widened to f32.
//! - **save**: a run's save after its step (each rank's file, the consolidation into the
//!   Hugging Face files and hetpar's moments, every file flushed), timed as the difference
//!   between the end of a step and the end of the run, with and without `--save`.
//!
//! The files are in the page cache when read (they were just written), for the copy and the
//! load alike. `cargo bench --bench checkpoint`; `HETPAR_BENCH_DIR` sets the directory
//! (default `target/bench-checkpoint`, removed at the end).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use hetpar::ir::hf::{import, ImportOptions};
use hetpar::runtime::checkpoint::{HfDir, SaveSpec, WeightSource};
use hetpar::runtime::exec::shard_params::split_of;
use hetpar::runtime::exec::{run_observed, RunOptions};
use hetpar::runtime::hf_names::to_hf;
use hetpar::runtime::reference::params::param_specs;
use hetpar::runtime::reference::{Batch, Config};
use hetpar::runtime::tensor::Tensor;
use serde_json::json;

const CLUSTER: &str = include_str!("../examples/clusters/h100-8.json");
/// A file of the generated checkpoint holds at most this many bytes.
const SHARD: usize = 256 << 20;

fn config() -> serde_json::Value {
    json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 8,
        "num_attention_heads": 16, "num_key_value_heads": 16, "head_dim": 64,
        "vocab_size": 32000, "max_position_embeddings": 256, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "tie_word_embeddings": false,
    })
}

/// Deterministic values, cheap to make: small and varied.
fn values(n: usize, salt: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i.wrapping_mul(2_654_435_761).wrapping_add(salt) % 2001) as f32 - 1000.0) * 2e-5)
        .collect()
}

/// The checkpoint directory in `dir`: config.json, shards of at most [`SHARD`] bytes, an
/// index. Its weights' bytes.
fn write_checkpoint(dir: &Path, cfg: &Config) -> usize {
    std::fs::create_dir_all(dir).unwrap();
    let text = serde_json::to_string_pretty(&config()).unwrap();
    std::fs::write(dir.join("config.json"), text).unwrap();
    let specs = param_specs(cfg);
    let mut groups: Vec<Vec<usize>> = vec![Vec::new()];
    let mut size = 0;
    for (i, s) in specs.iter().enumerate() {
        let b = s.shape.iter().product::<usize>() * 4;
        if size > 0 && size + b > SHARD {
            groups.push(Vec::new());
            size = 0;
        }
        size += b;
        groups.last_mut().unwrap().push(i);
    }
    let (count, mut map, mut total) = (groups.len(), serde_json::Map::new(), 0);
    for (k, group) in groups.iter().enumerate() {
        let file = format!("model-{:05}-of-{count:05}.safetensors", k + 1);
        let tensors: Vec<(String, Tensor)> = group
            .iter()
            .map(|&i| {
                let s = &specs[i];
                let name = to_hf(&s.name).unwrap();
                let n = s.shape.iter().product();
                map.insert(name.clone(), json!(file));
                total += n * 4;
                (name, Tensor::from_vec(&s.shape, values(n, i)).unwrap())
            })
            .collect();
        let bytes = hetpar::runtime::dump::to_bytes(tensors.iter().map(|(n, t)| (n.clone(), t)));
        let p = dir.join(&file);
        std::fs::write(&p, bytes.unwrap()).unwrap();
        std::fs::File::open(&p).unwrap().sync_all().unwrap();
    }
    let index = json!({"metadata": {"total_size": total}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    total
}

fn copy_seconds(from: &Path, to: &Path) -> f64 {
    std::fs::create_dir_all(to).unwrap();
    let start = Instant::now();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "safetensors") {
            // Read and written through user memory, as a save writes (`std::fs::copy` may
            // copy inside the kernel or share extents, which is no write of the bytes).
            let bytes = std::fs::read(&p).unwrap();
            let mut f = std::fs::File::create(to.join(p.file_name().unwrap())).unwrap();
            std::io::Write::write_all(&mut f, &bytes).unwrap();
            f.sync_all().unwrap();
        }
    }
    start.elapsed().as_secs_f64()
}

fn load_seconds(dir: &Path, cfg: &Config) -> f64 {
    let start = Instant::now();
    let ckpt = HfDir::open(dir, cfg).unwrap();
    let names = ckpt.names();
    std::thread::scope(|s| {
        for t in 0..2 {
            let (ckpt, names) = (&ckpt, &names);
            s.spawn(move || {
                for n in names {
                    std::hint::black_box(ckpt.slice(n, split_of(n), t, 2).unwrap());
                }
            });
        }
    });
    start.elapsed().as_secs_f64()
}

/// Seconds from the end of the step to the end of a one-step run under tp 2, saving to
/// `save` or not.
fn after_step_seconds(
    dir: &Path,
    cfg: &Config,
    g: &hetpar::ir::ModelGraph,
    save: Option<PathBuf>,
) -> f64 {
    let cluster = hetpar::ir::load_cluster(CLUSTER).unwrap();
    let at = json!({"layout": {"tp": 2, "micro_batch_size": 1},
                    "placement": {"ranks": {"offset": 0, "count": 2}}});
    let plan = json!({"kind": "plan", "format_version": 1, "cluster": "h100-8",
                      "schedule": {"kind": "pipeline_1f1b"}, "modules": {"llm": at}});
    let (plan, _) = hetpar::ir::plan_from_value(&plan, g, &cluster).unwrap();
    let program = hetpar::planner::lower::lower(g, &cluster, &plan).unwrap();
    let batch = Batch::for_model(g, cfg, 1000).unwrap();
    let ckpt = HfDir::open(dir, cfg).unwrap();
    let opts = RunOptions {
        steps: 1,
        lr: 0.0,
        timeout: std::time::Duration::from_secs(600),
        backend: Default::default(),
        save: save.map(|dir| SaveSpec {
            dir,
            every: 1,
            first_step: 0,
            seed: 0,
            lr: 0.0,
            config_json: None,
            model_json: String::new(),
            max_shard_bytes: 2 << 30,
        }),
    };
    let stepped = Mutex::new(None);
    run_observed(
        &program,
        cfg,
        &ckpt,
        &[batch],
        &opts,
        &|st| st.interpret(),
        &|_| {
            *stepped.lock().unwrap() = Some(Instant::now());
        },
    )
    .unwrap();
    let end = Instant::now();
    let at = stepped.lock().unwrap().expect("the step reported");
    (end - at).as_secs_f64()
}

fn main() {
    let opts = ImportOptions {
        name: Some("llama-bench".into()),
        global_batch: 1,
        sequence_length: 4,
        items_per_sample: 0,
        ..Default::default()
    };
    let (g, _) = hetpar::ir::model::verify::build(import(&config(), &opts).unwrap()).unwrap();
    let cfg = Config::from_model(&g).unwrap();
    let root = std::env::var_os("HETPAR_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-checkpoint")
        });
    let _ = std::fs::remove_dir_all(&root);
    let src = root.join("source");
    let bytes = write_checkpoint(&src, &cfg);
    let gb = |b: usize, s: f64| b as f64 / s / 1e9;
    let copy = copy_seconds(&src, &root.join("copy"));
    let load = load_seconds(&src, &cfg);
    let plain = after_step_seconds(&src, &cfg, &g, None);
    let saving = after_step_seconds(&src, &cfg, &g, Some(root.join("save")));
    let saved = 3 * bytes; // the weights, and Adam's two moments
    let save = (saving - plain).max(1e-9);
    println!(
        "checkpoint of {:.2} GB of f32 weights ({} tensors)",
        bytes as f64 / 1e9,
        param_specs(&cfg).len()
    );
    println!(
        "copy  {:6.2} GB/s  ({:.2} s, read + write + sync of the weights files)",
        gb(bytes, copy),
        copy
    );
    println!(
        "load  {:6.2} GB/s  ({:.2} s, open + every tp 2 rank's slices), {:.2}x copy",
        gb(bytes, load),
        load,
        copy / load
    );
    println!(
        "save  {:6.2} GB/s  ({:.2} s for {:.2} GB: weights + 2 moments), {:.2}x copy",
        gb(saved, save),
        save,
        saved as f64 / 1e9,
        gb(saved, save) / gb(bytes, copy)
    );
    let _ = std::fs::remove_dir_all(&root);
}
