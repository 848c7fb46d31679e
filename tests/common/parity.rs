//! What the parity tests share (`tests/parity.rs`, `tests/parity_passes.rs`): the reference
//! model and cluster, lowering a plan, the single device's losses, the gradient check, and two
//! stand-ins that run the interpreter as a GPU backend would: device-resident storage and
//! group collectives with NCCL's contract.

use std::time::Duration;

use hetpar::ir::model::ModelGraph;
use hetpar::ir::program::Program;
use hetpar::runtime::exec::{RunOptions, RunOutput};
use hetpar::runtime::reference::{train_step, Adam, Batch, Config, Params};
use serde_json::{json, Value};

pub const MODEL: &str = include_str!("../../examples/models/reference-tiny.json");
pub const TWO_ENCODERS: &str =
    include_str!("../../examples/models/reference-tiny-two-encoders.json");
pub const CLUSTER: &str = include_str!("../../examples/clusters/h100-8.json");
pub const SEED: u64 = 7;
pub const LR: f64 = 1e-3;
pub const STEPS: usize = 50;
/// Distinct batches the steps cycle through.
pub const BATCHES: u64 = 5;

pub fn model() -> (ModelGraph, Config) {
    model_of(MODEL)
}

pub fn model_of(text: &str) -> (ModelGraph, Config) {
    let (g, _) = hetpar::ir::load_model(text).expect("the model verifies");
    let cfg = Config::from_model(&g).expect("the reference computes it");
    (g, cfg)
}

/// The plan of `modules` under the schedule of kind `schedule`, lowered.
pub fn lower(g: &ModelGraph, schedule: &str, modules: Value) -> Program {
    lower_with(g, json!({ "kind": schedule }), modules)
}

/// The plan of `modules` under `schedule` (the plan's `schedule` object), lowered.
pub fn lower_with(g: &ModelGraph, schedule: Value, modules: Value) -> Program {
    let cluster = hetpar::ir::load_cluster(CLUSTER).expect("the cluster verifies");
    let plan = json!({
        "kind": "plan", "format_version": 1, "model": g.name(), "cluster": "h100-8",
        "schedule": schedule, "modules": modules,
    });
    let (plan, _) = hetpar::ir::plan_from_value(&plan, g, &cluster)
        .unwrap_or_else(|d| panic!("the plan verifies: {d:?}"));
    hetpar::planner::lower::lower(g, &cluster, &plan).expect("the plan lowers")
}

pub fn at(layout: Value, offset: u32, count: u32) -> Value {
    json!({"layout": layout, "placement": {"ranks": {"offset": offset, "count": count}}})
}

pub fn batches(g: &ModelGraph, cfg: &Config) -> Vec<Batch> {
    (0..BATCHES)
        .map(|k| Batch::for_model(g, cfg, 1000 + k).expect("the batch fits the model"))
        .collect()
}

pub fn opts(steps: usize) -> RunOptions {
    RunOptions {
        steps,
        lr: LR,
        timeout: Duration::from_secs(60),
        backend: Default::default(),
        save: None,
    }
}

/// Every bit a run produced: losses, final weights, last gradients.
pub fn bits(o: &RunOutput) -> Vec<u32> {
    o.losses
        .iter()
        .chain(o.params.iter().flat_map(|(_, t)| t.data()))
        .chain(o.grads.iter().flat_map(|(_, t)| t.data()))
        .map(|v| v.to_bits())
        .collect()
}

/// `program` run for `steps` steps as a GPU backend runs it: device-resident storage and
/// group collectives with NCCL's contract (one fused exchange per boundary call).
pub fn run_grouped(
    program: &Program,
    cfg: &Config,
    init: &Params,
    batches: &[Batch],
    steps: usize,
) -> Result<RunOutput, hetpar::runtime::RuntimeError> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    let shared: Vec<host_groups::Shared> =
        hetpar::runtime::transport::fabric(program.ranks.len(), Duration::from_secs(60))
            .into_iter()
            .map(|net| Arc::new(Mutex::new((net, HashMap::new()))))
            .collect();
    hetpar::runtime::exec::run_with(program, cfg, init, batches, &opts(steps), &move |st| {
        let mine = shared[st.rank as usize].clone();
        st.set_math(Box::new(resident::Resident));
        st.set_groups(Box::new(host_groups::HostGroups(mine)));
        st.interpret()
    })
}

