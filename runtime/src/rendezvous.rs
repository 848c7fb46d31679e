//! Ranks as processes, on one node or many: a TCP rendezvous at a master address, then a full
//! mesh of TCP streams, one per pair of ranks, carrying the transport's tagged messages
//! (`hetpar launch`).
//!
//! Rank 0 listens at the master address; every other rank connects to it (retrying until the
//! deadline, so the order of starts does not matter), says its rank and the address it
//! listens on, and receives the table of every rank's address; then each rank connects to
//! every lower rank and accepts every higher one. A rank that never arrives is an error on
//! rank 0 naming it, and on the others when rank 0 gives up: never a hang. A reader thread per
//! peer turns frames (`tag u64, length u64, f32 values`, little-endian) back into messages.

use std::io::{BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc::{channel, Sender};
use std::time::{Duration, Instant};

use crate::transport::{Endpoint, Message, Payload, Sink};
use crate::RuntimeError;

fn fail(rank: u32, what: String) -> RuntimeError {
    RuntimeError::Rendezvous { rank, what }
}

/// Accepts `n` connections before `deadline`, each identified by its first line.
fn accept_n(
    listener: &TcpListener,
    n: usize,
    deadline: Instant,
    rank: u32,
    what: &str,
) -> Result<Vec<(String, TcpStream)>, RuntimeError> {
    listener
        .set_nonblocking(true)
        .map_err(|e| fail(rank, format!("listener: {e}")))?;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)
                    .map_err(|e| fail(rank, e.to_string()))?;
                s.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now())))
                    .map_err(|e| fail(rank, e.to_string()))?;
                let line = read_line(&s).map_err(|e| fail(rank, format!("{what}: {e}")))?;
                out.push((line.trim().to_string(), s));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(fail(
                        rank,
                        format!("{what}: {} of {n} arrived before the timeout", out.len()),
                    ));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(fail(rank, format!("{what}: {e}"))),
        }
    }
    Ok(out)
}

/// One line from `s`, read a byte at a time: a buffered reader would swallow the frames a
/// peer may send right after its line, and they belong to the stream's reader thread.
fn read_line(mut s: &TcpStream) -> std::io::Result<String> {
    let mut bytes = Vec::new();
    let mut b = [0u8; 1];
    loop {
        s.read_exact(&mut b)?;
        if b[0] == b'\n' {
            return String::from_utf8(bytes)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e));
        }
        bytes.push(b[0]);
    }
}

/// Connects to `addr`, retrying until `deadline`.
fn connect(addr: &str, deadline: Instant, rank: u32) -> Result<TcpStream, RuntimeError> {
    loop {
        match TcpStream::connect(addr) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(fail(rank, format!("cannot reach {addr}: {e}"))),
        }
    }
}

/// Reads frames from `s` into `tx` until the stream ends.
fn reader(s: TcpStream, tx: Sender<Message>) {
    let mut r = BufReader::new(s);
    let mut head = [0u8; 16];
    while r.read_exact(&mut head).is_ok() {
        let tag = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
        let len = u64::from_le_bytes(head[8..].try_into().expect("8 bytes")) as usize;
        let mut bytes = vec![0u8; len * 4];
        if r.read_exact(&mut bytes).is_err() {
            return;
        }
        let payload = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if tx
            .send(Message {
                tag,
                payload: Payload::Values(payload),
            })
            .is_err()
        {
            return;
        }
    }
}

