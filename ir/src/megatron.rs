//! Megatron-LM's command-line arguments (`pretrain_gpt.py`, release `core_v0.19.0`) read back
//! into a model file and a plan file: what a user's existing setup is, so `estimate`, `show`
//! and `plan` can compare against it (`hetpar import megatron`). The inverse of
//! `hetpar export megatron` for a language model; Megatron's own defaults apply to what the
//! arguments leave out, each one a note.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

/// What the arguments gave: the model and plan files as JSON, and a note for every default
/// taken or argument left unread.
#[derive(Clone, Debug, PartialEq)]
pub struct Imported {
    pub model: Value,
    pub plan: Value,
    pub notes: Vec<String>,
}

/// The arguments by flag (the last value of a repeated flag); `None` for a switch.
struct Args {
    map: BTreeMap<String, Option<String>>,
    used: std::cell::RefCell<Vec<String>>,
    notes: std::cell::RefCell<Vec<String>>,
    errors: std::cell::RefCell<Vec<String>>,
}

impl Args {
    fn parse(text: &str) -> Args {
        let mut map = BTreeMap::new();
        let mut key: Option<String> = None;
        let words = text
            .lines()
            .map(|l| l.split('#').next().unwrap_or(""))
            .flat_map(|l| l.split_whitespace())
            .filter(|w| *w != "\\");
        for w in words {
            if w.starts_with("--") {
                let (k, v) = match w.split_once('=') {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (w.to_string(), None),
                };
                map.insert(k.clone(), v);
                key = Some(k);
            } else if let Some(k) = &key {
                // A flag's first value; later ones (nargs="+") are kept joined.
                let slot = map.entry(k.clone()).or_insert(None);
                *slot = Some(match slot.take() {
                    Some(prev) => format!("{prev} {w}"),
                    None => w.to_string(),
                });
            }
        }
        Args {
            map,
            used: Default::default(),
            notes: Default::default(),
            errors: Default::default(),
        }
    }

    fn has(&self, flag: &str) -> bool {
        self.used.borrow_mut().push(flag.into());
        self.map.contains_key(flag)
    }

    fn text(&self, flag: &str) -> Option<String> {
        self.used.borrow_mut().push(flag.into());
        self.map.get(flag).cloned().flatten()
    }

    /// A positive integer flag, or `default` with a note (`None`: required).
    fn num(&self, flag: &str, default: Option<(u64, &str)>) -> u64 {
        match self.text(flag).map(|v| v.parse::<u64>()) {
            Some(Ok(n)) if n > 0 => n,
            Some(_) => {
                let v = self.map.get(flag).cloned().flatten().unwrap_or_default();
                self.errors
                    .borrow_mut()
                    .push(format!("{flag}: \"{v}\" is not a positive integer"));
                1
            }
            None => match default {
                Some((d, why)) => {
                    self.notes
                        .borrow_mut()
                        .push(format!("{flag} absent: {d} ({why})"));
                    d
                }
                None => {
                    self.errors.borrow_mut().push(format!("{flag} is required"));
                    1
                }
            },
        }
    }
}

/// Reads `text` (flags and values, whitespace or one per line, `#` comments and `\`
/// continuations allowed) for a cluster of `world` GPUs named `cluster`; every problem at once.
pub fn import(text: &str, world: u64, cluster: &str, name: &str) -> Result<Imported, Vec<String>> {
    let a = Args::parse(text);
    for mimo in ["--encoder-tp", "--llm-tp", "--llm-offset"] {
        if a.map.contains_key(mimo) {
            a.errors.borrow_mut().push(format!(
                "{mimo}: the MIMO example's heterogeneous grid is not read yet; import the \
                 language model's pretrain_gpt.py arguments"
            ));
        }
    }
    let model = model(&a, name);
    let plan = plan(&a, world, cluster, name);
    let errors = a.errors.into_inner();
    if !errors.is_empty() {
        return Err(errors);
    }
    let used = a.used.into_inner();
    let mut notes = a.notes.into_inner();
    for flag in a.map.keys().filter(|f| !used.contains(f)) {
        notes.push(format!(
            "{flag}: not read (no cost or layout depends on it in hetpar)"
        ));
    }
    Ok(Imported { model, plan, notes })
}

