use hetpar_cost::fit::rows::Measurements;
use hetpar_cost::Constants;
fn main() {
    let f = std::env::args().nth(1).unwrap();
    let m = Measurements::parse(&std::fs::read_to_string(&f).unwrap()).unwrap();
    let t = std::time::Instant::now();
    let r = hetpar_cost::fit::calibrate(&m, Constants::for_gpu(m.gpu_model), &mut |s| eprintln!("{s} {:.1}s", t.elapsed().as_secs_f64())).unwrap();
    println!("fitted {:?}", r.fitted);
    for x in &r.rows { println!("{:14} {} meas {:8.3} pred {:8.3} err {:+6.1}% loo {:+6.1}%", x.name, if x.trained {"train"} else {"HELD "}, x.measured_s, x.predicted_s, 100.0*x.error, 100.0*x.left_out_error); }
    println!("held-out MAE {:.1}% train {:.1}% LOO {:.1}%", 100.0*r.held_out_mae, 100.0*r.train_mae, 100.0*r.leave_one_out_mae);
}
