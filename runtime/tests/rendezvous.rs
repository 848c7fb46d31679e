//! The TCP rendezvous lets in only its job's ranks: a client that connects first and sends
//! garbage, an endless line or a frame header is refused while the ranks meet, and a peer with
//! another job's token is refused by address; nothing aborts or waits past the timeout.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use hetpar_runtime::rendezvous::{placement_from, tcp_endpoint, Placement};
use hetpar_runtime::RuntimeError;

fn free_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn place(rank: u32, world: u32, master: &str, token: &str) -> Placement {
    Placement {
        rank,
        world,
        master: master.into(),
        token: token.into(),
    }
}

/// Connects to `addr` as soon as something listens there.
fn connect_soon(addr: &str) -> TcpStream {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect(addr) {
            Ok(s) => return s,
            Err(e) if Instant::now() < until => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("rank 0 never listened at {addr}: {e}"),
        }
    }
}

/// Two ranks meet at a master a rogue client reached first, doing `rogue`; both must meet and
/// exchange a message.
fn meet_past(rogue: fn(TcpStream)) {
    let master = free_port();
    let timeout = Duration::from_secs(20);
    let m = master.clone();
    let zero = std::thread::spawn(move || tcp_endpoint(&place(0, 2, &m, "job-7"), timeout, 64));
    let client = connect_soon(&master);
    let rogue = std::thread::spawn(move || rogue(client));
    let one = tcp_endpoint(&place(1, 2, &master, "job-7"), timeout, 64);
    let mut zero = zero.join().unwrap().expect("rank 0 meets rank 1");
    let one = one.expect("rank 1 meets rank 0");
    one.send(0, 5, &[1.0, 2.0]).unwrap();
    assert_eq!(zero.recv(1, 5).unwrap(), vec![1.0, 2.0]);
    rogue.join().unwrap();
}

#[test]
fn a_rogue_client_sending_garbage_first_is_refused_and_the_ranks_meet() {
    meet_past(|mut s| {
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\xff\xfe");
    });
}

#[test]
fn a_rogue_client_sending_an_endless_line_first_is_refused_and_the_ranks_meet() {
    meet_past(|mut s| {
        let chunk = vec![b'x'; 1 << 16];
        // Until rank 0 has read its fill and closed the connection.
        for _ in 0..1024 {
            if s.write_all(&chunk).is_err() {
                return;
            }
        }
        panic!("rank 0 read 64 MiB of one line");
    });
}

#[test]
fn a_rogue_client_sending_a_huge_length_first_is_refused_and_the_ranks_meet() {
    meet_past(|mut s| {
        let mut head = 7u64.to_le_bytes().to_vec();
        head.extend_from_slice(&u64::MAX.to_le_bytes());
        let _ = s.write_all(&head);
        // Then silence, holding the connection, until rank 0 gives up on it.
        let mut b = [0u8; 64];
        let _ = std::io::Read::read(&mut s, &mut b);
    });
}

#[test]
fn a_peer_with_another_jobs_token_is_refused_naming_its_address() {
    let master = free_port();
    let timeout = Duration::from_millis(1500);
    let m = master.clone();
    let zero = std::thread::spawn(move || tcp_endpoint(&place(0, 2, &m, "job-a"), timeout, 64));
    let one = tcp_endpoint(&place(1, 2, &master, "job-b"), timeout, 64);
    let zero = zero.join().unwrap();
    let Err(RuntimeError::Rendezvous { rank: 0, what }) = zero else {
        panic!("rank 0 let another job's rank in");
    };
    assert!(
        what.contains("0 of 1 arrived") && what.contains("refused 1: 127.0.0.1:"),
        "{what}"
    );
    assert!(what.contains("this job's token"), "{what}");
    let Err(RuntimeError::Rendezvous { rank: 1, what }) = one else {
        panic!("rank 1 joined another job");
    };
    assert!(what.contains("refused this rank"), "{what}");
}

#[test]
fn a_world_too_large_to_hold_is_refused_before_anything_is_allocated() {
    let e = tcp_endpoint(
        &place(0, u32::MAX, &free_port(), "job"),
        Duration::from_secs(1),
        64,
    );
    let Err(RuntimeError::Rendezvous { what, .. }) = e else {
        panic!("a world of 2^32 - 1 ranks was accepted");
    };
    assert!(what.contains("at most 1048576"), "{what}");
}

/// A lookup over `pairs`, as the environment would answer.
fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
    move |k| {
        pairs
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    }
}

#[test]
fn the_job_token_comes_from_hetpar_launch_or_the_slurm_job_step() {
    let launched = [
        ("HETPAR_RANK", "1"),
        ("HETPAR_WORLD", "2"),
        ("HETPAR_MASTER", "h:1"),
    ];
    let e = placement_from(vars(&launched)).unwrap_err();
    assert!(e.to_string().contains("HETPAR_TOKEN is not set"), "{e}");
    let with_token = [
        ("HETPAR_RANK", "1"),
        ("HETPAR_WORLD", "2"),
        ("HETPAR_MASTER", "h:1"),
        ("HETPAR_TOKEN", "t0"),
    ];
    let p = placement_from(vars(&with_token)).unwrap().unwrap();
    assert_eq!(p, place(1, 2, "h:1", "t0"));
    let slurm = |job: Option<&str>| {
        let mut v = vec![
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "2"),
            ("MASTER_ADDR", "n1"),
            ("MASTER_PORT", "29500"),
            ("SLURM_STEP_ID", "0"),
        ];
        if let Some(j) = job {
            v.push(("SLURM_JOB_ID", j));
        }
        placement_from(vars(&v)).map(|p| p.unwrap().token)
    };
    let (a, b) = (slurm(Some("41")).unwrap(), slurm(Some("42")).unwrap());
    assert_ne!(a, b, "two jobs share a token");
    assert!(slurm(None).is_err(), "a token without a job");
}
