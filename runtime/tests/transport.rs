//! The in-process transport: collectives compute what they claim with the same bits on every
//! rank, tagged messages find their receive whatever the posting order, and a missing peer
//! becomes a timeout error instead of a hang.

use std::time::{Duration, Instant};

use hetpar_runtime::transport::{fabric, Endpoint};
use hetpar_runtime::RuntimeError;

/// Runs `f` on every rank's endpoint in its own thread; returns the results in rank order.
fn on_ranks<T: Send>(n: usize, timeout: Duration, f: impl Fn(&mut Endpoint) -> T + Sync) -> Vec<T> {
    let endpoints = fabric(n, timeout);
    std::thread::scope(|s| {
        let handles: Vec<_> = endpoints
            .into_iter()
            .map(|mut e| {
                let f = &f;
                s.spawn(move || f(&mut e))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("rank thread"))
            .collect()
    })
}

#[test]
fn ring_all_reduce_sums_every_element_with_identical_bits_on_every_rank() {
    let n = 4;
    let len = 1001; // not a multiple of the ranks: uneven chunks
    let value = |rank: usize, i: usize| ((rank * 7919 + i * 104729) % 1000) as f32 / 7.0;
    let out = on_ranks(n, Duration::from_secs(10), |e| {
        let r = e.rank() as usize;
        let mut buf: Vec<f32> = (0..len).map(|i| value(r, i)).collect();
        e.all_reduce_sum(&[0, 1, 2, 3], 1, &mut buf)
            .expect("all-reduce");
        buf
    });
    for (i, &got) in out[0].iter().enumerate() {
        let exact: f64 = (0..n).map(|r| f64::from(value(r, i))).sum();
        assert!(
            (f64::from(got) - exact).abs() < 1e-3,
            "element {i}: {got} vs {exact}"
        );
    }
    for r in 1..n {
        let same = out[r]
            .iter()
            .zip(&out[0])
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "rank {r} differs from rank 0");
    }
}

#[test]
fn a_bucket_of_tensors_sums_each_as_its_own_ring_would_bit_for_bit() {
    let (n, lens) = (3, [7usize, 1, 0, 1001, 2]);
    let group = [1, 2, 0];
    let value = |rank: usize, i: usize| ((rank * 7919 + i * 104729) % 1000) as f32 / 7.3;
    let out = on_ranks(n, Duration::from_secs(10), |e| {
        let r = e.rank() as usize;
        let total: usize = lens.iter().sum();
        let mut bucket: Vec<f32> = (0..total).map(|i| value(r, i)).collect();
        // Each tensor by its own ring, then all of them as one bucket.
        let mut alone = Vec::new();
        let mut at = 0;
        for (k, &len) in lens.iter().enumerate() {
            let mut t = bucket[at..at + len].to_vec();
            e.all_reduce_sum(&group, 10 + k as u64, &mut t).unwrap();
            alone.extend(t);
            at += len;
        }
        e.all_reduce_sum_segments(&group, 1, &mut bucket, &lens)
            .unwrap();
        (alone, bucket)
    });
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for (r, (alone, bucket)) in out.iter().enumerate() {
        assert_eq!(bits(alone), bits(bucket), "rank {r}");
    }
}

#[test]
fn a_ring_ordered_reduce_scatter_gives_each_member_its_chunk_of_the_all_reduce_bit_for_bit() {
    let (n, len) = (4, 1001);
    let group = [2, 0, 3, 1]; // not in rank order
    let value = |rank: usize, i: usize| ((rank * 7919 + i * 104729) % 1000) as f32 / 7.3;
    let chunk = |c: usize| c * len / n..(c + 1) * len / n;
    let out = on_ranks(n, Duration::from_secs(10), |e| {
        let r = e.rank() as usize;
        let buf: Vec<f32> = (0..len).map(|i| value(r, i)).collect();
        let parts: Vec<Vec<f32>> = (0..n).map(|c| buf[chunk(c)].to_vec()).collect();
        let mine = e
            .reduce_scatter_ring(&group, 5, &parts)
            .expect("reduce-scatter");
        let mut whole = buf;
        e.all_reduce_sum(&group, 6, &mut whole).expect("all-reduce");
        (mine, whole)
    });
    for (r, (mine, whole)) in out.iter().enumerate() {
        let me = group.iter().position(|&x| x == r as u32).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(mine), bits(&whole[chunk(me)]), "rank {r}");
    }
}

#[test]
fn all_gather_returns_every_part_in_group_order_and_broadcast_copies_the_root() {
    let out = on_ranks(3, Duration::from_secs(10), |e| {
        let r = e.rank();
        let parts = e
            .all_gather(&[0, 1, 2], 7, &vec![r as f32; r as usize + 1])
            .expect("all-gather");
        let mut b = if r == 2 { vec![4.0, 5.0] } else { Vec::new() };
        e.broadcast(&[0, 1, 2], 2, 8, &mut b).expect("broadcast");
        (parts, b)
    });
    for (parts, b) in out {
        assert_eq!(parts, vec![vec![0.0], vec![1.0, 1.0], vec![2.0, 2.0, 2.0]]);
        assert_eq!(b, vec![4.0, 5.0]);
    }
}

#[test]
fn tagged_messages_reach_their_receive_whatever_the_posting_order() {
    let out = on_ranks(2, Duration::from_secs(10), |e| {
        if e.rank() == 0 {
            for tag in [3u64, 1, 2] {
                e.send(1, tag, &[tag as f32]).unwrap();
            }
            Vec::new()
        } else {
            (1..=3u64).map(|tag| e.recv(0, tag).unwrap()[0]).collect()
        }
    });
    assert_eq!(out[1], vec![1.0, 2.0, 3.0]);
}

#[test]
fn a_peer_that_never_sends_becomes_a_timeout_error_not_a_hang() {
    let start = Instant::now();
    let out = on_ranks(2, Duration::from_millis(200), |e| {
        if e.rank() == 1 {
            // Rank 1 waits for a message rank 0, alive but stuck, never sends.
            e.recv(0, 42).map(|_| ())
        } else {
            std::thread::sleep(Duration::from_millis(600));
            Ok(())
        }
    });
    match &out[1] {
        Err(RuntimeError::Timeout {
            rank: 1, peer: 0, ..
        }) => {}
        other => panic!("expected a timeout on rank 1, got {other:?}"),
    }
    let msg = out[1].as_ref().unwrap_err().to_string();
    assert!(
        msg.contains("rank 1 waited") && msg.contains("rank 0"),
        "{msg}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "the wait is bounded by the timeout"
    );
}

#[test]
fn a_peer_that_has_exited_is_reported_as_gone() {
    let out = on_ranks(2, Duration::from_secs(10), |e| {
        if e.rank() == 1 {
            e.recv(0, 1).map(|_| ())
        } else {
            Ok(())
        }
    });
    assert_eq!(out[1], Err(RuntimeError::PeerGone { rank: 1, peer: 0 }));
}

#[test]
fn a_message_becomes_rows_of_its_width_or_says_why_not() {
    use hetpar_runtime::transport::Payload;
    let t = Payload::Values(vec![1.0; 6]).into_rows(3).unwrap();
    assert_eq!(t.shape(), &[2, 3]);
    let e = Payload::Values(vec![1.0; 5]).into_rows(3).unwrap_err();
    assert!(e.contains("5 values") && e.contains("rows of 3"), "{e}");
    let e = Payload::Tensor(t).into_rows(2).unwrap_err();
    assert!(e.contains("[2, 3]"), "{e}");
}
