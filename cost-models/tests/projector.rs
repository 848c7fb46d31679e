//! A tensor-parallel projector's communication, priced from its rows: without sequence
//! parallelism its output all-reduced forward; with it the input gathered and the output
//! reduce-scattered forward and the output gradient gathered backward. A fold takes exactly
//! the output's collectives (`hetpar_cost::fold`), and nothing else.

use hetpar_cost::collective::{collective_time, CollectiveKind, Link};
use hetpar_cost::compute::{Hardware, ModuleCompute, Work};
use hetpar_cost::fold::Fold;
use hetpar_cost::{AttentionKernel, Constants};
use hetpar_ir::layout::{CpComm, Layout, RecomputeSpec};
use hetpar_ir::{load_cluster, load_model};
use serde_json::json;

/// (forward, backward) exposed tp communication of the projector's one chunk of `rows` rows:
/// widths 16 -> 64 -> 32, fp32, tp 2 on one node.
fn comm(sp: bool, fold: Fold, rows: f64) -> ((f64, f64), Link) {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let mut m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/models/reference-tiny.json")).unwrap(),
    )
    .unwrap();
    m["modules"]["projector"]["mlp"]["widths"] = json!([16, 64, 32]);
    m["modules"]["llm"]["transformer"]["hidden"] = json!(32);
    let model = load_model(&m.to_string()).unwrap().0;
    let cluster =
        load_cluster(&std::fs::read_to_string(format!("{root}/clusters/h100-8.json")).unwrap())
            .unwrap();
    let k = Constants::for_gpu(cluster.gpu_model);
    let link = Link::of_group(&cluster, &k, &[0, 1]);
    let solo = Link::of_group(&cluster, &k, &[0]);
    let p = model
        .modules()
        .iter()
        .find(|x| x.name == "projector")
        .unwrap();
    let layout = Layout {
        tp: 2,
        cp: 1,
        pp: 1,
        dp: 1,
        ep: 1,
        vpp: 1,
        sequence_parallel: sp,
        tp_comm_overlap: false,
        cp_comm: CpComm::default(),
        recompute: RecomputeSpec::default(),
        distributed_optimizer: false,
        micro_batch_size: 1,
        chunk_layers: vec![p.layer_count()],
        micro_batches: 1,
    };
    let mc = ModuleCompute {
        module: p,
        layout: &layout,
        hw: Hardware::new(&cluster, k, link, solo, solo),
        act_bytes: 4.0,
        kernel: AttentionKernel::Flash,
        fold,
    };
    let t = mc.chunk(0, Work { rows, pairs: 0.0 });
    ((t.forward.tp_comm, t.backward.tp_comm), link)
}

#[test]
fn a_projectors_collectives_are_its_rows_gathers_and_reductions_and_a_fold_takes_its_outputs() {
    let rows = 48.0;
    let (input, output) = (rows * 16.0 * 4.0, rows * 32.0 * 4.0);
    for sp in [false, true] {
        let ((f, b), link) = comm(sp, Fold::NONE, rows);
        let t = |kind, bytes| collective_time(kind, bytes, 2, link);
        let (out_f, out_b) = if sp {
            let gather_in = t(CollectiveKind::AllGather, input);
            let scatter_out = t(CollectiveKind::ReduceScatter, output);
            assert_eq!(f, gather_in + scatter_out, "sp: forward");
            (scatter_out, t(CollectiveKind::AllGather, output))
        } else {
            let reduce_out = t(CollectiveKind::AllReduce, output);
            assert_eq!(f, reduce_out, "no sp: forward");
            (reduce_out, 0.0)
        };
        let ((ff, fb), _) = comm(sp, Fold::BOTH, rows);
        assert!(
            (f - ff - out_f).abs() < 1e-15,
            "sp {sp}: the fold takes the output's reduction"
        );
        assert!(
            (b - fb - out_b).abs() < 1e-15,
            "sp {sp}: and under sp its gradient's gather"
        );
        let ((only_f, only_b), _) = comm(
            sp,
            Fold {
                forward: true,
                backward: false,
            },
            rows,
        );
        assert_eq!(
            (only_f, only_b),
            (ff, b),
            "sp {sp}: each direction's fold alone"
        );
    }
}
