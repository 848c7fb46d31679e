//! Ranks as processes, on one node or many: a TCP rendezvous at a master address, then a full
//! mesh of TCP streams, one per pair of ranks, carrying the transport's tagged messages
//! (`hetpar launch`).
//!
//! Rank 0 listens at the master address; every other rank connects to it (retrying until the
//! deadline, so the order of starts does not matter), says the job's token, its rank and the
//! address it listens on, and receives the token and the table of every rank's address; then
//! each rank connects to every lower rank (saying the token and its rank) and accepts every
//! higher one. A connection without the token, silent, or with a line longer than any a rank
//! sends is refused and named; the wait goes on. A rank that never arrives is an error on
//! rank 0 naming it, and on the others when rank 0 gives up: never a hang. A reader thread per
//! peer turns frames (`tag u64, length u64, f32 values`, little-endian) back into messages,
//! refusing a length above the run's largest message.

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{channel, Sender};
use std::time::{Duration, Instant};

use crate::transport::{Delivery, Endpoint, Message, Payload, Sink};
use crate::RuntimeError;

/// The longest job token, in bytes.
pub const MAX_TOKEN: usize = 128;
/// The most ranks one rendezvous takes (it bounds the address table a rank reads).
pub const MAX_WORLD: u32 = 1 << 20;
/// The longest address a rank says (`[IPv6%scope]:port` is under 60 bytes).
const MAX_ADDR: usize = 64;
/// How long a new connection has to say its first line. A rank says it as soon as it
/// connects, so a client that says nothing is refused without holding up the others.
const HELLO_WAIT: Duration = Duration::from_secs(2);
/// Refusals kept for the error message (a flood of them must not grow memory).
const KEEP_REFUSED: usize = 8;

fn fail(rank: u32, what: String) -> RuntimeError {
    RuntimeError::Rendezvous { rank, what }
}

/// The longest line a rank says (`token rank address`).
fn hello_limit() -> usize {
    MAX_TOKEN + 1 + 10 + 1 + MAX_ADDR
}

/// The longest line rank 0 sends: the token, then `world` addresses.
fn table_limit(world: usize) -> usize {
    world
        .saturating_mul(MAX_ADDR + 1)
        .saturating_add(MAX_TOKEN + 1)
}

/// A job token: 1 to [`MAX_TOKEN`] printable ASCII characters, no spaces.
pub fn check_token(token: &str) -> Result<(), String> {
    if token.is_empty() || token.len() > MAX_TOKEN {
        return Err(format!(
            "a job token is 1 to {MAX_TOKEN} characters, not {}",
            token.len()
        ));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("a job token is printable ASCII without spaces".into());
    }
    Ok(())
}

/// A fresh job token: 128 bits from the standard library's randomly keyed hasher (seeded by
/// the operating system), the time and the process id. It keeps other jobs and stray clients
/// out; it is not a secret against someone who can read the traffic.
pub fn new_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let word = |salt: u64| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(nanos);
        h.write_u32(std::process::id());
        h.write_u64(salt);
        h.finish()
    };
    format!("{:016x}{:016x}", word(1), word(2))
}

/// The rest of a line that starts with `token` and a space, or why it is refused.
fn strip_token<'a>(line: &'a str, token: &str) -> Result<&'a str, String> {
    match line.split_once(' ') {
        Some((t, rest)) if t == token => Ok(rest),
        _ => Err("it did not give this job's token".into()),
    }
}

