//! Parity of the CPU backend with one device: every plan of the matrix, lowered and run with
//! ranks as threads, gives the single-device gradients (1e-5 relative, per tensor) after one
//! step and the single-device losses (1e-4) at each of 50 steps; runs are bitwise
//! reproducible. The CUDA backend's arithmetic on the emulated GPU gives the single-device
//! gradients for every plan too (1e-4). The single-device loss curve is the golden file
//! `tests/golden/losses-reference-tiny.json` (`UPDATE_EXPECT=1` rewrites it).

use std::time::Duration;

mod common;

use hetpar::ir::model::ModelGraph;
use hetpar::ir::program::Program;
use hetpar::runtime::exec::{run, RunOptions, RunOutput};
use hetpar::runtime::reference::{loss_and_grads, train_step, Adam, Batch, Config, Params};
use serde_json::{json, Value};

const MODEL: &str = include_str!("../examples/models/reference-tiny.json");
const TWO_ENCODERS: &str = include_str!("../examples/models/reference-tiny-two-encoders.json");
const CLUSTER: &str = include_str!("../examples/clusters/h100-8.json");
const SEED: u64 = 7;
const LR: f64 = 1e-3;
const STEPS: usize = 50;
/// Distinct batches the steps cycle through.
const BATCHES: u64 = 5;

fn model() -> (ModelGraph, Config) {
    model_of(MODEL)
}

fn model_of(text: &str) -> (ModelGraph, Config) {
    let (g, _) = hetpar::ir::load_model(text).expect("the model verifies");
    let cfg = Config::from_model(&g).expect("the reference computes it");
    (g, cfg)
}

fn lower(g: &ModelGraph, schedule: &str, modules: Value) -> Program {
    let cluster = hetpar::ir::load_cluster(CLUSTER).expect("the cluster verifies");
    let plan = json!({
        "kind": "plan", "format_version": 1, "model": g.name(), "cluster": "h100-8",
        "schedule": {"kind": schedule}, "modules": modules,
    });
    let (plan, _) = hetpar::ir::plan_from_value(&plan, g, &cluster)
        .unwrap_or_else(|d| panic!("the plan verifies: {d:?}"));
    hetpar::planner::lower::lower(g, &cluster, &plan).expect("the plan lowers")
}

fn at(layout: Value, offset: u32, count: u32) -> Value {
    json!({"layout": layout, "placement": {"ranks": {"offset": offset, "count": count}}})
}

/// The test matrix: (name, schedule, modules).
fn matrix() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        (
            "homogeneous tp2 dp2, every module alike",
            "colocated_sequential",
            json!({
                "vision": at(json!({"tp": 2, "dp": 2}), 0, 4),
                "projector": at(json!({"tp": 2, "dp": 2}), 0, 4),
                "llm": at(json!({"tp": 2, "dp": 2, "micro_batch_size": 2}), 0, 4),
            }),
        ),
        (
            "colocated fan-in: encoder dp4 into llm tp2 cp2 with sequence parallelism",
            "colocated_sequential",
            json!({
                "vision": at(json!({"dp": 4}), 0, 4),
                "projector": at(json!({"dp": 4}), 0, 4),
                "llm": at(json!({"tp": 2, "cp": 2, "dp": 1, "sequence_parallel": true,
                                 "micro_batch_size": 4}), 0, 4),
            }),
        ),
        (
            "colocated fan-out: encoder tp4 sp into llm dp4",
            "colocated_sequential",
            json!({
                "vision": at(json!({"tp": 4, "dp": 1, "sequence_parallel": true}), 0, 4),
                "projector": at(json!({"tp": 2, "dp": 2}), 0, 4),
                "llm": at(json!({"dp": 4, "micro_batch_size": 1}), 0, 4),
            }),
        ),
        (
            "non-colocated: encoder tp2 sp dp2 on 0-3, llm tp2 pp2 on 4-7 with recompute",
            "pipeline_1f1b",
            json!({
                "vision": at(json!({"tp": 2, "dp": 2, "sequence_parallel": true}), 0, 4),
                "projector": at(json!({"tp": 2, "dp": 2}), 0, 4),
                "llm": at(json!({"tp": 2, "pp": 2, "dp": 1, "micro_batch_size": 2,
                                 "recompute": {"policy": "full"}}), 4, 4),
            }),
        ),
        (
            "non-colocated: encoder cp2 dp2 on 0-3, llm cp2 pp2 interleaved on 4-7",
            "pipeline_interleaved",
            json!({
                "vision": at(json!({"cp": 2, "dp": 2}), 0, 4),
                "projector": at(json!({"tp": 2, "dp": 2}), 0, 4),
                "llm": at(json!({"cp": 2, "pp": 2, "vpp": 2, "dp": 1, "micro_batch_size": 4}),
                          4, 4),
            }),
        ),
    ]
}