fn model(a: &Args, name: &str) -> Value {
    let hidden = a.num("--hidden-size", None);
    let heads = a.num("--num-attention-heads", None);
    let mut t = Map::new();
    t.insert("layers".into(), json!(a.num("--num-layers", None)));
    t.insert("hidden".into(), json!(hidden));
    t.insert("heads".into(), json!(heads));
    if a.has("--group-query-attention") {
        t.insert(
            "kv_heads".into(),
            json!(a.num("--num-query-groups", Some((1, "Megatron's default")))),
        );
    }
    if a.has("--kv-channels") {
        t.insert("head_dim".into(), json!(a.num("--kv-channels", None)));
    }
    let ffn = a.num(
        "--ffn-hidden-size",
        Some((4 * hidden, "4 x hidden, as Megatron derives it")),
    );
    t.insert("ffn_hidden".into(), json!(ffn));
    let swiglu = a.has("--swiglu");
    t.insert(
        "ffn_kind".into(),
        json!(if swiglu { "swiglu" } else { "gelu_mlp" }),
    );
    let norm = match a.text("--normalization").as_deref() {
        Some("RMSNorm") => "rms_norm",
        Some("LayerNorm") | None => "layer_norm",
        Some(other) => {
            a.errors.borrow_mut().push(format!(
                "--normalization: \"{other}\" is not LayerNorm or RMSNorm"
            ));
            "layer_norm"
        }
    };
    t.insert("norm".into(), json!(norm));
    t.insert("attention".into(), json!("causal"));
    let linear_bias = !a.has("--disable-bias-linear");
    if !linear_bias {
        t.insert("linear_bias".into(), json!(false));
        t.insert("qkv_bias".into(), json!(a.has("--add-qkv-bias")));
    } else {
        t.insert("linear_bias".into(), json!(true));
        t.insert("qkv_bias".into(), json!(true));
    }
    if a.has("--num-experts") {
        let experts = a.num("--num-experts", None);
        let expert_ffn = a.num(
            "--moe-ffn-hidden-size",
            Some((ffn, "the FFN size, as Megatron takes it")),
        );
        let shared = a
            .text("--moe-shared-expert-intermediate-size")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        t.insert(
            "moe".into(),
            json!({
                "experts": experts,
                "top_k": a.num("--moe-router-topk", Some((2, "Megatron's default"))),
                "expert_ffn_hidden": expert_ffn,
                "shared_experts": shared / expert_ffn.max(1),
                "layer_frequency": a.num("--moe-layer-freq", Some((1, "Megatron's default"))),
            }),
        );
    }
    let seq = a.num("--seq-length", None);
    let positions = match a.text("--position-embedding-type").as_deref() {
        Some("rope") => {
            json!({"kind": "rope", "rope_base": a.num("--rotary-base", Some((10000, "Megatron's default")))})
        }
        Some("none") => json!({"kind": "none"}),
        Some("learned_absolute") | None => {
            json!({"kind": "learned", "max_positions": a.num("--max-position-embeddings", Some((seq, "the sequence length")))})
        }
        Some(other) => {
            a.errors.borrow_mut().push(format!(
                "--position-embedding-type: \"{other}\" is not rope, learned_absolute or none"
            ));
            json!({"kind": "none"})
        }
    };
    let precision = if a.has("--bf16") {
        "bf16"
    } else if a.has("--fp16") {
        "fp16"
    } else {
        "fp32"
    };
    json!({
        "kind": "model", "format_version": 1, "name": name,
        "modules": {"llm": {
            "kind": "language_model",
            "transformer": t,
            "positions": positions,
            "vocab_size": a.num("--vocab-size", None),
            "tied_embeddings": !a.has("--untie-embeddings-and-output-weights"),
        }},
        "boundaries": [],
        "data": {
            "global_batch": a.num("--global-batch-size", None),
            "sequence_length": seq,
            "precision": precision,
            "optimizer": "adam",
            "encoders": {},
        },
    })
}