/// This process's endpoint as rank `rank` of `world`, meeting the others at `master`
/// (`host:port`, where rank 0 listens), every step of the rendezvous within `timeout`.
pub fn tcp_endpoint(
    rank: u32,
    world: u32,
    master: &str,
    timeout: Duration,
) -> Result<Endpoint, RuntimeError> {
    if rank >= world {
        return Err(fail(
            rank,
            format!("rank {rank} is not below the world size {world}"),
        ));
    }
    let deadline = Instant::now() + timeout;
    let n = world as usize;
    // Every rank's listening address, by rank.
    let mut addrs: Vec<String> = vec![String::new(); n];
    let listener;
    if rank == 0 {
        let server = TcpListener::bind(master)
            .map_err(|e| fail(0, format!("cannot listen at {master}: {e}")))?;
        let host = master.rsplit_once(':').map_or("127.0.0.1", |(h, _)| h);
        listener = TcpListener::bind((host, 0)).map_err(|e| fail(0, e.to_string()))?;
        addrs[0] = listener
            .local_addr()
            .map_err(|e| fail(0, e.to_string()))?
            .to_string();
        let arrived =
            accept_n(&server, n - 1, deadline, 0, "ranks arriving").map_err(|e| match e {
                RuntimeError::Rendezvous { what, .. } => fail(
                    0,
                    format!(
                        "{what}; a peer that never arrives never started or cannot reach {master}"
                    ),
                ),
                other => other,
            })?;
        let mut streams = Vec::new();
        for (line, s) in arrived {
            let (r, a) = line
                .split_once(' ')
                .and_then(|(r, a)| Some((r.parse::<usize>().ok()?, a.to_string())))
                .ok_or_else(|| fail(0, format!("a peer said {line:?}, not \"rank address\"")))?;
            if r >= n || !addrs[r].is_empty() {
                return Err(fail(
                    0,
                    format!("rank {r} arrived twice or is out of range"),
                ));
            }
            addrs[r] = a;
            streams.push(s);
        }
        let table = addrs.join(" ") + "\n";
        for mut s in streams {
            s.write_all(table.as_bytes())
                .map_err(|e| fail(0, e.to_string()))?;
        }
    } else {
        let mut s = connect(master, deadline, rank)?;
        // The interface that reaches the master is the one the others can reach.
        let ip = s.local_addr().map_err(|e| fail(rank, e.to_string()))?.ip();
        listener = TcpListener::bind((ip, 0)).map_err(|e| fail(rank, e.to_string()))?;
        let me = listener
            .local_addr()
            .map_err(|e| fail(rank, e.to_string()))?;
        s.write_all(format!("{rank} {me}\n").as_bytes())
            .map_err(|e| fail(rank, e.to_string()))?;
        s.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now())))
            .map_err(|e| fail(rank, e.to_string()))?;
        let line = read_line(&s).map_err(|e| {
            fail(
                rank,
                format!("no address table from rank 0 before the timeout: {e}"),
            )
        })?;
        let got: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        if got.len() != n {
            return Err(fail(
                rank,
                format!(
                    "rank 0 gave up or sent {} addresses for {n} ranks",
                    got.len()
                ),
            ));
        }
        addrs = got;
    }
    // The mesh: connect to every lower rank, accept every higher one.
    let mut streams: Vec<Option<TcpStream>> = (0..n).map(|_| None).collect();
    for (peer, addr) in addrs.iter().enumerate().take(rank as usize) {
        let mut s = connect(addr, deadline, rank)?;
        s.write_all(format!("{rank}\n").as_bytes())
            .map_err(|e| fail(rank, e.to_string()))?;
        streams[peer] = Some(s);
    }
    let higher = n - 1 - rank as usize;
    for (line, s) in accept_n(&listener, higher, deadline, rank, "higher ranks connecting")? {
        let peer: usize = line
            .parse()
            .map_err(|_| fail(rank, format!("a peer said {line:?}, not its rank")))?;
        if peer >= n || streams[peer].is_some() {
            return Err(fail(
                rank,
                format!("rank {peer} connected twice or is out of range"),
            ));
        }
        streams[peer] = Some(s);
    }
    let mut senders = Vec::with_capacity(n);
    let mut receivers = Vec::with_capacity(n);
    for (peer, s) in streams.into_iter().enumerate() {
        let (tx, rx) = channel();
        if peer == rank as usize {
            senders.push(Sink::Channel(tx));
        } else {
            let s = s.ok_or_else(|| fail(rank, format!("no stream to rank {peer}")))?;
            s.set_read_timeout(None)
                .map_err(|e| fail(rank, e.to_string()))?;
            s.set_nodelay(true).map_err(|e| fail(rank, e.to_string()))?;
            let r = s.try_clone().map_err(|e| fail(rank, e.to_string()))?;
            std::thread::spawn(move || reader(r, tx));
            senders.push(Sink::Tcp(s));
        }
        receivers.push(rx);
    }
    Ok(Endpoint::from_parts(rank, senders, receivers, timeout))
}

/// This process's rank, the world size and the master address, from hetpar's variables
/// (`HETPAR_RANK`, `HETPAR_WORLD`, `HETPAR_MASTER`, set by `hetpar launch`) or from SLURM's under
/// `srun` (`SLURM_PROCID`, `SLURM_NTASKS`, `MASTER_ADDR`, `MASTER_PORT`); `None` when neither
/// set is complete (not a launched process).
pub fn placement_from_env() -> Result<Option<(u32, u32, String)>, RuntimeError> {
    let var = |k: &str| std::env::var(k).ok();
    let num = |k: &str, v: String| -> Result<u32, RuntimeError> {
        v.parse().map_err(|_| RuntimeError::Rendezvous {
            rank: 0,
            what: format!("{k}={v} is not a number"),
        })
    };
    if let (Some(r), Some(w), Some(m)) = (
        var("HETPAR_RANK"),
        var("HETPAR_WORLD"),
        var("HETPAR_MASTER"),
    ) {
        return Ok(Some((num("HETPAR_RANK", r)?, num("HETPAR_WORLD", w)?, m)));
    }
    if let (Some(r), Some(w), Some(host), Some(port)) = (
        var("SLURM_PROCID"),
        var("SLURM_NTASKS"),
        var("MASTER_ADDR"),
        var("MASTER_PORT"),
    ) {
        return Ok(Some((
            num("SLURM_PROCID", r)?,
            num("SLURM_NTASKS", w)?,
            format!("{host}:{port}"),
        )));
    }
    Ok(None)
}
