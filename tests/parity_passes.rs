//! Parity of plans whose encoders and projectors run in encoder passes that do not line up
//! with the language model's samples: encoder replicas outnumbering the samples of a
//! micro-batch (a replica with one image, a replica with none), items that do not divide over
//! three replicas, and passes of several micro-batches (`encoder_chunk`), in a pipeline and
//! colocated. Each plan gives the single device's gradients (1e-5) after one step and its
//! losses (1e-4) for 50 steps on the CPU backend, the CPU backend's bits through group
//! collectives with NCCL's contract (messages between each pair in one order on both sides),
//! and the single device's gradients on the emulated GPU (1e-4).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;

use common::parity::{
    assert_grads_match, assert_grads_within, assert_losses_match, at, batches, bits, host_groups,
    lower_with, model, opts, resident, single_device_losses, SEED, STEPS,
};
use hetpar::ir::program::{Instruction, Program};
use hetpar::ir::shard::{pass_deal, Passes};
use hetpar::runtime::exec::order::check_pair_order;
use hetpar::runtime::exec::{run, run_with};
use hetpar::runtime::reference::{loss_and_grads, Params};
use serde_json::{json, Value};

/// Runs every check of the file on one plan.
fn parity(name: &str, schedule: Value, modules: Value) {
    let (g, cfg) = model();
    let program = lower_with(&g, schedule, modules);
    let init = Params::init(&cfg, SEED).unwrap();
    let batches = batches(&g, &cfg);
    let (_, want) = loss_and_grads(&cfg, &init, &batches[0]).unwrap();
    let one = run(&program, &cfg, &init, &batches[..1], &opts(1))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_grads_match(name, &one, &want);
    let reference = single_device_losses(&cfg, &init, &batches);
    let out = run(&program, &cfg, &init, &batches, &opts(STEPS))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_losses_match(name, &out, &reference);
    assert_eq!(check_pair_order(&program), Ok(()), "{name}");
    let plain = run(&program, &cfg, &init, &batches, &opts(2)).unwrap();
    assert_eq!(
        bits(&plain),
        bits(&grouped(&program, &cfg, &init, &batches)),
        "{name}"
    );
    if let Some(dev) = common::emulated_gpu() {
        let f32 = hetpar::runtime::cuda::Precision::F32;
        let gpu = common::run_emulated(&dev, f32, &program, &cfg, &init, &batches[..1], &opts(1))
            .unwrap_or_else(|e| panic!("{name} on the emulated GPU: {e}"));
        assert_grads_within(&format!("{name} (emulated GPU)"), &gpu, &want, 1e-4);
    }
}

/// Two steps with the device-resident storage and group collectives of a GPU backend.
fn grouped(
    program: &Program,
    cfg: &hetpar::runtime::reference::Config,
    init: &Params,
    batches: &[hetpar::runtime::reference::Batch],
) -> hetpar::runtime::exec::RunOutput {
    let n = program.ranks.len();
    let shared: Vec<host_groups::Shared> =
        hetpar::runtime::transport::fabric(n, Duration::from_secs(60))
            .into_iter()
            .map(|net| Arc::new(Mutex::new((net, HashMap::new()))))
            .collect();
    run_with(program, cfg, init, batches, &opts(2), &move |st| {
        let mine = shared[st.rank as usize].clone();
        st.set_math(Box::new(resident::Resident));
        st.set_groups(Box::new(host_groups::HostGroups(mine)));
        st.interpret()
    })
    .unwrap()
}

/// The vision encoder's items per pass and replica (samples), as the plan deals them.
fn vision_deal(micro_batches: u32, per_pass: u32, dp: u32) -> Vec<Vec<Vec<u32>>> {
    let (g, _) = model();
    let vision = g.modules().iter().find(|m| m.name == "vision").unwrap().id;
    let passes = Passes::new(micro_batches, per_pass);
    (0..passes.count())
        .map(|p| {
            pass_deal(&g, vision, passes, dp, p)
                .into_iter()
                .map(|items| items.iter().map(|i| i.sample).collect())
                .collect()
        })
        .collect()
}

/// The encoder passes each rank runs forward, by module.
fn passes_run(p: &Program) -> HashMap<String, HashSet<u32>> {
    let mut out: HashMap<String, HashSet<u32>> = HashMap::new();
    for r in &p.ranks {
        for i in &r.instructions {
            if let Instruction::Forward {
                module,
                micro_batch,
                ..
            } = i
            {
                out.entry(module.clone()).or_default().insert(*micro_batch);
            }
        }
    }
    out
}

#[test]
fn encoder_replicas_outnumbering_the_samples_of_a_micro_batch_give_the_single_device_numbers() {
    // 4 micro-batches of 2 samples; each pass's 0 to 4 images dealt over 4 encoder replicas
    // (pass 0: one image each to three of them, none to the fourth; pass 1: one image, to one).
    let deal = vision_deal(4, 1, 4);
    assert!(
        deal.iter()
            .any(|p| p.iter().any(Vec::is_empty) && p.iter().any(|d| d.len() == 1)),
        "{deal:?}"
    );
    let modules = json!({
        "vision": at(json!({"dp": 4}), 0, 4),
        "projector": at(json!({"tp": 2, "dp": 2, "sequence_parallel": true}), 0, 4),
        "llm": at(json!({"tp": 2, "dp": 2, "micro_batch_size": 1}), 0, 4),
    });
    parity(
        "colocated: vision dp4 over 2 samples per micro-batch, projector tp2 sp dp2, llm tp2 dp2",
        json!({"kind": "colocated_sequential"}),
        modules,
    );
}

