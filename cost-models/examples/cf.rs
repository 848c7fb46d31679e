fn main() {
    let a: Vec<String> = std::env::args().collect();
    let m = hetpar_ir::load_model(&std::fs::read_to_string(&a[1]).unwrap())
        .unwrap()
        .0;
    let c = hetpar_ir::load_cluster(&std::fs::read_to_string(&a[2]).unwrap()).unwrap();
    let mut pf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&a[3]).unwrap()).unwrap();
    for k in [1u32, 2, 3, 5, 30] {
        pf["schedule"]["encoder_chunk"] = serde_json::json!(k);
        for comm in ["ring", "all_gather"] {
            pf["modules"]["llm"]["layout"]["cp_comm"] = serde_json::json!(comm);
            let p = hetpar_ir::load_plan(&pf.to_string(), &m, &c).unwrap().0;
            let o = hetpar_cost::Options::default();
            let q = hetpar_cost::estimate_quick(&m, &c, &p, &o);
            let e = hetpar_cost::estimate(&m, &c, &p, &o).unwrap();
            println!(
                "k {k} {comm}: quick {:?} sim {:.3}",
                q.time, e.iteration_time_s
            );
        }
    }
}