pub fn single_device_losses(cfg: &Config, init: &Params, batches: &[Batch]) -> Vec<f32> {
    let mut params = init.clone();
    let mut adam = Adam::new(LR);
    (0..STEPS)
        .map(|k| {
            train_step(cfg, &mut params, &mut adam, &batches[k % batches.len()])
                .expect("the reference runs")
        })
        .collect()
}

/// Every step's loss within 1e-4 of the single device's; with `PARITY_VERBOSE` the largest
/// difference is printed.
pub fn assert_losses_match(name: &str, got: &RunOutput, reference: &[f32]) {
    if std::env::var("PARITY_VERBOSE").is_ok() {
        let worst = got
            .losses
            .iter()
            .zip(reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        eprintln!(
            "{name}: largest loss difference over {} steps {worst:.2e}",
            got.losses.len()
        );
    }
    for (k, (a, b)) in got.losses.iter().zip(reference).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4,
            "{name}: step {k}: loss {a} against the single device's {b}"
        );
    }
}

pub fn assert_grads_match(name: &str, got: &RunOutput, want: &Params) {
    assert_grads_within(name, got, want, 1e-5);
}

pub fn assert_grads_within(name: &str, got: &RunOutput, want: &Params, tol: f64) {
    let worst = super::worst_gradient(name, &got.grads, want);
    assert!(
        worst.0 <= tol,
        "{name}: gradient {} differs by {:.3e} relative",
        worst.1,
        worst.0
    );
}

/// The CPU reference's arithmetic with the storage a GPU backend gives the interpreter: every
/// result held as device values only, every input read from its device copy when it has one
/// and otherwise "uploaded" and kept. A place where the interpreter changed a tensor without
/// dropping its device copy, or read values that never reached the host, changes the numbers.
pub mod resident {
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

/// Group collectives with NCCL's shape (equal parts, calls matched in order per group), run
/// on a second host fabric: the padding of unequal parts and the routing of every collective
/// and gradient sum through them, checked on the CPU.
pub mod host_groups {
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
            let (net, calls) = &mut *g;
            let n = calls.entry(group.to_vec()).or_insert(0);
            let key = group.iter().fold(7u64, |h, &r| h * 31 + u64::from(r));
            let tag = (key % (1 << 20)) << 20 | *n;
            *n += 1;
            f(net, tag)
        }
    }

    impl GroupCollectives for HostGroups {
        fn covers(&self, group: &[u32]) -> bool {
            group.len() > 1
        }

        fn all_gather(&self, group: &[u32], x: &Tensor) -> Result<Tensor, RuntimeError> {
            let parts = self.call(group, |net, t| net.all_gather(group, t, x.data()))?;
            let all: Vec<f32> = parts.concat();
            Tensor::from_vec(&[x.rows() * group.len(), x.cols()], all)
        }

        fn all_reduce(&self, group: &[u32], mut x: Tensor) -> Result<Tensor, RuntimeError> {
            self.call(group, |net, t| net.all_reduce_sum(group, t, x.data_mut()))?;
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
            let (net, calls) = &mut *g;
            let me = net.rank();
            // Messages between one pair match in order: the pair's count is the tag.
            let mut next = |from: u32, to: u32| {
                let n = calls.entry(vec![u32::MAX, from, to]).or_insert(0);
                *n += 1;
                (1u64 << 40) | (u64::from(from) << 30) | (u64::from(to) << 20) | *n
            };
            for (to, t) in sends {
                let tag = next(me, *to);
                net.send(*to, tag, t.data())?;
            }
            recvs
                .iter()
                .map(|(from, shape)| {
                    let tag = next(*from, me);
                    Tensor::from_vec(shape, net.recv(*from, tag)?)
                })
                .collect()
        }

        fn reduce_scatter(&self, group: &[u32], x: &Tensor) -> Result<Tensor, RuntimeError> {
            let per = x.numel() / group.len();
            let pieces: Vec<Vec<f32>> = (0..group.len())
                .map(|i| x.data()[i * per..(i + 1) * per].to_vec())
                .collect();
            let mine = self.call(group, |net, t| net.reduce_scatter(group, t, &pieces))?;
            Tensor::from_vec(&[x.rows() / group.len(), x.cols()], mine)
        }
    }
}
