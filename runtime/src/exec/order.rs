//! Whether a program's point-to-point messages between each pair of ranks come in the same
//! order on both sides. NCCL matches messages by order, not by tag (`--nccl`), so a program
//! whose ranks send and receive a pair's messages in different orders would pair the wrong
//! ones; the TCP and thread transports match by tag and do not need this.

use hetpar_ir::program::{Instruction, Program};

/// One message: what it carries, as both sides name it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Msg {
    Pipeline {
        gradient: bool,
        module: String,
        micro_batch: u32,
        chunk: u32,
    },
    Boundary {
        boundary: String,
        micro_batch: u32,
        forward: bool,
        op: usize,
        part: usize,
    },
}

/// An ordered pair of ranks: messages from `from` to `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Pair {
    from: u32,
    to: u32,
}

/// Per ordered pair, the messages in the sender's order and in the receiver's.
type Pairs = std::collections::BTreeMap<Pair, (Vec<Msg>, Vec<Msg>)>;

fn boundary_messages(
    program: &Program,
    me: u32,
    boundary: &str,
    micro_batch: u32,
    forward: bool,
    pairs: &mut Pairs,
) -> Result<(), String> {
    let b = program
        .boundaries
        .iter()
        .find(|b| b.name == boundary)
        .ok_or_else(|| format!("no boundary `{boundary}`"))?;
    let ops = if forward { &b.forward } else { &b.backward };
    let ops = ops.get(micro_batch as usize).ok_or_else(|| {
        format!("boundary `{boundary}` has no unit {micro_batch} (encoder pass or micro-batch)")
    })?;
    let msg = |op, part| Msg::Boundary {
        boundary: boundary.to_string(),
        micro_batch,
        forward,
        op,
        part,
    };
    for (k, op) in ops.iter().enumerate() {
        let roles = op.roles(me);
        for (to, _, part) in roles.sends {
            for r in to {
                pairs
                    .entry(Pair { from: me, to: r })
                    .or_default()
                    .0
                    .push(msg(k, part));
            }
        }
        for (from, _, part) in roles.receives {
            pairs
                .entry(Pair { from, to: me })
                .or_default()
                .1
                .push(msg(k, part));
        }
        for (from, _) in roles.adds {
            pairs
                .entry(Pair { from, to: me })
                .or_default()
                .1
                .push(msg(k, 0));
        }
    }
    Ok(())
}

/// `Ok` when, for every pair of ranks, the receiver takes the sender's messages in the order
/// they are sent; else the first pair that does not, and where.
pub fn check_pair_order(program: &Program) -> Result<(), String> {
    let mut pairs = Pairs::new();
    for rp in &program.ranks {
        let me = rp.rank;
        for ins in &rp.instructions {
            let pipe = |gradient, module: &String, micro_batch: &u32, chunk: &u32| Msg::Pipeline {
                gradient,
                module: module.clone(),
                micro_batch: *micro_batch,
                chunk: *chunk,
            };
            match ins {
                Instruction::SendActivation {
                    module,
                    micro_batch,
                    chunk,
                    to,
                } => pairs
                    .entry(Pair { from: me, to: *to })
                    .or_default()
                    .0
                    .push(pipe(false, module, micro_batch, chunk)),
                Instruction::SendGradient {
                    module,
                    micro_batch,
                    chunk,
                    to,
                } => pairs
                    .entry(Pair { from: me, to: *to })
                    .or_default()
                    .0
                    .push(pipe(true, module, micro_batch, chunk)),
                Instruction::RecvActivation {
                    module,
                    micro_batch,
                    chunk,
                    from,
                } => pairs
                    .entry(Pair {
                        from: *from,
                        to: me,
                    })
                    .or_default()
                    .1
                    .push(pipe(false, module, micro_batch, chunk)),
                Instruction::RecvGradient {
                    module,
                    micro_batch,
                    chunk,
                    from,
                } => pairs
                    .entry(Pair {
                        from: *from,
                        to: me,
                    })
                    .or_default()
                    .1
                    .push(pipe(true, module, micro_batch, chunk)),
                Instruction::BoundaryForward {
                    boundary,
                    micro_batch,
                } => boundary_messages(program, me, boundary, *micro_batch, true, &mut pairs)?,
                Instruction::BoundaryBackward {
                    boundary,
                    micro_batch,
                } => boundary_messages(program, me, boundary, *micro_batch, false, &mut pairs)?,
                _ => {}
            }
        }
    }
    for (Pair { from, to }, (sent, received)) in &pairs {
        if sent != received {
            let at = sent
                .iter()
                .zip(received)
                .position(|(a, b)| a != b)
                .unwrap_or(sent.len().min(received.len()));
            return Err(format!(
                "rank {from} sends rank {to} {} messages and rank {to} receives {}; they \
                 first differ at message {at}: sent {:?}, received {:?} (NCCL matches \
                 point-to-point messages by order)",
                sent.len(),
                received.len(),
                sent.get(at),
                received.get(at)
            ));
        }
    }
    Ok(())
}
