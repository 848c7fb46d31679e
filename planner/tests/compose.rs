//! The boundary composition's e-graph: each rule alone keeps the rows' ownership and fires
//! only where the analysis allows it; extraction is exact and reports its limit; on the
//! example plans the chosen program never costs more than the direct one, and strictly less
//! where a tensor-parallel projector shares a node with the ranks that need its rows.

use egg::{RecExpr, Runner};
use hetpar_ir::{load_cluster, load_model, load_plan};
use hetpar_planner::boundary::compose::extract::{extract, Stop};
use hetpar_planner::boundary::compose::term::{rules, Coll, CollGraph, Own, Ownership};
use hetpar_planner::boundary::{synthesize_all, Limits};

/// Runs `rules` on `term`: the root's state, whether any fired, and the analysis's
/// conflicts (a rewrite that joined rows in two different states).
fn run(rules: &[egg::Rewrite<Coll, Ownership>], term: &str) -> (Own, bool, usize) {
    let start: RecExpr<Coll> = term.parse().unwrap();
    let runner = Runner::<Coll, _>::default()
        .with_expr(&start)
        .with_iter_limit(4)
        .run(rules);
    let fired = runner.iterations.iter().any(|i| !i.applied.is_empty());
    let root = runner.roots[0];
    (
        runner.egraph[root].data,
        fired,
        runner.egraph.analysis.conflicts,
    )
}

/// The state of `term`, then [`run`] of the rule named `rule` alone.
fn rewrite_alone(rule: &str, term: &str) -> (Own, Own, bool, usize) {
    let only: Vec<_> = rules()
        .into_iter()
        .filter(|r| r.name.as_str() == rule)
        .collect();
    assert_eq!(only.len(), 1, "no rule {rule}");
    let mut g = CollGraph::default();
    let id = g.add_expr(&term.parse().unwrap());
    let (after, fired, conflicts) = run(&only, term);
    (g[id].data, after, fired, conflicts)
}

#[test]
fn the_analysis_catches_an_unsound_rule() {
    // An all-reduce is not a reduce-scatter: every rank ends with every row, not one part.
    let wrong = vec![egg::rewrite!("wrong"; "(all-reduce ?x)" => "(reduce-scatter ?x)")];
    let (_, fired, conflicts) = run(&wrong, "(all-reduce (partial))");
    assert!(
        fired && conflicts > 0,
        "the analysis let an unsound rewrite through"
    );
}

#[test]
fn each_rule_alone_keeps_the_ownership_where_its_analysis_allows_it() {
    for (rule, lhs, state) in [
        ("split-all-reduce", "(all-reduce (partial))", Own::Whole),
        (
            "fold-all-reduce",
            "(deliver (all-reduce (partial)))",
            Own::Needers,
        ),
        (
            "fold-reduce-scatter",
            "(deliver (reduce-scatter (partial)))",
            Own::Needers,
        ),
        (
            "commute-gather",
            "(all-gather (send-parts (grads)))",
            Own::SourceWhole,
        ),
    ] {
        let (before, after, fired, conflicts) = rewrite_alone(rule, lhs);
        assert!(fired, "{rule} does not fire on {lhs}");
        assert_eq!(before, state, "{lhs}");
        assert_eq!(after, state, "{rule} changed who holds the rows");
        assert_eq!(conflicts, 0, "{rule} joined rows in two different states");
    }
}

#[test]
fn no_rule_fires_on_rows_in_the_wrong_state() {
    // Gradients are whole, not partial sums: nothing may fold a reduction into their transfer,
    // and forward rows at their part owners are not backward gradients to commute.
    for (rule, term) in [
        ("split-all-reduce", "(all-reduce (grads))"),
        ("fold-all-reduce", "(deliver (all-reduce (grads)))"),
        ("fold-reduce-scatter", "(deliver (reduce-scatter (grads)))"),
        ("commute-gather", "(all-gather (send-parts (partial)))"),
    ] {
        let (_, _, fired, _) = rewrite_alone(rule, term);
        assert!(!fired, "{rule} fired on {term}");
    }
}

