//! `hetpar launch`: ranks as processes meeting over TCP train exactly as ranks as threads do;
//! a peer that never arrives is an error naming the rendezvous, not a hang; `srun`'s
//! variables place a worker too.

use std::process::Command;

mod common;
use common::{
    free_port, hetpar, losses, root, stderr, stdout, REF_CLUSTER as CLUSTER, REF_MODEL as MODEL,
    REF_PLAN as PLAN,
};

fn worker(env: &[(&str, String)], args: &[&str]) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hetpar"));
    c.arg("worker").args(args).current_dir(root());
    for k in [
        "HETPAR_RANK",
        "HETPAR_WORLD",
        "HETPAR_MASTER",
        "SLURM_PROCID",
        "SLURM_NTASKS",
        "MASTER_ADDR",
        "MASTER_PORT",
    ] {
        c.env_remove(k);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("hetpar runs")
}

#[test]
fn eight_processes_train_exactly_as_eight_threads() {
    let args = [PLAN, "--model", MODEL, "--cluster", CLUSTER, "--steps", "3"];
    let mut launch = vec!["launch"];
    launch.extend_from_slice(&args);
    launch.extend_from_slice(&["--nproc-per-node", "8"]);
    let p = hetpar(&launch);
    assert!(p.status.success(), "{}", stderr(&p));
    let mut run = vec!["run"];
    run.extend_from_slice(&args);
    let t = hetpar(&run);
    assert!(t.status.success(), "{}", stderr(&t));
    let (a, b) = (losses(&stdout(&p)), losses(&stdout(&t)));
    assert_eq!(a.len(), 3, "{}", stdout(&p));
    assert_eq!(a, b, "processes and threads differ");
}

#[test]
fn a_peer_that_never_arrives_is_a_rendezvous_error_on_both_sides() {
    let master = free_port();
    let args = [
        PLAN,
        "--model",
        MODEL,
        "--cluster",
        CLUSTER,
        "--steps",
        "1",
        "--timeout-ms",
        "300",
    ];
    // Rank 0 waits for seven peers that never start.
    let o = worker(
        &[
            ("HETPAR_RANK", "0".into()),
            ("HETPAR_WORLD", "8".into()),
            ("HETPAR_MASTER", master.clone()),
        ],
        &args,
    );
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("rendezvous") && e.contains("0 of 7 arrived"),
        "{e}"
    );
    // Rank 3 finds no rank 0 at the master address.
    let o = worker(
        &[
            ("HETPAR_RANK", "3".into()),
            ("HETPAR_WORLD", "8".into()),
            ("HETPAR_MASTER", master.clone()),
        ],
        &args,
    );
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("rank 3") && e.contains("cannot reach"), "{e}");
}

#[test]
fn a_worker_started_by_srun_reads_slurm_variables() {
    let dir = common::scratch("launch-slurm");
    let plan = dir.join("one.json");
    std::fs::write(
        &plan,
        serde_json::json!({
            "kind": "plan", "format_version": 1, "model": "reference-tiny", "cluster": "h100-8",
            "schedule": {"kind": "colocated_sequential"},
            "modules": {
                "vision": {"layout": {}, "placement": {"ranks": {"offset": 0, "count": 1}}},
                "projector": {"layout": {}, "placement": {"ranks": {"offset": 0, "count": 1}}},
                "llm": {"layout": {"micro_batch_size": 8}, "placement": {"ranks": {"offset": 0, "count": 1}}},
            },
        })
        .to_string(),
    )
    .unwrap();
    let master = free_port();
    let (host, port) = master.rsplit_once(':').unwrap();
    let o = worker(
        &[
            ("SLURM_PROCID", "0".into()),
            ("SLURM_NTASKS", "1".into()),
            ("MASTER_ADDR", host.into()),
            ("MASTER_PORT", port.into()),
        ],
        &[
            plan.to_str().unwrap(),
            "--model",
            MODEL,
            "--cluster",
            CLUSTER,
            "--steps",
            "2",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(losses(&stdout(&o)).len(), 2, "{}", stdout(&o));
}