fn batches(g: &ModelGraph, cfg: &Config) -> Vec<Batch> {
    (0..BATCHES)
        .map(|k| Batch::for_model(g, cfg, 1000 + k).expect("the batch fits the model"))
        .collect()
}

fn opts(steps: usize) -> RunOptions {
    RunOptions {
        steps,
        lr: LR,
        timeout: Duration::from_secs(60),
        backend: Default::default(),
    }
}

/// Every bit a run produced: losses, final weights, last gradients.
fn bits(o: &RunOutput) -> Vec<u32> {
    o.losses
        .iter()
        .chain(o.params.iter().flat_map(|(_, t)| t.data()))
        .chain(o.grads.iter().flat_map(|(_, t)| t.data()))
        .map(|v| v.to_bits())
        .collect()
}

fn single_device_losses(cfg: &Config, init: &Params, batches: &[Batch]) -> Vec<f32> {
    let mut params = init.clone();
    let mut adam = Adam::new(LR);
    (0..STEPS)
        .map(|k| {
            train_step(cfg, &mut params, &mut adam, &batches[k % batches.len()])
                .expect("the reference runs")
        })
        .collect()
}

fn assert_grads_match(name: &str, got: &RunOutput, want: &Params) {
    assert_grads_within(name, got, want, 1e-5);
}

fn assert_grads_within(name: &str, got: &RunOutput, want: &Params, tol: f64) {
    let worst = common::worst_gradient(name, &got.grads, want);
    assert!(
        worst.0 <= tol,
        "{name}: gradient {} differs by {:.3e} relative",
        worst.1,
        worst.0
    );
}

#[test]
fn every_plan_of_the_matrix_gives_the_single_device_gradients() {
    let (g, cfg) = model();
    let init = Params::init(&cfg, SEED).unwrap();
    let batches = batches(&g, &cfg);
    let (_, want) = loss_and_grads(&cfg, &init, &batches[0]).unwrap();
    for (name, schedule, modules) in matrix() {
        let program = lower(&g, schedule, modules);
        let out = run(&program, &cfg, &init, &batches[..1], &opts(1))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_grads_match(name, &out, &want);
    }
}

#[test]
fn every_plan_of_the_matrix_follows_the_golden_single_device_losses_for_50_steps() {
    let (g, cfg) = model();
    let init = Params::init(&cfg, SEED).unwrap();
    let batches = batches(&g, &cfg);
    let reference = single_device_losses(&cfg, &init, &batches);
    let golden = expect_test::expect_file!["golden/losses-reference-tiny.json"];
    golden.assert_eq(&format!(
        "{}\n",
        serde_json::to_string_pretty(&reference).unwrap()
    ));
    assert!(
        reference[STEPS - 1] < reference[0] - 0.05,
        "training lowers the loss: {reference:?}"
    );
    for (name, schedule, modules) in matrix() {
        let program = lower(&g, schedule, modules);
        let out = run(&program, &cfg, &init, &batches, &opts(STEPS))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        if std::env::var("PARITY_VERBOSE").is_ok() {
            let worst = out
                .losses
                .iter()
                .zip(&reference)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            eprintln!("{name}: largest loss difference over {STEPS} steps {worst:.2e}");
        }
        for (k, (a, b)) in out.losses.iter().zip(&reference).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4,
                "{name}: step {k}: loss {a} against the single device's {b}"
            );
        }
    }
}