#[test]
fn items_that_do_not_divide_over_three_encoder_replicas_give_the_single_device_numbers() {
    // 2 micro-batches of 4 samples: 4 and 7 images dealt over 3 replicas by tokens, the
    // images of one sample split between replicas.
    let deal = vision_deal(2, 1, 3);
    let split = |p: &Vec<Vec<u32>>| p[0].iter().any(|s| p[1].contains(s));
    assert!(deal.iter().any(split), "{deal:?}");
    let modules = json!({
        "vision": at(json!({"dp": 3}), 0, 3),
        "projector": at(json!({"dp": 3}), 0, 3),
        "llm": at(json!({"tp": 2, "pp": 2, "dp": 1, "micro_batch_size": 4}), 3, 4),
    });
    parity(
        "non-colocated: vision and projector dp3 on 0-2, llm tp2 pp2 on 3-6",
        json!({"kind": "pipeline_1f1b"}),
        modules,
    );
}

#[test]
fn two_micro_batches_per_encoder_pass_in_a_pipeline_give_the_single_device_numbers() {
    let modules = json!({
        "vision": at(json!({"tp": 2, "dp": 2, "sequence_parallel": true}), 0, 4),
        "projector": at(json!({"dp": 4}), 0, 4),
        "llm": at(json!({"tp": 2, "pp": 2, "dp": 1, "micro_batch_size": 2}), 4, 4),
    });
    let schedule = json!({"kind": "pipeline_1f1b", "encoder_chunk": 2});
    let (g, _) = model();
    let p = lower_with(&g, schedule.clone(), modules.clone());
    assert_eq!(
        passes_run(&p)["vision"].len(),
        2,
        "4 micro-batches in 2 passes"
    );
    parity(
        "non-colocated 1f1b, encoder_chunk 2: vision tp2 sp dp2 and projector dp4 on 0-3, llm tp2 pp2 on 4-7",
        schedule,
        modules,
    );
}

#[test]
fn two_micro_batches_per_encoder_pass_colocated_give_the_single_device_numbers() {
    let modules = json!({
        "vision": at(json!({"cp": 2, "dp": 2}), 0, 4),
        "projector": at(json!({"dp": 4}), 0, 4),
        "llm": at(json!({"tp": 2, "cp": 2, "dp": 1, "sequence_parallel": true,
                         "micro_batch_size": 2}), 0, 4),
    });
    parity(
        "colocated chunked, encoder_chunk 2: vision cp2 dp2, projector dp4, llm tp2 cp2 sp",
        json!({"kind": "colocated_chunked", "encoder_chunk": 2}),
        modules,
    );
}

#[test]
fn one_encoder_pass_over_the_whole_step_gives_the_single_device_numbers() {
    let modules = json!({
        "vision": at(json!({"dp": 4}), 0, 4),
        "projector": at(json!({"tp": 2, "dp": 2}), 0, 4),
        "llm": at(json!({"tp": 2, "dp": 2, "micro_batch_size": 1}), 0, 4),
    });
    parity(
        "colocated three-phase: 8 images of 4 micro-batches in one pass over vision dp4",
        json!({"kind": "colocated_three_phase"}),
        modules,
    );
}

#[test]
fn a_pass_outside_the_step_or_a_pass_size_above_its_micro_batches_is_refused_with_the_reason() {
    let (g, cfg) = model();
    let program = lower_with(
        &g,
        json!({"kind": "colocated_sequential"}),
        json!({
            "vision": at(json!({"dp": 4}), 0, 4),
            "projector": at(json!({"dp": 4}), 0, 4),
            "llm": at(json!({"dp": 4, "micro_batch_size": 1}), 0, 4),
        }),
    );
    let init = Params::init(&cfg, SEED).unwrap();
    let batches = batches(&g, &cfg);
    let refused = |p: &Program| match run(p, &cfg, &init, &batches[..1], &opts(1)) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("the program runs"),
    };
    // 2 micro-batches, 2 passes: a forward of vision's pass 2 is outside the step.
    let mut far = program.clone();
    let ins = far.ranks[1]
        .instructions
        .iter_mut()
        .find_map(|i| match i {
            Instruction::Forward {
                module,
                micro_batch,
                ..
            } if module == "vision" => Some(micro_batch),
            _ => None,
        })
        .unwrap();
    *ins = 2;
    let e = refused(&far);
    assert!(
        e.contains(
            "rank 1: module `vision` runs 2 encoder passes, but an instruction names number 2"
        ),
        "{e}"
    );
    let mut big = program.clone();
    big.encoder_chunk = 3;
    let e = refused(&big);
    assert!(
        e.contains("encoder_chunk 3 is not between 1 and the 2"),
        "{e}"
    );
}
