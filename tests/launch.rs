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
        "HETPAR_TOKEN",
        "SLURM_JOB_ID",
        "SLURM_STEP_ID",
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
    // Rank 0's line for each step, on the launcher's stderr.
    let lines = common::progress(&stderr(&p));
    let steps: Vec<(usize, usize)> = lines.iter().map(|l| (l.0, l.1)).collect();
    assert_eq!(steps, [(1, 3), (2, 3), (3, 3)], "{}", stderr(&p));
    for (l, want) in lines.iter().zip(&a) {
        assert!(
            (l.2 - want).abs() < 1e-5 && l.3 > 0.0,
            "{l:?} against {a:?}"
        );
    }
}

#[test]
fn a_loss_that_is_not_finite_stops_every_rank_and_the_launch() {
    let dir = common::scratch("launch-nan-loss");
    let weights = common::weights_with_head(&dir, 3e38);
    let start = std::time::Instant::now();
    let o = hetpar(&[
        "launch",
        PLAN,
        "--model",
        MODEL,
        "--cluster",
        CLUSTER,
        "--nproc-per-node",
        "8",
        "--steps",
        "6",
        "--weights",
        weights.to_str().unwrap(),
        "--timeout-ms",
        "60000",
    ]);
    let took = start.elapsed();
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    let e = stderr(&o);
    let lines = common::progress(&e);
    let (last, _, loss, _) = *lines.last().expect("a line per step");
    assert!(last < 6 && loss.is_nan(), "{e}");
    // Named once, by rank 0; the launcher names rank 0 and stops the rest.
    let says = format!("step {last}: the loss is NaN, not a finite number");
    assert_eq!(e.matches(&says).count(), 1, "{e}");
    assert!(e.contains("rank 0 (pid"), "{e}");
    assert!(losses(&stdout(&o)).is_empty(), "{}", stdout(&o));
    // Not a rank waiting out its 60 s timeout.
    assert!(took.as_secs() < 30, "took {took:?}");
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
            ("HETPAR_TOKEN", "job-1".into()),
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
            ("HETPAR_TOKEN", "job-1".into()),
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
            ("SLURM_JOB_ID", "4242".into()),
            ("SLURM_STEP_ID", "0".into()),
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

/// The pids of `parent`'s children (Linux: /proc/PID/stat's fourth field).
#[cfg(target_os = "linux")]
fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // The command name may hold spaces: the fields after it start past its ')'.
        let rest = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

#[cfg(target_os = "linux")]
fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(target_os = "linux")]
#[test]
fn a_worker_killed_during_the_rendezvous_stops_the_launch_within_seconds() {
    use std::time::{Duration, Instant};
    let start = Instant::now();
    // Node 1 of 2: its four ranks wait at a master no one serves, for up to 60 s.
    let mut launch = Command::new(env!("CARGO_BIN_EXE_hetpar"))
        .args([
            "launch",
            PLAN,
            "--model",
            MODEL,
            "--cluster",
            CLUSTER,
            "--nproc-per-node",
            "4",
            "--nnodes",
            "2",
            "--node-rank",
            "1",
            "--master",
            &free_port(),
            "--token",
            "launch-test",
            "--timeout-ms",
            "60000",
        ])
        .current_dir(root())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut kids = Vec::new();
    while kids.len() < 4 && start.elapsed() < Duration::from_secs(8) {
        std::thread::sleep(Duration::from_millis(50));
        kids = children_of(launch.id());
    }
    assert_eq!(kids.len(), 4, "the launcher started {kids:?}");
    let victim = kids[2];
    let env = std::fs::read(format!("/proc/{victim}/environ")).unwrap();
    let rank = String::from_utf8_lossy(&env)
        .split('\0')
        .find_map(|v| v.strip_prefix("HETPAR_RANK=").map(str::to_string))
        .unwrap();
    let killed = Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status();
    assert!(killed.unwrap().success());
    while launch.try_wait().unwrap().is_none() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let finished = launch.try_wait().unwrap().is_some();
    if !finished {
        let _ = launch.kill();
        for &k in &kids {
            let _ = Command::new("kill").args(["-9", &k.to_string()]).status();
        }
    }
    let o = launch.wait_with_output().unwrap();
    assert!(finished, "still running after 10 s: {}", stderr(&o));
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains(&format!(
            "rank {rank} (pid {victim}) was killed by signal 9 (SIGKILL)"
        )),
        "{e}"
    );
    assert!(e.contains("stopped the other ranks"), "{e}");
    let left: Vec<u32> = kids.into_iter().filter(|&k| alive(k)).collect();
    assert!(left.is_empty(), "ranks still running: {left:?}");
}

#[test]
fn a_launch_of_the_wrong_size_says_so_once() {
    let o = hetpar(&[
        "launch",
        PLAN,
        "--model",
        MODEL,
        "--cluster",
        CLUSTER,
        "--nproc-per-node",
        "4",
        "--steps",
        "1",
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert_eq!(e.matches("the program has 8 ranks").count(), 1, "{e}");
    assert!(e.contains("--nproc-per-node 4"), "{e}");
}

#[test]
fn several_nodes_outside_slurm_need_a_shared_token() {
    let o = Command::new(env!("CARGO_BIN_EXE_hetpar"))
        .args([
            "launch",
            PLAN,
            "--model",
            MODEL,
            "--cluster",
            CLUSTER,
            "--nproc-per-node",
            "4",
            "--nnodes",
            "2",
            "--master",
            &free_port(),
        ])
        .current_dir(root())
        .env_remove("SLURM_JOB_ID")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("give every node the same --token"), "{e}");
}

#[test]
fn a_process_count_that_overflows_is_refused() {
    let o = hetpar(&[
        "launch",
        PLAN,
        "--model",
        MODEL,
        "--cluster",
        CLUSTER,
        "--nproc-per-node",
        "65536",
        "--nnodes",
        "65536",
        "--token",
        "t",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("is too many processes"),
        "{}",
        stderr(&o)
    );
}