#[test]
fn runs_are_bitwise_reproducible() {
    let (g, cfg) = model();
    let init = Params::init(&cfg, SEED).unwrap();
    let batches = batches(&g, &cfg);
    let (name, schedule, modules) = matrix().swap_remove(1);
    let program = lower(&g, schedule, modules);
    let a = run(&program, &cfg, &init, &batches, &opts(3)).unwrap();
    let b = run(&program, &cfg, &init, &batches, &opts(3)).unwrap();
    assert_eq!(bits(&a), bits(&b), "{name}: two runs differ");
}

#[test]
fn a_missing_message_or_a_missing_rank_is_an_error_not_a_hang() {
    use hetpar::ir::program::Instruction;
    use hetpar::runtime::RuntimeError;
    let (g, cfg) = model();
    let init = Params::init(&cfg, SEED).unwrap();
    let batches = batches(&g, &cfg);
    let (_, schedule, modules) = matrix().swap_remove(3);
    let program = lower(&g, schedule, modules);
    let short = RunOptions {
        steps: 1,
        lr: LR,
        timeout: Duration::from_millis(300),
        backend: Default::default(),
    };
    // A pipeline send that never happens: its receiver times out.
    let mut lost = program.clone();
    let r = lost
        .ranks
        .iter_mut()
        .find(|r| {
            r.instructions
                .iter()
                .any(|i| matches!(i, Instruction::SendActivation { .. }))
        })
        .expect("a pipelined plan sends activations");
    let k = r
        .instructions
        .iter()
        .position(|i| matches!(i, Instruction::SendActivation { .. }))
        .unwrap();
    r.instructions.remove(k);
    let start = std::time::Instant::now();
    let e = run(&lost, &cfg, &init, &batches, &short).expect_err("a lost message fails the run");
    assert!(
        matches!(
            e,
            RuntimeError::Timeout { .. } | RuntimeError::InvalidProgram(_)
        ),
        "{e}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "it took {:?}",
        start.elapsed()
    );
    // A rank that never starts: its peers see it gone.
    let mut missing = program.clone();
    missing.ranks.remove(0);
    let e = run(&missing, &cfg, &init, &batches, &short).expect_err("a missing rank fails the run");
    assert!(
        matches!(
            e,
            RuntimeError::PeerGone { peer: 0, .. }
                | RuntimeError::Timeout { peer: 0, .. }
                | RuntimeError::InvalidProgram(_)
        ),
        "{e}"
    );
}

/// Plans of the two-encoder model: (name, schedule, modules).
fn two_encoder_matrix() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        (
            "two encoders colocated: vision dp4, audio tp2 dp2, llm tp2 cp2 sp",
            "colocated_sequential",
            json!({
                "vision": at(json!({"dp": 4}), 0, 4),
                "projector": at(json!({"dp": 4}), 0, 4),
                "audio": at(json!({"tp": 2, "dp": 2}), 0, 4),
                "audio_projector": at(json!({"tp": 2, "dp": 2}), 0, 4),
                "llm": at(json!({"tp": 2, "cp": 2, "dp": 1, "sequence_parallel": true,
                                 "micro_batch_size": 4}), 0, 4),
            }),
        ),
        (
            "two encoders on 0-3 (vision tp2 sp dp2, audio dp4), llm tp2 pp2 on 4-7",
            "pipeline_1f1b",
            json!({
                "vision": at(json!({"tp": 2, "dp": 2, "sequence_parallel": true}), 0, 4),
                "projector": at(json!({"tp": 2, "dp": 2}), 0, 4),
                "audio": at(json!({"dp": 4}), 0, 4),
                "audio_projector": at(json!({"dp": 4}), 0, 4),
                "llm": at(json!({"tp": 2, "pp": 2, "dp": 1, "micro_batch_size": 4}), 4, 4),
            }),
        ),
    ]
}

