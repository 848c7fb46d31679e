//! hetpar-codegen: a lowered program as a Rust crate (askama templates in `templates/`).
//!
//! The crate holds every rank's instructions as straight-line calls into `hetpar-runtime`
//! (`src/main.rs`), each boundary's fused transfer per unit (its destination's encoder pass or
//! micro-batch) as a constant table, the program's header (module grids, boundaries, ranks:
//! `program.json`), the model (`model.json`), a launch script and a SLURM batch script. It sees
//! only the IR's program, never the planner.

use askama::Template;
use hetpar_ir::json::to_canonical_json;
use hetpar_ir::program::{Instruction, Program, Rows, Transfer};

/// What code generation refuses.
#[derive(Debug, thiserror::Error)]
pub enum CodegenError {
    /// The program names a module or boundary it does not define, or lacks a unit's
    /// transfers.
    #[error("invalid program: {0}")]
    InvalidProgram(String),
    /// A template failed to render (a bug).
    #[error("internal error rendering {0}: {1}")]
    Template(&'static str, askama::Error),
}

/// One file of the generated crate, by its path inside the output directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct File {
    pub path: &'static str,
    pub contents: String,
}

struct RankCode {
    rank: u32,
    lines: Vec<String>,
}

struct Table {
    name: String,
    boundary: String,
    direction: &'static str,
    micro_batch: u32,
    ops: Vec<String>,
}

#[derive(Template)]
#[template(path = "main.rs", escape = "none")]
struct Main<'a> {
    model: &'a str,
    cluster: &'a str,
    ranks: Vec<RankCode>,
    tables: Vec<Table>,
}

#[derive(Template)]
#[template(path = "Cargo.toml", escape = "none")]
struct Manifest<'a> {
    model: &'a str,
    crate_name: String,
    runtime_path: &'a str,
}

#[derive(Template)]
#[template(path = "launch.sh", escape = "none")]
struct Launch<'a> {
    model: &'a str,
    ranks: usize,
}

#[derive(Template)]
#[template(path = "sbatch.sh", escape = "none")]
struct Sbatch<'a> {
    model: &'a str,
    ranks: usize,
    crate_name: &'a str,
}

fn rows(r: &[Rows]) -> String {
    let items: Vec<String> = r
        .iter()
        .map(|(s, x)| format!("({s}, {}, {})", x.start, x.end))
        .collect();
    format!("&[{}]", items.join(", "))
}

fn ranks(r: &[u32]) -> String {
    let items: Vec<String> = r.iter().map(u32::to_string).collect();
    format!("&[{}]", items.join(", "))
}

fn op(t: &Transfer) -> String {
    match t {
        Transfer::Send { src, dst, rows: r } => format!("Op::Send({src}, {dst}, {})", rows(r)),
        Transfer::Broadcast {
            root,
            group,
            rows: r,
        } => format!("Op::Broadcast({root}, {}, {})", ranks(group), rows(r)),
        Transfer::AllGather { group, parts } => {
            let parts: Vec<String> = parts
                .iter()
                .map(|(o, r)| format!("({o}, {})", rows(r)))
                .collect();
            format!("Op::AllGather({}, &[{}])", ranks(group), parts.join(", "))
        }
        Transfer::Reduce { srcs, dst, rows: r } => {
            format!("Op::Reduce({}, {dst}, {})", ranks(srcs), rows(r))
        }
    }
}

/// One boundary transfer table: boundary `boundary` (by index), its direction and unit. The
/// field order is the tables' order in the generated code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct TableKey {
    boundary: usize,
    forward: bool,
    unit: u32,
}

fn table_name(b: usize, forward: bool, j: u32) -> String {
    let dir = if forward { "FORWARD" } else { "BACKWARD" };
    format!("BOUNDARY_{b}_{dir}_{j}")
}

