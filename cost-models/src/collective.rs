//! Collective and point-to-point communication times, ring or tree, per link class.
//!
//! A group whose ranks sit on one node talks over NVLink; a group spanning nodes is limited by
//! the network, and pays the network latency per step. NCCL runs one ring per NIC, each
//! crossing the network through its own NIC, so a group with `g` ranks on each node moves its
//! data through `g` GPUs' network shares at once (capped by NVLink, which the rings also
//! cross): a data-parallel group of whole nodes gets the nodes' whole network bandwidth, one
//! rank per node only that rank's share. Ring and tree are both priced; the cheaper is taken,
//! as NCCL's tuner does.

use hetpar_ir::{Cluster, Rank};

use crate::constants::Constants;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CollectiveKind {
    AllReduce,
    AllGather,
    ReduceScatter,
    AllToAll,
    Broadcast,
    SendRecv,
}

/// Where a group's ranks sit: how many, and whether they span nodes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Link {
    /// Bytes/s one GPU can push to the group.
    pub bandwidth: f64,
    /// Seconds per message step.
    pub latency: f64,
    pub spans_nodes: bool,
}

impl Link {
    /// The link of a group of ranks: NVLink within a node; across nodes the network, times
    /// the fewest ranks the group has on one of its nodes (module comment).
    pub fn of_group(cluster: &Cluster, c: &Constants, ranks: &[Rank]) -> Link {
        let first = ranks.first().map(|&r| cluster.node_of(r));
        let spans = ranks.iter().any(|&r| Some(cluster.node_of(r)) != first);
        let mut link = Link::of_class(cluster, c, spans);
        if spans {
            let mut per_node = std::collections::BTreeMap::new();
            for &r in ranks {
                *per_node.entry(cluster.node_of(r)).or_insert(0u32) += 1;
            }
            let g = per_node.values().copied().min().unwrap_or(1).max(1);
            let nvlink = Link::of_class(cluster, c, false).bandwidth;
            link.bandwidth = (link.bandwidth * f64::from(g)).min(nvlink.max(link.bandwidth));
        }
        link
    }

    /// The link between two ranks.
    pub fn between(cluster: &Cluster, c: &Constants, a: Rank, b: Rank) -> Link {
        Link::of_class(cluster, c, cluster.node_of(a) != cluster.node_of(b))
    }

    pub fn of_class(cluster: &Cluster, c: &Constants, spans_nodes: bool) -> Link {
        let g = &cluster.gpu;
        if spans_nodes {
            Link {
                bandwidth: g.network_bandwidth * c.network_efficiency,
                latency: g.network_latency,
                spans_nodes,
            }
        } else {
            Link {
                bandwidth: g.nvlink_bandwidth * c.nvlink_efficiency,
                latency: g.nvlink_latency,
                spans_nodes,
            }
        }
    }
}

/// Time of one collective of `bytes` (the full buffer each rank holds: the input of an
/// all-reduce, the output of an all-gather, the input of a reduce-scatter, what one rank sends
/// in total for an all-to-all) over `n` ranks.
pub fn collective_time(kind: CollectiveKind, bytes: f64, n: u32, link: Link) -> f64 {
    if n <= 1 || bytes <= 0.0 {
        return 0.0;
    }
    let nf = f64::from(n);
    let frac = (nf - 1.0) / nf;
    let steps_ring = nf - 1.0;
    let steps_tree = nf.log2().ceil();
    let (ring, tree) = match kind {
        CollectiveKind::AllReduce => (
            2.0 * frac * bytes / link.bandwidth + 2.0 * steps_ring * link.latency,
            // Tree: reduce up and broadcast down, full buffer per level (pipelined).
            2.0 * bytes / link.bandwidth + 2.0 * steps_tree * link.latency,
        ),
        CollectiveKind::AllGather | CollectiveKind::ReduceScatter => {
            let t = frac * bytes / link.bandwidth + steps_ring * link.latency;
            (t, t)
        }
        CollectiveKind::AllToAll => {
            let t = frac * bytes / link.bandwidth + steps_ring * link.latency;
            (t, t)
        }
        CollectiveKind::Broadcast => (
            bytes / link.bandwidth + steps_ring * link.latency,
            bytes / link.bandwidth + steps_tree * link.latency,
        ),
        CollectiveKind::SendRecv => {
            let t = bytes / link.bandwidth + link.latency;
            (t, t)
        }
    };
    ring.min(tree)
}

/// Time of one point-to-point message.
pub fn p2p_time(bytes: f64, link: Link) -> f64 {
    if bytes <= 0.0 {
        return 0.0;
    }
    bytes / link.bandwidth + link.latency
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(bw: f64) -> Link {
        Link {
            bandwidth: bw,
            latency: 1e-6,
            spans_nodes: false,
        }
    }

    #[test]
    fn ring_all_reduce_moves_twice_n_minus_one_over_n_of_the_buffer() {
        let t = collective_time(CollectiveKind::AllReduce, 8e9, 8, link(1e11));
        let want = 2.0 * 7.0 / 8.0 * 8e9 / 1e11 + 14.0 * 1e-6;
        assert!((t - want).abs() < 1e-12, "{t} vs {want}");
    }

    #[test]
    fn tree_all_reduce_wins_for_tiny_messages_on_many_ranks() {
        let ring = 2.0 * 1023.0 * 1e-6;
        let t = collective_time(CollectiveKind::AllReduce, 1024.0, 1024, link(1e11));
        assert!(t < ring / 10.0, "tree {t} should beat ring latency {ring}");
    }

    #[test]
    fn a_group_of_one_rank_communicates_for_free() {
        assert_eq!(
            collective_time(CollectiveKind::AllGather, 1e9, 1, link(1e9)),
            0.0
        );
    }
}