#[test]
fn two_encoders_give_the_single_device_gradients_and_50_step_losses() {
    let (g, cfg) = model_of(TWO_ENCODERS);
    assert!(cfg.audio.is_some());
    let init = Params::init(&cfg, SEED).unwrap();
    let batches = batches(&g, &cfg);
    let (_, want) = loss_and_grads(&cfg, &init, &batches[0]).unwrap();
    let reference = single_device_losses(&cfg, &init, &batches);
    let golden = expect_test::expect_file!["golden/losses-reference-tiny-two-encoders.json"];
    golden.assert_eq(&format!(
        "{}\n",
        serde_json::to_string_pretty(&reference).unwrap()
    ));
    for (name, schedule, modules) in two_encoder_matrix() {
        let program = lower(&g, schedule, modules);
        let one = run(&program, &cfg, &init, &batches[..1], &opts(1))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_grads_match(name, &one, &want);
        let out = run(&program, &cfg, &init, &batches, &opts(STEPS))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let worst = out
            .losses
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        if std::env::var("PARITY_VERBOSE").is_ok() {
            eprintln!("{name}: largest loss difference over {STEPS} steps {worst:.2e}");
        }
        assert!(worst <= 1e-4, "{name}: a loss differs by {worst}");
    }
}

/// The CPU reference's arithmetic with the storage a GPU backend gives the interpreter: every
/// result held as device values only, every input read from its device copy when it has one
/// and otherwise "uploaded" and kept. A place where the interpreter changed a tensor without
/// dropping its device copy, or read values that never reached the host, changes the numbers.
mod resident {
    use std::sync::Arc;

    use hetpar::runtime::exec::math::{CpuMath, Math};
    use hetpar::runtime::reference::adam::AdamStep;
    use hetpar::runtime::reference::layers::LayerNormCache;
    use hetpar::runtime::tensor::{DeviceBuffer, Tensor};
    use hetpar::runtime::RuntimeError;

    #[derive(Debug)]
    struct Stored(Vec<f32>);

    impl DeviceBuffer for Stored {
        fn to_host(&self) -> Vec<f32> {
            self.0.clone()
        }
        fn duplicate(&self) -> Result<Arc<dyn DeviceBuffer>, RuntimeError> {
            Ok(Arc::new(Stored(self.0.clone())))
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    }

    /// An input as the device would see it.
    fn read(t: &Tensor) -> Tensor {
        match t.device() {
            Some(d) => Tensor::from_vec(t.shape(), d.to_host()).unwrap(),
            None => {
                t.keep_device_copy(Arc::new(Stored(t.data().to_vec())));
                t.clone()
            }
        }
    }

    /// A result left on the device.
    fn out(t: Tensor) -> Tensor {
        let shape = t.shape().to_vec();
        Tensor::from_device(&shape, Arc::new(Stored(t.into_data())))
    }

    pub struct Resident;

    type R3 = Result<(Tensor, Tensor, Tensor), RuntimeError>;

