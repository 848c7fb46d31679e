//! Whether a program computes the reference model: its modules, grids, batch and layer
//! splits, and that every instruction names a unit of its module.

use hetpar_ir::program::{Instruction, Program};

use super::rank::unit_of;
use super::shard::Unit;
use crate::reference::Config;
use crate::RuntimeError;

/// Checks that the program computes the reference model `cfg` on batches of `batch_size`.
pub fn check(program: &Program, cfg: &Config, batch_size: usize) -> Result<(), RuntimeError> {
    let mut problems = Vec::new();
    let units: Vec<Option<Unit>> = (0..program.modules.len())
        .map(|k| unit_of(program, k))
        .collect();
    let count = |f: &dyn Fn(&Unit) -> bool| units.iter().flatten().filter(|u| f(u)).count();
    let encoders = cfg.encoders();
    for (src, _) in &encoders {
        for (what, n) in [
            ("encoder", count(&|u| *u == Unit::Encoder(*src))),
            ("projector", count(&|u| *u == Unit::Projector(*src))),
        ] {
            if n != 1 {
                problems.push(format!("one {} {what} expected, found {n}", src.prefix()));
            }
        }
    }
    if count(&|u| *u == Unit::Llm) != 1 {
        problems.push("one language model expected".into());
    }
    for (m, unit) in program.modules.iter().zip(&units) {
        let who = &m.name;
        let Some(unit) = *unit else {
            problems.push(format!(
                "module `{who}`: the reference model has no {:?}",
                m.kind
            ));
            continue;
        };
        let grid = m.tp * m.cp * m.dp * m.pp;
        if grid as usize != m.ranks.len() || grid == 0 {
            problems.push(format!(
                "module `{who}`: {} ranks for tp x cp x dp x pp = {grid}",
                m.ranks.len()
            ));
        }
        if unit == Unit::Llm
            && (m.dp * m.micro_batch_size * program.micro_batches) as usize != batch_size
        {
            problems.push(format!(
                "module `{who}`: dp {} x micro-batch size {} x {} micro-batches is not the \
                 batch of {batch_size}",
                m.dp, m.micro_batch_size, program.micro_batches
            ));
        }
        let stack_divides = |s: &crate::reference::Stack| {
            let mut v = vec![
                ("heads", s.heads),
                ("key/value heads", s.kv_heads),
                ("FFN", s.ffn),
            ];
            v.extend(s.moe.map(|m| ("expert FFN", m.expert_ffn)));
            v
        };
        let (layers, divides): (usize, Vec<(&str, usize)>) = match unit {
            Unit::Encoder(s) | Unit::Projector(s) if cfg.encoder(s).is_none() => {
                problems.push(format!(
                    "module `{who}`: the model has no {} encoder",
                    s.prefix()
                ));
                continue;
            }
            Unit::Encoder(s) => {
                let e = cfg.encoder(s).expect("checked above").stack;
                (e.layers, stack_divides(&e))
            }
            Unit::Projector(s) => (
                0,
                vec![(
                    "hidden",
                    cfg.encoder(s).expect("checked above").projector_hidden,
                )],
            ),
            Unit::Llm => (cfg.llm.stack.layers, stack_divides(&cfg.llm.stack)),
        };
        if m.chunk_layers.len() != (m.pp * m.vpp) as usize
            || (layers > 0 && m.chunk_layers.iter().sum::<u32>() as usize != layers)
        {
            problems.push(format!(
                "module `{who}`: chunk layers {:?} do not split its {layers} blocks into pp x vpp",
                m.chunk_layers
            ));
        }
        let tp = m.tp as usize;
        for (what, n) in divides {
            if n % tp != 0 {
                problems.push(format!(
                    "module `{who}`: tp {tp} does not divide its {what} {n}"
                ));
            }
        }
        let moe = match unit {
            Unit::Llm => cfg.llm.stack.moe,
            _ => None,
        };
        check_ep(m, moe, &mut problems);
        if matches!(unit, Unit::Projector(_)) && (m.pp != 1 || m.cp != 1) {
            problems.push(format!("module `{who}`: a projector runs with pp = cp = 1"));
        }
    }
    check_units(program, &units, &mut problems);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(RuntimeError::InvalidProgram(problems.join("; ")))
    }
}

/// Checks that module `m`'s expert parallelism splits its experts (`moe`, if it has them)
/// and its dp x cp group.
fn check_ep(
    m: &hetpar_ir::program::ModuleProgram,
    moe: Option<crate::reference::arch::Moe>,
    problems: &mut Vec<String>,
) {
    let (who, ep) = (&m.name, m.ep);
    if ep <= 1 {
        if ep == 0 {
            problems.push(format!("module `{who}`: ep 0"));
        }
        return;
    }
    let Some(moe) = moe else {
        problems.push(format!(
            "module `{who}`: ep {ep} needs a mixture of experts, which it has not"
        ));
        return;
    };
    if !moe.experts.is_multiple_of(ep as usize) {
        problems.push(format!(
            "module `{who}`: ep {ep} does not divide its {} experts",
            moe.experts
        ));
    }
    if !(m.dp * m.cp).is_multiple_of(ep) {
        problems.push(format!(
            "module `{who}`: ep {ep} does not divide dp x cp = {} (the ep groups are carved \
             out of the dp x cp group)",
            m.dp * m.cp
        ));
    }
}

/// Checks the encoder passes and that every instruction names a unit of its module or
/// boundary: a pass for an encoder or projector, a micro-batch for the language model.
fn check_units(program: &Program, units: &[Option<Unit>], problems: &mut Vec<String>) {
    let (m, k) = (program.micro_batches, program.encoder_chunk);
    if k == 0 || k > m {
        problems.push(format!(
            "encoder_chunk {k} is not between 1 and the {m} micro-batches of a step"
        ));
        return;
    }
    let passes = program.passes().count();
    let limit = |name: &str| -> Option<(u32, &'static str)> {
        let i = program.modules.iter().position(|x| x.name == name)?;
        Some(match units.get(i).copied().flatten() {
            Some(Unit::Llm) | None => (m, "micro-batches"),
            _ => (passes, "encoder passes"),
        })
    };
    for r in &program.ranks {
        for ins in &r.instructions {
            let (module, j) = match ins {
                Instruction::Forward {
                    module,
                    micro_batch,
                    ..
                }
                | Instruction::Backward {
                    module,
                    micro_batch,
                    ..
                }
                | Instruction::SendActivation {
                    module,
                    micro_batch,
                    ..
                }
                | Instruction::RecvActivation {
                    module,
                    micro_batch,
                    ..
                }
                | Instruction::SendGradient {
                    module,
                    micro_batch,
                    ..
                }
                | Instruction::RecvGradient {
                    module,
                    micro_batch,
                    ..
                } => (module, *micro_batch),
                _ => continue,
            };
            if let Some((n, what)) = limit(module).filter(|&(n, _)| j >= n) {
                problems.push(format!(
                    "rank {}: module `{module}` runs {n} {what}, but an instruction names \
                     number {j}",
                    r.rank
                ));
                return;
            }
        }
    }
}
