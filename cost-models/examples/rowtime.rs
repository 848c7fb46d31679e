use hetpar_cost::fit::rows::Measurements;
use hetpar_cost::Constants;
fn main() {
    for f in [
        "cost-models/data/korthikanti-2022-a100.json",
        "cost-models/data/megatron-core-h100.json",
    ] {
        let m = Measurements::parse(&std::fs::read_to_string(f).unwrap()).unwrap();
        for r in &m.rows {
            let case = m.case(r).unwrap();
            let t = std::time::Instant::now();
            let p = hetpar_cost::fit::predict(&m, &case, Constants::for_gpu(m.gpu_model)).unwrap();
            if std::env::var("HP_BD").is_ok() {
                let e = hetpar_cost::estimate(
                    &case.model,
                    &case.cluster,
                    &case.plan,
                    &hetpar_cost::Options {
                        attention: m.software.attention,
                        constants: None,
                    },
                )
                .unwrap();
                println!(
                    "{:?} mem {:.1} GiB",
                    e.time_breakdown,
                    e.peak_memory_bytes / 1073741824.0
                );
            }
            let flops = hetpar_cost::fit::rows::megatron_gpt_flops(r);
            println!("{:14} measured {:8.3} predicted {:8.3} err {:+6.1}% megatron-mfu-pred {:.1}% ({:.3}s)", r.name, case.measured_s, p, 100.0*(p/case.measured_s-1.0), 100.0*flops/p/f64::from(r.gpus)/case.cluster.gpu.dense_bf16_flops, t.elapsed().as_secs_f64());
        }
    }
}