    impl Math for Resident {
        fn scatter_add_rows(
            &self,
            n: usize,
            src: &Tensor,
            index: &[usize],
        ) -> Result<Tensor, RuntimeError> {
            CpuMath.scatter_add_rows(n, &read(src), index).map(out)
        }
        fn adam(
            &self,
            p: &mut Tensor,
            g: &Tensor,
            m: &mut Tensor,
            v: &mut Tensor,
            step: &AdamStep,
        ) -> Result<(), RuntimeError> {
            let (mut p2, mut m2, mut v2) = (read(p), read(m), read(v));
            CpuMath.adam(&mut p2, &read(g), &mut m2, &mut v2, step)?;
            *p = out(p2);
            *m = out(m2);
            *v = out(v2);
            Ok(())
        }
        fn col_sums(&self, x: &Tensor) -> Result<Tensor, RuntimeError> {
            CpuMath.col_sums(&read(x)).map(out)
        }
        fn on_device(&self) -> bool {
            true
        }
        fn select_ranges(
            &self,
            parts: &[Tensor],
            ranges: &[std::ops::Range<usize>],
        ) -> Result<Tensor, RuntimeError> {
            let parts: Vec<Tensor> = parts.iter().map(read).collect();
            CpuMath.select_ranges(&parts, ranges).map(out)
        }
        fn gather_rows(&self, x: &Tensor, index: &[usize]) -> Result<Tensor, RuntimeError> {
            CpuMath.gather_rows(&read(x), index).map(out)
        }
        fn scatter_rows(
            &self,
            parts: &[Tensor],
            rows: &[Vec<usize>],
            n: usize,
            cols: usize,
        ) -> Result<Tensor, RuntimeError> {
            let parts: Vec<Tensor> = parts.iter().map(read).collect();
            CpuMath.scatter_rows(&parts, rows, n, cols).map(out)
        }
        fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor, RuntimeError> {
            CpuMath.add(&read(a), &read(b)).map(out)
        }
        fn linear(
            &self,
            x: &Tensor,
            w: &Tensor,
            b: Option<&Tensor>,
        ) -> Result<Tensor, RuntimeError> {
            let b = b.map(read);
            CpuMath.linear(&read(x), &read(w), b.as_ref()).map(out)
        }
        fn linear_backward(&self, x: &Tensor, w: &Tensor, dy: &Tensor) -> R3 {
            let (a, b, c) = CpuMath.linear_backward(&read(x), &read(w), &read(dy))?;
            Ok((out(a), out(b), out(c)))
        }
        fn layer_norm(
            &self,
            x: &Tensor,
            w: &Tensor,
            b: &Tensor,
        ) -> Result<(Tensor, LayerNormCache), RuntimeError> {
            let (y, c) = CpuMath.layer_norm(&read(x), &read(w), &read(b))?;
            let cache = LayerNormCache {
                xhat: out(c.xhat),
                rstd: c.rstd,
                device_rstd: None,
            };
            Ok((out(y), cache))
        }
        fn layer_norm_backward(&self, c: &LayerNormCache, w: &Tensor, dy: &Tensor) -> R3 {
            let cache = LayerNormCache {
                xhat: read(&c.xhat),
                rstd: c.rstd.clone(),
                device_rstd: None,
            };
            let (a, b, d) = CpuMath.layer_norm_backward(&cache, &read(w), &read(dy))?;
            Ok((out(a), out(b), out(d)))
        }
        fn gelu(&self, x: &Tensor) -> Result<Tensor, RuntimeError> {
            CpuMath.gelu(&read(x)).map(out)
        }
        fn gelu_backward(&self, x: &Tensor, dy: &Tensor) -> Result<Tensor, RuntimeError> {
            CpuMath.gelu_backward(&read(x), &read(dy)).map(out)
        }
        fn attention_core(
            &self,
            q: &Tensor,
            k: &Tensor,
            v: &Tensor,
            heads: usize,
            causal: bool,
            positions: &[usize],
        ) -> Result<(Tensor, Tensor), RuntimeError> {
            let (c, p) =
                CpuMath.attention_core(&read(q), &read(k), &read(v), heads, causal, positions)?;
            Ok((out(c), out(p)))
        }
        fn attention_core_backward(
            &self,
            q: &Tensor,
            k: &Tensor,
            v: &Tensor,
            probs: &Tensor,
            dctx: &Tensor,
        ) -> R3 {
            let (a, b, c) = CpuMath.attention_core_backward(
                &read(q),
                &read(k),
                &read(v),
                &read(probs),
                &read(dctx),
            )?;
            Ok((out(a), out(b), out(c)))
        }
        fn cross_entropy(
            &self,
            logits: &Tensor,
            targets: &[i64],
            n: usize,
        ) -> Result<(f64, Tensor), RuntimeError> {
            let (l, d) = CpuMath.cross_entropy(&read(logits), targets, n)?;
            Ok((l, out(d)))
        }
    }
}

#[test]
fn device_resident_storage_gives_the_cpu_backends_numbers_bit_for_bit() {
    let (g, cfg) = model();
    let init = Params::init(&cfg, SEED).unwrap();
    let batches = batches(&g, &cfg);
    for (name, schedule, modules) in matrix() {
        let program = lower(&g, schedule, modules);
        let plain = run(&program, &cfg, &init, &batches, &opts(3)).unwrap();
        let resident =
            hetpar::runtime::exec::run_with(&program, &cfg, &init, &batches, &opts(3), &|st| {
                st.set_math(Box::new(resident::Resident));
                st.interpret()
            })
            .unwrap();
        assert_eq!(bits(&plain), bits(&resident), "{name}");
    }
}

/// Group collectives with NCCL's shape (equal parts, calls matched in order per group), run
/// on a second host fabric: the padding of unequal parts and the routing of every collective
/// and gradient sum through them, checked on the CPU.
mod host_groups {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use hetpar::runtime::exec::collective::GroupCollectives;
    use hetpar::runtime::tensor::Tensor;
    use hetpar::runtime::transport::Endpoint;
    use hetpar::runtime::RuntimeError;