fn plan(a: &Args, world: u64, cluster: &str, name: &str) -> Value {
    let tp = a.num(
        "--tensor-model-parallel-size",
        Some((1, "Megatron's default")),
    );
    let pp = a.num(
        "--pipeline-model-parallel-size",
        Some((1, "Megatron's default")),
    );
    let cp = a.num("--context-parallel-size", Some((1, "Megatron's default")));
    let per = tp * pp * cp;
    if !world.is_multiple_of(per.max(1)) {
        a.errors.borrow_mut().push(format!(
            "tp x pp x cp = {per} does not divide the cluster's {world} GPUs"
        ));
    }
    let layers = a.num("--num-layers", None);
    let mut l = Map::new();
    for (k, v) in [
        ("tp", tp),
        ("pp", pp),
        ("cp", cp),
        ("dp", (world / per.max(1)).max(1)),
    ] {
        l.insert(k.into(), json!(v));
    }
    l.insert(
        "ep".into(),
        json!(a.num(
            "--expert-model-parallel-size",
            Some((1, "Megatron's default"))
        )),
    );
    if a.has("--num-layers-per-virtual-pipeline-stage") {
        let per_chunk = a.num("--num-layers-per-virtual-pipeline-stage", None);
        l.insert("vpp".into(), json!(layers / (pp * per_chunk).max(1)));
    }
    l.insert(
        "sequence_parallel".into(),
        json!(a.has("--sequence-parallel")),
    );
    l.insert("tp_comm_overlap".into(), json!(a.has("--tp-comm-overlap")));
    if cp > 1 {
        let comm = match a.text("--cp-comm-type").as_deref() {
            Some("p2p") | None => "ring",
            Some("allgather") => "all_gather",
            Some(other) => {
                a.errors.borrow_mut().push(format!(
                    "--cp-comm-type: \"{other}\" has no hetpar kind (p2p or allgather)"
                ));
                "ring"
            }
        };
        l.insert("cp_comm".into(), json!(comm));
    }
    l.insert(
        "distributed_optimizer".into(),
        json!(a.has("--use-distributed-optimizer")),
    );
    l.insert(
        "micro_batch_size".into(),
        json!(a.num("--micro-batch-size", None)),
    );
    if let Some(r) = recompute(a) {
        l.insert("recompute".into(), r);
    }
    if a.has("--decoder-first-pipeline-num-layers") || a.has("--decoder-last-pipeline-num-layers") {
        let first = a
            .text("--decoder-first-pipeline-num-layers")
            .and_then(|v| v.parse::<u64>().ok());
        let last = a
            .text("--decoder-last-pipeline-num-layers")
            .and_then(|v| v.parse::<u64>().ok());
        let ends = first.unwrap_or(0) + last.unwrap_or(0);
        let middle_stages = pp - u64::from(first.is_some()) - u64::from(last.is_some());
        let middle = layers.saturating_sub(ends) / middle_stages.max(1);
        let mut stages = vec![middle; pp as usize];
        if let Some(f) = first {
            stages[0] = f;
        }
        if let Some(x) = last {
            stages[pp as usize - 1] = x;
        }
        l.insert("stage_layers".into(), json!(stages));
    }
    let kind = if l.contains_key("vpp") {
        "pipeline_interleaved"
    } else {
        "pipeline_1f1b"
    };
    json!({
        "kind": "plan", "format_version": 1, "model": name, "cluster": cluster,
        "schedule": {"kind": kind},
        "modules": {"llm": {"layout": l, "placement": {"ranks": {"offset": 0, "count": world}}}},
    })
}

fn recompute(a: &Args) -> Option<Value> {
    match a.text("--recompute-granularity").as_deref() {
        None => None,
        Some("selective") => Some(json!({"policy": "selective"})),
        Some("full") => match a.text("--recompute-method").as_deref() {
            Some("block") => {
                Some(json!({"policy": "full", "layers": a.num("--recompute-num-layers", None)}))
            }
            _ => {
                a.num("--recompute-num-layers", Some((1, "Megatron's default")));
                Some(json!({"policy": "full"}))
            }
        },
        Some(other) => {
            a.errors.borrow_mut().push(format!(
                "--recompute-granularity: \"{other}\" is not full or selective"
            ));
            None
        }
    }
}