/// The crate's files for `program`; `model_json` is the model it was lowered for,
/// `runtime_path` the `hetpar-runtime` crate's directory as the generated `Cargo.toml` should
/// name it (relative to the output directory, or absolute). The same inputs give the same
/// bytes.
pub fn emit(
    program: &Program,
    model_json: &str,
    runtime_path: &str,
) -> Result<Vec<File>, CodegenError> {
    let invalid = CodegenError::InvalidProgram;
    let module = |name: &str| {
        program
            .modules
            .iter()
            .position(|m| m.name == name)
            .ok_or_else(|| invalid(format!("no module `{name}`")))
    };
    let boundary = |name: &str| {
        program
            .boundaries
            .iter()
            .position(|b| b.name == name)
            .ok_or_else(|| invalid(format!("no boundary `{name}`")))
    };
    let mut used: std::collections::BTreeSet<TableKey> = std::collections::BTreeSet::new();
    let mut rank_code = Vec::with_capacity(program.ranks.len());
    for rp in &program.ranks {
        let mut lines = Vec::with_capacity(rp.instructions.len());
        for ins in &rp.instructions {
            lines.push(match ins {
                Instruction::Forward {
                    module: m,
                    stage,
                    chunk,
                    micro_batch,
                } => format!(
                    "r.forward({}, {stage}, {chunk}, {micro_batch})?; // {m}",
                    module(m)?
                ),
                Instruction::Backward {
                    module: m,
                    stage,
                    chunk,
                    micro_batch,
                } => format!(
                    "r.backward({}, {stage}, {chunk}, {micro_batch})?; // {m}",
                    module(m)?
                ),
                Instruction::SendActivation {
                    module: m,
                    micro_batch,
                    chunk,
                    to,
                } => format!(
                    "r.send_activation({}, {micro_batch}, {chunk}, {to})?; // {m}",
                    module(m)?
                ),
                Instruction::RecvActivation {
                    module: m,
                    micro_batch,
                    chunk,
                    from,
                } => format!(
                    "r.recv_activation({}, {micro_batch}, {chunk}, {from})?; // {m}",
                    module(m)?
                ),
                Instruction::SendGradient {
                    module: m,
                    micro_batch,
                    chunk,
                    to,
                } => format!(
                    "r.send_gradient({}, {micro_batch}, {chunk}, {to})?; // {m}",
                    module(m)?
                ),
                Instruction::RecvGradient {
                    module: m,
                    micro_batch,
                    chunk,
                    from,
                } => format!(
                    "r.recv_gradient({}, {micro_batch}, {chunk}, {from})?; // {m}",
                    module(m)?
                ),
                Instruction::BoundaryForward {
                    boundary: b,
                    micro_batch,
                } => {
                    let i = boundary(b)?;
                    used.insert(TableKey {
                        boundary: i,
                        forward: true,
                        unit: *micro_batch,
                    });
                    format!(
                        "r.boundary_forward({i}, {micro_batch}, &transfers({}))?;",
                        table_name(i, true, *micro_batch)
                    )
                }
                Instruction::BoundaryBackward {
                    boundary: b,
                    micro_batch,
                } => {
                    let i = boundary(b)?;
                    used.insert(TableKey {
                        boundary: i,
                        forward: false,
                        unit: *micro_batch,
                    });
                    format!(
                        "r.boundary_backward({i}, {micro_batch}, &transfers({}))?;",
                        table_name(i, false, *micro_batch)
                    )
                }
                Instruction::GradSync { module: m, stage } => {
                    format!("r.grad_sync({}, {stage})?; // {m}", module(m)?)
                }
                Instruction::OptimizerStep => "r.optimizer_step()?;".to_string(),
            });
        }
        rank_code.push(RankCode {
            rank: rp.rank,
            lines,
        });
    }
    let mut tables = Vec::with_capacity(used.len());
    for TableKey {
        boundary: b,
        forward,
        unit: j,
    } in used
    {
        let bp = &program.boundaries[b];
        let per_mb = if forward { &bp.forward } else { &bp.backward };
        let ops = per_mb.get(j as usize).ok_or_else(|| {
            invalid(format!(
                "boundary `{}` has no unit {j} (encoder pass or micro-batch)",
                bp.name
            ))
        })?;
        tables.push(Table {
            name: table_name(b, forward, j),
            boundary: bp.name.clone(),
            direction: if forward { "forward" } else { "backward" },
            micro_batch: j,
            ops: ops.iter().map(op).collect(),
        });
    }
    // The header: what the code needs besides its own instructions and tables.
    let mut header = program.clone();
    for r in &mut header.ranks {
        r.instructions.clear();
    }
    for b in &mut header.boundaries {
        b.forward.clear();
        b.backward.clear();
    }
    let main = Main {
        model: &program.model,
        cluster: &program.cluster,
        ranks: rank_code,
        tables,
    };
    let crate_name: String = format!("hetpar-generated-{}", program.model)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let sbatch = Sbatch {
        model: &program.model,
        ranks: program.ranks.len(),
        crate_name: &crate_name,
    };
    let manifest = Manifest {
        model: &program.model,
        crate_name: crate_name.clone(),
        runtime_path,
    };
    let launch = Launch {
        model: &program.model,
        ranks: program.ranks.len(),
    };
    let render = |what: &'static str, t: &dyn askama::DynTemplate| {
        t.dyn_render()
            .map(|mut s| {
                if !s.ends_with('\n') {
                    s.push('\n');
                }
                s
            })
            .map_err(|e| CodegenError::Template(what, e))
    };
    Ok(vec![
        File {
            path: "Cargo.toml",
            contents: render("Cargo.toml", &manifest)?,
        },
        File {
            path: "src/main.rs",
            contents: render("src/main.rs", &main)?,
        },
        File {
            path: "program.json",
            contents: to_canonical_json(&header),
        },
        File {
            path: "model.json",
            contents: model_json.to_string(),
        },
        File {
            path: "launch.sh",
            contents: render("launch.sh", &launch)?,
        },
        File {
            path: "sbatch.sh",
            contents: render("sbatch.sh", &sbatch)?,
        },
    ])
}