    /// One rank's second endpoint and, per group, how many calls it made (the tag of the next).
    pub type Shared = Arc<Mutex<(Endpoint, HashMap<Vec<u32>, u64>)>>;

    pub struct HostGroups(pub Shared);

    impl HostGroups {
        fn call<T>(
            &self,
            group: &[u32],
            f: impl FnOnce(&mut Endpoint, u64) -> Result<T, RuntimeError>,
        ) -> Result<T, RuntimeError> {
            let mut g = self.0.lock().unwrap();
            let (ep, calls) = &mut *g;
            let n = calls.entry(group.to_vec()).or_insert(0);
            let key = group.iter().fold(7u64, |h, &r| h * 31 + u64::from(r));
            let tag = (key % (1 << 20)) << 20 | *n;
            *n += 1;
            f(ep, tag)
        }
    }

    impl GroupCollectives for HostGroups {
        fn covers(&self, group: &[u32]) -> bool {
            group.len() > 1
        }

        fn all_gather(&self, group: &[u32], x: &Tensor) -> Result<Tensor, RuntimeError> {
            let parts = self.call(group, |ep, t| ep.all_gather(group, t, x.data()))?;
            let all: Vec<f32> = parts.concat();
            Tensor::from_vec(&[x.rows() * group.len(), x.cols()], all)
        }

        fn all_reduce(&self, group: &[u32], mut x: Tensor) -> Result<Tensor, RuntimeError> {
            self.call(group, |ep, t| ep.all_reduce_sum(group, t, x.data_mut()))?;
            Ok(x)
        }

        fn exchanges(&self) -> bool {
            true
        }

        fn exchange(
            &self,
            sends: &[(u32, &Tensor)],
            recvs: &[(u32, [usize; 2])],
        ) -> Result<Vec<Tensor>, RuntimeError> {
            let mut g = self.0.lock().unwrap();
            let (ep, calls) = &mut *g;
            let me = ep.rank();
            // Messages between one pair match in order: the pair's count is the tag.
            let mut next = |from: u32, to: u32| {
                let n = calls.entry(vec![u32::MAX, from, to]).or_insert(0);
                *n += 1;
                (1u64 << 40) | (u64::from(from) << 30) | (u64::from(to) << 20) | *n
            };
            for (to, t) in sends {
                let tag = next(me, *to);
                ep.send(*to, tag, t.data())?;
            }
            recvs
                .iter()
                .map(|(from, shape)| {
                    let tag = next(*from, me);
                    Tensor::from_vec(shape, ep.recv(*from, tag)?)
                })
                .collect()
        }

