//! What a rank holds of a pass: an encoder's items dealt exactly as the planner deals the
//! model's (so synthesized row lists address them), and context- and sequence-parallel
//! splits that cover every row once, also where the sizes do not divide.

use hetpar_ir::load_model;
use hetpar_ir::shard::{pass_deal, ItemRef, Passes};
use hetpar_runtime::exec::shard::{pass_items, sharding, Place, Unit, Work};
use hetpar_runtime::reference::batch::EncoderLayout;
use hetpar_runtime::reference::params::Source;
use hetpar_runtime::reference::{Batch, Config};

fn model() -> hetpar_ir::ModelGraph {
    let p = format!(
        "{}/../examples/models/reference-tiny.json",
        env!("CARGO_MANIFEST_DIR")
    );
    load_model(&std::fs::read_to_string(&p).unwrap()).unwrap().0
}

#[test]
fn a_pass_deals_the_batchs_items_as_the_planner_deals_the_models() {
    let g = model();
    let cfg = Config::from_model(&g).unwrap();
    let batch = Batch::for_model(&g, &cfg, 3).unwrap();
    let items = batch.layout(&cfg).unwrap().encoder(Source::Vision);
    let vision = g.modules().iter().find(|m| m.name == "vision").unwrap().id;
    let n = g.data().global_batch;
    let mut splits = 0;
    for (m, k) in [(8, 1), (4, 1), (4, 2), (2, 2), (8, 8)] {
        let passes = Passes::new(m, k);
        for dp in 1..=5 {
            for p in 0..passes.count() {
                let want = pass_deal(&g, vision, passes, dp, p);
                for d in 0..dp {
                    let got = pass_items(&items, passes, n, dp, d, p);
                    assert_eq!(
                        got, want[d as usize],
                        "m {m} k {k} dp {dp} pass {p} replica {d}"
                    );
                }
                // A sample whose items two replicas share.
                let owner = |s: u32| -> Vec<usize> {
                    (0..want.len())
                        .filter(|&d| want[d].iter().any(|i| i.sample == s))
                        .collect()
                };
                splits += (0..n).filter(|&s| owner(s).len() > 1).count();
            }
        }
    }
    assert!(splits > 0, "some deal splits a sample's items");
}

/// Every (sample, row) the rows of `place` over all cp and tp ranks hold, counted.
fn coverage(
    unit: Unit,
    items: Option<&EncoderLayout>,
    seq: usize,
    work: &Work,
    cp: usize,
    tp: usize,
) -> Vec<(u32, u64)> {
    let mut all = Vec::new();
    for c in 0..cp {
        for t in 0..tp {
            let place = Place {
                cp,
                c,
                tp,
                t,
                sp: true,
            };
            all.extend(
                sharding(unit, items, seq, work, place)
                    .mine()
                    .iter()
                    .map(|r| (r.sample, r.row)),
            );
        }
    }
    all.sort_unstable();
    all
}

#[test]
fn an_encoders_dealt_items_split_by_cp_blocks_and_sp_parts_cover_each_row_once() {
    // Sample 0: items of 5 and 8 patches; sample 1: one of 3.
    let items = EncoderLayout {
        images: vec![0..5, 5..13, 13..16],
        sample_images: vec![0..2, 2..3],
    };
    // A replica that got the second item of sample 0 and the item of sample 1.
    let work = Work::Items(vec![
        ItemRef {
            sample: 0,
            item: 1,
            tokens: 8,
        },
        ItemRef {
            sample: 1,
            item: 0,
            tokens: 3,
        },
    ]);
    let place = Place {
        cp: 2,
        c: 0,
        tp: 1,
        t: 0,
        sp: false,
    };
    let sh = sharding(Unit::Encoder(Source::Vision), Some(&items), 0, &work, place);
    // Chunks of 8 in 4: 0..2 and 6..8 on cp rank 0; of 3: 0..0 and 2..3.
    let rows: Vec<(u32, u64, u32)> = sh
        .local()
        .iter()
        .map(|r| (r.sample, r.row, r.patch))
        .collect();
    assert_eq!(
        rows,
        vec![(0, 5, 5), (0, 6, 6), (0, 11, 11), (0, 12, 12), (1, 2, 15)],
        "rows numbered within their sample (the first item's 5 before), patches in the batch"
    );
    let got = coverage(Unit::Encoder(Source::Vision), Some(&items), 0, &work, 2, 3);
    let mut want: Vec<(u32, u64)> = (5..13)
        .map(|r| (0, r))
        .chain((0..3).map(|r| (1, r)))
        .collect();
    want.sort_unstable();
    assert_eq!(got, want);
}

#[test]
fn the_language_models_samples_split_by_cp_and_per_sample_sp_parts_where_they_do_not_divide() {
    // A sequence of 10 over cp 2 (CP blocks of 2, 3, 2, 3) and tp 3: parts of 5 local rows.
    let work = Work::Samples(2..4);
    let got = coverage(Unit::Llm, None, 10, &work, 2, 3);
    let want: Vec<(u32, u64)> = (2..4).flat_map(|s| (0..10).map(move |p| (s, p))).collect();
    assert_eq!(got, want);
    let place = Place {
        cp: 2,
        c: 1,
        tp: 3,
        t: 2,
        sp: true,
    };
    let sh = sharding(Unit::Llm, None, 10, &work, place);
    let mine: Vec<(u32, u32)> = sh.mine().iter().map(|r| (r.sample, r.pos)).collect();
    // cp rank 1 holds positions 2..5 and 5..7 of each sample; tp part 2 of 5 is its last row.
    assert_eq!(mine, vec![(2, 6), (3, 6)]);
}