/// Accepts `n` connections before `deadline`, each admitted by its first line; a connection
/// whose line is missing, too long or refused by `admit` is told why, closed and named in the
/// error if the wait then times out.
fn accept_n<T>(
    listener: &TcpListener,
    n: usize,
    deadline: Instant,
    rank: u32,
    what: &str,
    mut admit: impl FnMut(&str) -> Result<T, String>,
) -> Result<Vec<(T, TcpStream)>, RuntimeError> {
    listener
        .set_nonblocking(true)
        .map_err(|e| fail(rank, format!("listener: {e}")))?;
    let mut out = Vec::with_capacity(n.min(1024));
    let mut refused: Vec<String> = Vec::new();
    let mut refusals = 0usize;
    while out.len() < n {
        match listener.accept() {
            Ok((s, peer)) => {
                let until = deadline.min(Instant::now() + HELLO_WAIT);
                let line = s
                    .set_nonblocking(false)
                    .map_err(|e| e.to_string())
                    .and_then(|()| read_line(&s, hello_limit(), until));
                match line.and_then(|l| admit(&l)) {
                    Ok(t) => out.push((t, s)),
                    Err(why) => {
                        refuse(&s, &why);
                        refusals += 1;
                        if refused.len() < KEEP_REFUSED {
                            refused.push(format!("{peer} ({why})"));
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let mut msg =
                        format!("{what}: {} of {n} arrived before the timeout", out.len());
                    if refusals > 0 {
                        msg += &format!("; refused {refusals}: {}", refused.join(", "));
                    }
                    return Err(fail(rank, msg));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(fail(rank, format!("{what}: {e}"))),
        }
    }
    Ok(out)
}

/// Tells a refused peer why (best effort: it may be gone or not reading) before it is closed.
fn refuse(mut s: &TcpStream, why: &str) {
    let _ = s.set_write_timeout(Some(Duration::from_millis(100)));
    let _ = s.write_all(format!("refused: {why}\n").as_bytes());
}

/// One line from `s`, of at most `limit` bytes, complete before `until`. Read a byte at a time:
/// a buffered reader would swallow the frames a peer may send right after its line, and they
/// belong to the stream's reader thread.
fn read_line(mut s: &TcpStream, limit: usize, until: Instant) -> Result<String, String> {
    let mut bytes = Vec::new();
    let mut b = [0u8; 1];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no complete line in time ({} bytes)", bytes.len()));
        }
        s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        match s.read(&mut b) {
            Ok(0) => return Err("the connection closed before a complete line".into()),
            Ok(_) if b[0] == b'\n' => {
                return String::from_utf8(bytes).map_err(|_| "a line that is not UTF-8".into())
            }
            Ok(_) if bytes.len() >= limit => {
                return Err(format!("a line longer than {limit} bytes"));
            }
            Ok(_) => bytes.push(b[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!("no complete line in time ({} bytes)", bytes.len()));
            }
            Err(e) => return Err(e.to_string()),
        }
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

/// The bytes of a frame of `len` values, if a message of the program can be that long
/// (at most `max_values`); never an overflow.
fn frame_bytes(len: u64, max_values: usize) -> Option<usize> {
    usize::try_from(len)
        .ok()
        .filter(|&l| l <= max_values)?
        .checked_mul(4)
}

/// Reads frames from `s` into `tx` until the stream ends or carries a frame longer than
/// `max_values` values (then the receiver is told, and the stream closed).
fn reader(s: TcpStream, tx: Sender<Delivery>, max_values: usize) {
    let mut r = BufReader::new(s);
    let mut head = [0u8; 16];
    while r.read_exact(&mut head).is_ok() {
        let (tag, len) = head.split_at(8);
        let tag = u64::from_le_bytes(tag.try_into().expect("8 bytes"));
        let len = u64::from_le_bytes(len.try_into().expect("8 bytes"));
        let Some(size) = frame_bytes(len, max_values) else {
            let _ = tx.send(Err(format!(
                "it sent a frame of {len} values, more than the program's largest message \
                 ({max_values})"
            )));
            let _ = r.get_ref().shutdown(std::net::Shutdown::Both);
            return;
        };
        let mut bytes = vec![0u8; size];
        if r.read_exact(&mut bytes).is_err() {
            return;
        }
        let payload = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let m = Message {
            tag,
            payload: Payload::Values(payload),
        };
        if tx.send(Ok(m)).is_err() {
            return;
        }
    }
}

/// This process's endpoint as rank `place.rank` of `place.world`, meeting the others at
/// `place.master` (`host:port`, where rank 0 listens), every step of the rendezvous within
/// `timeout`. Only peers that give `place.token` are let in; frames longer than `max_values`
/// values (the program's largest message) close their stream.
pub fn tcp_endpoint(
    place: &Placement,
    timeout: Duration,
    max_values: usize,
) -> Result<Endpoint, RuntimeError> {
    let (rank, world) = (place.rank, place.world);
    if rank >= world || world > MAX_WORLD {
        return Err(fail(
            rank,
            format!("rank {rank} of {world}: the rank must be below the world size, at most {MAX_WORLD}"),
        ));
    }
    check_token(&place.token).map_err(|e| fail(rank, e))?;
    let deadline = Instant::now() + timeout;
    let (listener, addrs) = if rank == 0 {
        meet_as_rank0(place, deadline)?
    } else {
        meet_as_peer(place, deadline)?
    };
    let streams = mesh(place, &listener, &addrs, deadline)?;
    let mut senders = Vec::with_capacity(streams.len());
    let mut receivers = Vec::with_capacity(streams.len());
    for (peer, s) in streams.into_iter().enumerate() {
        let (tx, rx) = channel();
        if peer == rank as usize {
            senders.push(Sink::Channel(tx));
        } else {
            let s = s.ok_or_else(|| fail(rank, format!("no stream to rank {peer}")))?;
            let err = |e: std::io::Error| fail(rank, e.to_string());
            s.set_read_timeout(None).map_err(err)?;
            s.set_nodelay(true).map_err(err)?;
            let r = s.try_clone().map_err(err)?;
            std::thread::spawn(move || reader(r, tx, max_values));
            senders.push(Sink::Tcp(s));
        }
        receivers.push(rx);
    }
    Ok(Endpoint::from_parts(rank, senders, receivers, timeout))
}

/// Rank 0: listens at the master address for every other rank's `token rank address` and
/// sends each the table `token address0 address1 ...`; its own mesh listener and the table.
fn meet_as_rank0(
    place: &Placement,
    deadline: Instant,
) -> Result<(TcpListener, Vec<String>), RuntimeError> {
    let (master, token, n) = (&place.master, &place.token, place.world as usize);
    let server = TcpListener::bind(master)
        .map_err(|e| fail(0, format!("cannot listen at {master}: {e}")))?;
    let host = master.rsplit_once(':').map_or("127.0.0.1", |(h, _)| h);
    let listener = TcpListener::bind((host, 0)).map_err(|e| fail(0, e.to_string()))?;
    let mut addrs: Vec<String> = vec![String::new(); n];
    addrs[0] = listener
        .local_addr()
        .map_err(|e| fail(0, e.to_string()))?
        .to_string();
    let mut seen = vec![false; n];
    let admit = |line: &str| -> Result<(usize, String), String> {
        let (r, a) = strip_token(line, token)?
            .split_once(' ')
            .ok_or("it did not say \"rank address\"")?;
        let r: usize = r.parse().map_err(|_| format!("{r:?} is not a rank"))?;
        if r == 0 || r >= n || seen[r] {
            return Err(format!("rank {r} is out of range or arrived twice"));
        }
        if a.len() > MAX_ADDR || a.parse::<SocketAddr>().is_err() {
            return Err(format!("{a:?} is not an address"));
        }
        seen[r] = true;
        Ok((r, a.to_string()))
    };
    let arrived =
        accept_n(&server, n - 1, deadline, 0, "ranks arriving", admit).map_err(|e| match e {
            RuntimeError::Rendezvous { what, .. } => fail(
                0,
                format!("{what}; a peer that never arrives never started or cannot reach {master}"),
            ),
            other => other,
        })?;
    let mut streams = Vec::with_capacity(arrived.len());
    for ((r, a), s) in arrived {
        addrs[r] = a;
        streams.push(s);
    }
    let table = format!("{token} {}\n", addrs.join(" "));
    for mut s in streams {
        s.write_all(table.as_bytes())
            .map_err(|e| fail(0, e.to_string()))?;
    }
    Ok((listener, addrs))
}

/// Every other rank: says `token rank address` to rank 0 and reads the table back.
fn meet_as_peer(
    place: &Placement,
    deadline: Instant,
) -> Result<(TcpListener, Vec<String>), RuntimeError> {
    let (rank, master, token, n) = (
        place.rank,
        &place.master,
        &place.token,
        place.world as usize,
    );
    let mut s = connect(master, deadline, rank)?;
    // The interface that reaches the master is the one the others can reach.
    let ip = s.local_addr().map_err(|e| fail(rank, e.to_string()))?.ip();
    let listener = TcpListener::bind((ip, 0)).map_err(|e| fail(rank, e.to_string()))?;
    let me = listener
        .local_addr()
        .map_err(|e| fail(rank, e.to_string()))?;
    s.write_all(format!("{token} {rank} {me}\n").as_bytes())
        .map_err(|e| fail(rank, e.to_string()))?;
    let line = read_line(&s, table_limit(n), deadline).map_err(|e| {
        fail(
            rank,
            format!("no address table from rank 0 at {master} before the timeout: {e}"),
        )
    })?;
    if let Some(why) = line.strip_prefix("refused: ") {
        return Err(fail(
            rank,
            format!("rank 0 at {master} refused this rank: {why}"),
        ));
    }
    let got: Vec<String> = strip_token(&line, token)
        .map_err(|_| {
            fail(
                rank,
                format!("{master} answered without this job's token: another job's rank 0?"),
            )
        })?
        .split_whitespace()
        .map(str::to_string)
        .collect();
    if got.len() != n {
        return Err(fail(
            rank,
            format!("rank 0 sent {} addresses for {n} ranks", got.len()),
        ));
    }
    Ok((listener, got))
}

/// The mesh: connects to every lower rank (saying `token rank`) and accepts every higher one.
fn mesh(
    place: &Placement,
    listener: &TcpListener,
    addrs: &[String],
    deadline: Instant,
) -> Result<Vec<Option<TcpStream>>, RuntimeError> {
    let (rank, token, n) = (place.rank, &place.token, addrs.len());
    let mut streams: Vec<Option<TcpStream>> = (0..n).map(|_| None).collect();
    for (peer, addr) in addrs.iter().enumerate().take(rank as usize) {
        let mut s = connect(addr, deadline, rank)?;
        s.write_all(format!("{token} {rank}\n").as_bytes())
            .map_err(|e| fail(rank, e.to_string()))?;
        streams[peer] = Some(s);
    }
    let mut seen = vec![false; n];
    let admit = |line: &str| -> Result<usize, String> {
        let r = strip_token(line, token)?;
        let peer: usize = r.parse().map_err(|_| format!("{r:?} is not a rank"))?;
        if peer <= rank as usize || peer >= n || seen[peer] {
            return Err(format!(
                "rank {peer} is not a higher rank or connected twice"
            ));
        }
        seen[peer] = true;
        Ok(peer)
    };
    let higher = n - 1 - rank as usize;
    for (peer, s) in accept_n(
        listener,
        higher,
        deadline,
        rank,
        "higher ranks connecting",
        admit,
    )? {
        streams[peer] = Some(s);
    }
    Ok(streams)
}

/// Where this process is in a launched job, and the job's token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub rank: u32,
    pub world: u32,
    /// Where rank 0 listens, `host:port`.
    pub master: String,
    /// What every rank of this job says first; a peer without it is refused.
    pub token: String,
}

/// This process's placement, from hetpar's variables (`HETPAR_RANK`, `HETPAR_WORLD`,
/// `HETPAR_MASTER`, `HETPAR_TOKEN`, set by `hetpar launch`) or from SLURM's under `srun`
/// (`SLURM_PROCID`, `SLURM_NTASKS`, `MASTER_ADDR`, `MASTER_PORT`, the token `HETPAR_TOKEN` or
/// else derived from `SLURM_JOB_ID` and `SLURM_STEP_ID`); `None` when neither set is there
/// (not a launched process).
pub fn placement_from_env() -> Result<Option<Placement>, RuntimeError> {
    placement_from(|k| std::env::var(k).ok())
}

/// [`placement_from_env`] over any source of variables.
pub fn placement_from(
    var: impl Fn(&str) -> Option<String>,
) -> Result<Option<Placement>, RuntimeError> {
    let bad = |what: String| RuntimeError::Rendezvous { rank: 0, what };
    let num = |k: &str, v: String| -> Result<u32, RuntimeError> {
        v.parse()
            .map_err(|_| bad(format!("{k}={v} is not a number")))
    };
    let token = |t: String| -> Result<String, RuntimeError> {
        check_token(&t).map_err(|e| bad(format!("HETPAR_TOKEN: {e}")))?;
        Ok(t)
    };
    if let (Some(r), Some(w), Some(m)) = (
        var("HETPAR_RANK"),
        var("HETPAR_WORLD"),
        var("HETPAR_MASTER"),
    ) {
        let t = var("HETPAR_TOKEN").ok_or_else(|| {
            bad("HETPAR_TOKEN is not set: every rank of a job needs the job's token (hetpar launch sets it)".into())
        })?;
        return Ok(Some(Placement {
            rank: num("HETPAR_RANK", r)?,
            world: num("HETPAR_WORLD", w)?,
            master: m,
            token: token(t)?,
        }));
    }
    if let (Some(r), Some(w), Some(host), Some(port)) = (
        var("SLURM_PROCID"),
        var("SLURM_NTASKS"),
        var("MASTER_ADDR"),
        var("MASTER_PORT"),
    ) {
        let t = match var("HETPAR_TOKEN") {
            Some(t) => t,
            None => slurm_token(&var).ok_or_else(|| {
                bad("under srun, the job token comes from SLURM_JOB_ID, which is not set (or set HETPAR_TOKEN)".into())
            })?,
        };
        return Ok(Some(Placement {
            rank: num("SLURM_PROCID", r)?,
            world: num("SLURM_NTASKS", w)?,
            master: format!("{host}:{port}"),
            token: token(t)?,
        }));
    }
    Ok(None)
}

/// The token of a SLURM job step, the same on every task of it: another job, or another
/// step of this one, has another.
pub fn slurm_token(var: &impl Fn(&str) -> Option<String>) -> Option<String> {
    let job = var("SLURM_JOB_ID")?;
    let step = var("SLURM_STEP_ID").unwrap_or_else(|| "-".into());
    Some(format!("slurm-{job}.{step}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_from_a_peer_never_overflow() {
        assert_eq!(frame_bytes(u64::MAX, usize::MAX), None);
        assert_eq!(frame_bytes(101, 100), None);
        assert_eq!(frame_bytes(100, 100), Some(400));
        assert_eq!(frame_bytes((usize::MAX / 2) as u64, usize::MAX), None);
        assert_eq!(table_limit(usize::MAX), usize::MAX);
    }

    #[test]
    fn a_line_longer_than_its_bound_is_refused_as_soon_as_it_passes_it() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        client.write_all(&[b'x'; 1000]).unwrap();
        let until = Instant::now() + Duration::from_secs(20);
        let e = read_line(&server, 10, until).unwrap_err();
        assert_eq!(e, "a line longer than 10 bytes");
    }

    /// A frame longer than the largest message reaches the receiving rank as an error naming
    /// its peer, not as an allocation of what the length claims.
    #[test]
    fn a_frame_longer_than_the_largest_message_is_an_error_naming_the_peer() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || reader(server, tx, 100));
        let frame = |tag: u64, len: u64, values: &[f32]| {
            let mut f = tag.to_le_bytes().to_vec();
            f.extend_from_slice(&len.to_le_bytes());
            for v in values {
                f.extend_from_slice(&v.to_le_bytes());
            }
            f
        };
        client.write_all(&frame(3, 2, &[1.0, 2.0])).unwrap();
        client.write_all(&frame(4, 101, &[0.0; 101])).unwrap();
        let (me, _) = channel();
        let mut net = Endpoint::from_parts(
            0,
            vec![Sink::Channel(me.clone()), Sink::Channel(me)],
            vec![channel().1, rx],
            Duration::from_secs(10),
        );
        assert_eq!(net.recv(1, 3).unwrap(), vec![1.0, 2.0]);
        match net.recv(1, 4) {
            Err(RuntimeError::BadStream {
                rank: 0,
                peer: 1,
                what,
            }) => {
                assert!(what.contains("largest message (100)"), "{what}")
            }
            other => panic!("{:?}", other.map(|v| v.len())),
        }
    }
}
