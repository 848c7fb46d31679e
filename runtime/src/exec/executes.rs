//! Which layout field values of a program this runtime executes. A plan may ask for what the
//! cost model prices but the runtime does not run (TP communication overlap, CP by a ring of
//! exchanges); the runtime refuses such a program before any work, naming the module and the
//! field, rather than run something else under its name.

use hetpar_ir::layout::CpComm;
use hetpar_ir::program::Program;

use crate::RuntimeError;

/// The CP communication kind the runtime executes: a unit's keys and values all-gathered
/// whole over the cp group, their gradients reduce-scattered back (`block.rs`, `comm.rs`).
pub const CP_COMM: CpComm = CpComm::AllGather;

/// Refuses a program asking for a field value the runtime does not execute, naming every one.
pub fn check_executed(program: &Program) -> Result<(), RuntimeError> {
    let mut problems = Vec::new();
    for m in &program.modules {
        if m.tp_comm_overlap {
            problems.push(format!(
                "module `{}`: tp_comm_overlap = true (its tensor-parallel collectives run \
                 between the products they serve, never overlapped with them)",
                m.name
            ));
        }
        // At cp 1 there is no exchange, so the kind means nothing.
        if m.cp > 1 && m.cp_comm != CP_COMM {
            problems.push(format!(
                "module `{}`: cp_comm = \"{}\" (it all-gathers keys and values over the cp \
                 group: cp_comm = \"{}\")",
                m.name,
                m.cp_comm.as_str(),
                CP_COMM.as_str()
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(RuntimeError::NotExecuted(problems.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(llm_fields: &str) -> Program {
        let text = format!(
            r#"{{"kind": "program", "format_version": 1, "model": "m", "cluster": "c",
            "micro_batches": 1, "boundaries": [], "ranks": [],
            "modules": [{{"name": "llm", "kind": "language_model", "tp": 2, "cp": 2, "pp": 1,
                "dp": 1, "vpp": 1, "sequence_parallel": true, "micro_batch_size": 1,
                "chunk_layers": [2], "ranks": [0, 1, 2, 3]{llm_fields}}}]}}"#
        );
        hetpar_ir::load_program(&text).expect("a valid program")
    }

    #[test]
    fn a_program_without_the_fields_means_what_the_runtime_executes() {
        assert_eq!(check_executed(&program("")), Ok(()));
        assert_eq!(
            check_executed(&program(r#", "cp_comm": "all_gather""#)),
            Ok(())
        );
    }

    #[test]
    fn tp_comm_overlap_and_a_cp_ring_are_refused_naming_module_and_field() {
        let e = check_executed(&program(r#", "tp_comm_overlap": true, "cp_comm": "ring""#))
            .expect_err("neither is executed")
            .to_string();
        assert!(e.contains("module `llm`: tp_comm_overlap = true"), "{e}");
        assert!(e.contains("module `llm`: cp_comm = \"ring\""), "{e}");
    }
}