/// Prices: a fold costs 3, the direct program's reduce-scatter 2 and delivery 2.
fn toy_cost(n: &Coll, child: Option<Own>) -> f64 {
    match (n, child) {
        (Coll::Partial(_) | Coll::Grads(_), _) => 0.0,
        (Coll::ReduceScatter(_), Some(Own::Partial)) => 2.0,
        (Coll::Deliver(_), Some(Own::Parts)) => 2.0,
        (Coll::ReduceDeliver(_), Some(Own::Partial)) => 3.0,
        _ => f64::INFINITY,
    }
}

fn saturated(term: &str) -> (CollGraph, egg::Id) {
    let start: RecExpr<Coll> = term.parse().unwrap();
    let runner = Runner::default().with_expr(&start).run(&rules());
    (runner.egraph, runner.roots[0])
}

#[test]
fn extraction_finds_the_cheapest_program_and_says_when_its_limit_stopped_it() {
    let (g, root) = saturated("(deliver (reduce-scatter (partial)))");
    let best = extract(&g, root, &toy_cost, 100).expect("a program");
    assert_eq!(best.term.to_string(), "(reduce-deliver partial)");
    assert_eq!(best.cost, 3.0);
    assert_eq!(best.stop, Stop::Exhausted);
    // With the fold dearer than the direct program, the direct one stays.
    let dear = |n: &Coll, c: Option<Own>| match n {
        Coll::ReduceDeliver(_) => 5.0,
        _ => toy_cost(n, c),
    };
    let best = extract(&g, root, &dear, 100).expect("a program");
    assert_eq!(best.term.to_string(), "(deliver (reduce-scatter partial))");
    assert_eq!(best.cost, 4.0);
    let cut = extract(&g, root, &toy_cost, 1).expect("a program");
    assert_eq!(cut.stop, Stop::SelectionLimit);
    assert_eq!(cut.selections, 1);
}

fn example(name: &str) -> String {
    std::fs::read_to_string(format!("{}/../examples/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn on_the_example_plans_the_chosen_program_never_costs_more_and_folds_where_it_pays() {
    // (plan, model, cluster, whether a composed program is strictly cheaper: `None` where
    // there is nothing to compose)
    let cases = [
        ("llava-1.5-7b-colocated-8", "llava-1.5-7b", "h100-8", None),
        // Projector tp 2 on ranks of the node apart from the language model's: its partials
        // go straight to the language model's ranks.
        (
            "llava-1.5-7b-noncolocated-8",
            "llava-1.5-7b",
            "h100-8",
            Some(true),
        ),
        // Each image's rows fall in half of the language model's sequence-parallel parts:
        // folded, two ranks would take every partial; reduce-scatter then deliver stays.
        (
            "llava-1.5-7b-tp-projector-colocated-8",
            "llava-1.5-7b",
            "h100-8",
            Some(false),
        ),
        (
            "reference-tiny-colocated-4",
            "reference-tiny",
            "h100-8",
            None,
        ),
        (
            "reference-tiny-noncolocated-8",
            "reference-tiny",
            "h100-8",
            Some(true),
        ),
        ("tiny-uneven-colocated-8", "tiny-uneven", "h100-8", None),
        (
            "vision-audio-7b-colocated-64",
            "vision-audio-7b",
            "h100-64",
            Some(true),
        ),
        (
            "vit6b-70b-32k-noncolocated-1024",
            "vit6b-70b-32k",
            "h100-1024",
            Some(false),
        ),
    ];
    for (plan, model, cluster, projector) in cases {
        let m = load_model(&example(&format!("models/{model}.json")))
            .unwrap()
            .0;
        let c = load_cluster(&example(&format!("clusters/{cluster}.json"))).unwrap();
        let p = load_plan(&example(&format!("plans/{plan}.json")), &m, &c)
            .unwrap()
            .0;
        let mut cheaper = false;
        for b in synthesize_all(&m, &c, &p, Limits::default(), None) {
            for r in [&b.forward, &b.backward] {
                let direct = r.egraph.direct_time_s;
                assert!(
                    r.time_s <= direct,
                    "{plan} {}: {} > {direct}",
                    b.name,
                    r.time_s
                );
                cheaper |= r.time_s < direct * (1.0 - 1e-9);
            }
        }
        match projector {
            // Across the network partial sums would cross it tp times: the direct program
            // stays there too.
            Some(expected) => assert_eq!(cheaper, expected, "{plan}"),
            None => assert!(!cheaper, "{plan}: nothing to compose, nothing cheaper"),
        }
    }
}