        fn reduce_scatter(&self, group: &[u32], x: &Tensor) -> Result<Tensor, RuntimeError> {
            let per = x.numel() / group.len();
            let pieces: Vec<Vec<f32>> = (0..group.len())
                .map(|i| x.data()[i * per..(i + 1) * per].to_vec())
                .collect();
            let mine = self.call(group, |ep, t| ep.reduce_scatter(group, t, &pieces))?;
            Tensor::from_vec(&[x.rows() / group.len(), x.cols()], mine)
        }
    }
}

#[test]
fn group_collectives_with_equal_parts_give_the_cpu_backends_numbers_bit_for_bit() {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    let (g, cfg) = model();
    let init = Params::init(&cfg, SEED).unwrap();
    let batches = batches(&g, &cfg);
    for (name, schedule, modules) in matrix() {
        let program = lower(&g, schedule, modules);
        let plain = run(&program, &cfg, &init, &batches, &opts(2)).unwrap();
        let n = program.ranks.len();
        let shared: Vec<host_groups::Shared> =
            hetpar::runtime::transport::fabric(n, Duration::from_secs(60))
                .into_iter()
                .map(|ep| Arc::new(Mutex::new((ep, HashMap::new()))))
                .collect();
        let grouped = hetpar::runtime::exec::run_with(
            &program,
            &cfg,
            &init,
            &batches,
            &opts(2),
            &move |st| {
                let mine = shared[st.rank as usize].clone();
                st.set_math(Box::new(resident::Resident));
                st.set_groups(Box::new(host_groups::HostGroups(mine)));
                st.interpret()
            },
        )
        .unwrap();
        assert_eq!(bits(&plain), bits(&grouped), "{name}");
    }
}

#[test]
fn every_group_a_rank_sums_over_has_a_communicator_created_once_in_one_order() {
    use hetpar::runtime::exec::rank::{program_groups, ModuleCtx};
    let (g, cfg) = model();
    let init = Params::init(&cfg, SEED).unwrap();
    for (name, schedule, modules) in matrix() {
        let program = lower(&g, schedule, modules);
        let groups = program_groups(&program);
        assert_eq!(groups, program_groups(&program), "{name}: one order");
        for (i, a) in groups.iter().enumerate() {
            assert!(a.len() > 1 && !groups[i + 1..].contains(a), "{name}: {a:?}");
        }
        for rp in &program.ranks {
            for m in 0..program.modules.len() {
                let Some(c) = ModuleCtx::new(&program, m, &cfg, &init, rp.rank) else {
                    continue;
                };
                for grp in [&c.tp_group, &c.cp_group, &c.dp_cp_group, &c.stage_group] {
                    assert!(
                        grp.len() <= 1 || groups.contains(grp),
                        "{name}: rank {} sums over {grp:?}, which has no communicator",
                        rp.rank
                    );
                }
            }
        }
    }
}

#[test]
fn messages_between_each_pair_come_in_one_order_and_a_swap_is_named() {
    use hetpar::ir::program::Instruction;
    use hetpar::runtime::exec::order::check_pair_order;
    let (g, _) = model();
    let mut swapped = None;
    for (name, schedule, modules) in matrix() {
        let program = lower(&g, schedule, modules);
        assert_eq!(check_pair_order(&program), Ok(()), "{name}");
        // Swap a rank's first two receives from one peer: NCCL would pair them wrongly.
        let mut p = program.clone();
        for rp in &mut p.ranks {
            let from = |i: &Instruction| match i {
                Instruction::RecvActivation { from, .. }
                | Instruction::RecvGradient { from, .. } => Some(*from),
                _ => None,
            };
            let recvs: Vec<usize> = (0..rp.instructions.len())
                .filter(|&k| from(&rp.instructions[k]).is_some())
                .collect();
            let pair = recvs.iter().enumerate().find_map(|(x, &a)| {
                recvs[x + 1..]
                    .iter()
                    .find(|&&b| from(&rp.instructions[b]) == from(&rp.instructions[a]))
                    .map(|&b| (a, b))
            });
            if let Some((a, b)) = pair {
                rp.instructions.swap(a, b);
                swapped = Some(p.clone());
                break;
            }
        }
    }
    let p = swapped.expect("a pipelined plan receives twice from one peer");
    let e = check_pair_order(&p).expect_err("a swap breaks the order");
    assert!(e.contains("first differ") && e.contains("by order"), "{e}");
}

/// Every plan of both matrices on the emulated GPU (the CUDA backend's `GpuMath`, operations
/// and kernels, the kernels compiled for the CPU): the single device's gradients within 1e-4
/// after one step, the CUDA backend's f32 tolerance. Skipped without a C++ compiler.
#[test]
fn every_plan_of_both_matrices_gives_the_single_device_gradients_on_the_emulated_gpu() {
    use hetpar::runtime::cuda::Precision;
    let Some(dev) = common::emulated_gpu() else {
        return;
    };
    for (model, plans) in [(MODEL, matrix()), (TWO_ENCODERS, two_encoder_matrix())] {
        let (g, cfg) = model_of(model);
        let init = Params::init(&cfg, SEED).unwrap();
        let batches = batches(&g, &cfg);
        let (_, want) = loss_and_grads(&cfg, &init, &batches[0]).unwrap();
        for (name, schedule, modules) in plans {
            let program = lower(&g, schedule, modules);
            let out = common::run_emulated(
                &dev,
                Precision::F32,
                &program,
                &cfg,
                &init,
                &batches[..1],
                &opts(1),
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_grads_within(name, &out, &want, 1e-4);
        }
    }
}
