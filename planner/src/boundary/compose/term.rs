//! The term language of one boundary's collective program in one direction, with its
//! ownership analysis and rewrite rules.
//!
//! Forward, the producer's last product leaves `partial` sums on every tp rank of its replica;
//! its reduction (`reduce-scatter` to sequence-parallel parts, or `all-reduce`) makes the rows
//! whole, and `deliver` brings whole rows to the ranks that need them. `reduce-deliver` sends
//! the partial sums themselves to the needers, which add them: the reduction folded into the
//! transfer. Backward, `grads` are whole at the destination's owners; `send-parts` brings them
//! to the producer's sequence-parallel owners, whose `all-gather` gives every tp rank all of
//! them, and `send-whole` brings them to every tp rank at once.

use egg::{define_language, rewrite, Analysis, DidMerge, EGraph, Id, Rewrite};

define_language! {
    pub enum Coll {
        "partial" = Partial([Id; 0]),
        "grads" = Grads([Id; 0]),
        "all-reduce" = AllReduce([Id; 1]),
        "reduce-scatter" = ReduceScatter([Id; 1]),
        "all-gather" = AllGather([Id; 1]),
        "deliver" = Deliver([Id; 1]),
        "reduce-deliver" = ReduceDeliver([Id; 1]),
        "send-parts" = SendParts([Id; 1]),
        "send-whole" = SendWhole([Id; 1]),
    }
}

/// Who holds the rows after a term, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Own {
    /// Forward: partial sums of every local row on every tp rank of the producer's replica.
    Partial,
    /// Forward: each row whole on the one tp rank of its sequence-parallel part.
    Parts,
    /// Forward: every row whole on every tp rank.
    Whole,
    /// Forward: every rank of the consumer holds the rows it needs.
    Needers,
    /// Backward: gradients whole on the consumer's ranks that needed the rows.
    Owners,
    /// Backward: each gradient row on the producer's tp rank of its sequence-parallel part.
    SourceParts,
    /// Backward: every gradient row on every tp rank of the producer's replica.
    SourceWhole,
    /// Not a program (an operator applied to rows in the wrong state).
    Invalid,
}

impl Own {
    /// The state after `node`, given its child's.
    pub fn after(node: &Coll, child: Option<Own>) -> Own {
        use Own::*;
        match (node, child) {
            (Coll::Partial(_), _) => Partial,
            (Coll::Grads(_), _) => Owners,
            (Coll::AllReduce(_), Some(Partial)) => Whole,
            (Coll::ReduceScatter(_), Some(Partial)) => Parts,
            (Coll::AllGather(_), Some(Parts)) => Whole,
            (Coll::AllGather(_), Some(SourceParts)) => SourceWhole,
            (Coll::Deliver(_), Some(Parts | Whole)) => Needers,
            (Coll::ReduceDeliver(_), Some(Partial)) => Needers,
            (Coll::SendParts(_), Some(Owners)) => SourceParts,
            (Coll::SendWhole(_), Some(Owners)) => SourceWhole,
            _ => Invalid,
        }
    }
}

/// The ownership analysis: every e-class's rows are in one state (rewrites preserve it).
/// `conflicts` counts merges of two different states: an unsound rewrite.
#[derive(Default)]
pub struct Ownership {
    pub conflicts: usize,
}

impl Analysis<Coll> for Ownership {
    type Data = Own;

    fn make(egraph: &mut EGraph<Coll, Self>, enode: &Coll, _id: Id) -> Own {
        let child = enode.children().first().map(|c| egraph[*c].data);
        Own::after(enode, child)
    }

    fn merge(&mut self, a: &mut Own, b: Own) -> DidMerge {
        // A sound rule only joins terms in one state; `Invalid` never wins.
        if *a == Own::Invalid && b != Own::Invalid {
            *a = b;
            return DidMerge(true, false);
        }
        if b != Own::Invalid && *a != b {
            self.conflicts += 1;
        }
        DidMerge(false, *a != b)
    }
}

pub type CollGraph = EGraph<Coll, Ownership>;

use egg::Language;

fn is(var: &'static str, own: Own) -> impl Fn(&mut CollGraph, Id, &egg::Subst) -> bool {
    let v: egg::Var = var.parse().expect("a pattern variable");
    move |g, _, subst| g[subst[v]].data == own
}

/// The named rules, each sound under the ownership analysis (`tests/compose.rs` checks each
/// alone).
pub fn rules() -> Vec<Rewrite<Coll, Ownership>> {
    vec![
        // An all-reduce is a reduce-scatter and an all-gather.
        rewrite!("split-all-reduce"; "(all-reduce ?x)" => "(all-gather (reduce-scatter ?x))"
            if is("?x", Own::Partial)),
        // Delivering slices of reduced rows = reducing straight onto the needers
        // (slice . all-reduce -> reduce-scatter, the scatter's parts being the needers' rows).
        rewrite!("fold-all-reduce"; "(deliver (all-reduce ?x))" => "(reduce-deliver ?x)"
            if is("?x", Own::Partial)),
        rewrite!("fold-reduce-scatter"; "(deliver (reduce-scatter ?x))" => "(reduce-deliver ?x)"
            if is("?x", Own::Partial)),
        // Sends to the part owners then their all-gather = sends to every tp rank.
        rewrite!("commute-gather"; "(all-gather (send-parts ?g))" => "(send-whole ?g)"
            if is("?g", Own::Owners)),
    ]
}
