//! Home nodes by rendezvous (highest random weight) hashing: every node
//! ranks the live members for a key the same way, without a ring to agree
//! on, and when a member joins or leaves only the keys whose top rank it
//! takes or held move.

use flick_store::NodeRecord;

/// The members in order of preference for `key`: the first is its home,
/// the next is where it spills when the home is saturated, and so on.
pub fn rank<'a>(key: &str, nodes: &'a [NodeRecord]) -> Vec<&'a NodeRecord> {
    let mut ranked: Vec<(u64, &NodeRecord)> = nodes.iter().map(|n| (weight(&n.id, key), n)).collect();
    // Ties (astronomically rare) fall back to the id, so every node agrees.
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.id.cmp(&b.1.id)));
    ranked.into_iter().map(|(_, n)| n).collect()
}

/// The part of a cluster-wide bound `total` that the member at `position`
/// of a key's ranking (0 = home) may use: the shares of all `members` sum
/// to exactly `total`, the home's is the largest, and a bound smaller than
/// the cluster gives nothing to the members ranked last.
pub fn share(total: u32, members: usize, position: usize) -> u32 {
    let members = members.max(1) as u32;
    let position = position as u32;
    if position >= members {
        return 0;
    }
    total / members + u32::from(position < total % members)
}

/// FNV-1a over `node`, a separator and `key`, then a finaliser (splitmix64)
/// so that weights of similar ids are not correlated.
fn weight(node: &str, key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.bytes().chain(std::iter::once(0xff)).chain(key.bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            address: format!("http://{id}"),
            started_ms: 0,
            heartbeat_ms: 0,
            inflight: 0,
            instances: 0,
            version: String::new(),
        }
    }

    fn homes(nodes: &[NodeRecord], keys: &[String]) -> Vec<String> {
        keys.iter().map(|k| rank(k, nodes)[0].id.clone()).collect()
    }

    #[test]
    fn every_node_agrees_whatever_order_it_lists_members_in() {
        let a = vec![node("a"), node("b"), node("c")];
        let b = vec![node("c"), node("a"), node("b")];
        for k in ["f", "g", "hello", "x-1"] {
            let ra: Vec<_> = rank(k, &a).iter().map(|n| n.id.clone()).collect();
            let rb: Vec<_> = rank(k, &b).iter().map(|n| n.id.clone()).collect();
            assert_eq!(ra, rb, "{k}");
            assert_eq!(ra.len(), 3);
        }
    }

    #[test]
    fn keys_spread_and_only_the_leavers_keys_move() {
        let three = vec![node("n1"), node("n2"), node("n3")];
        let keys: Vec<String> = (0..3000).map(|i| format!("fn-{i}")).collect();
        let before = homes(&three, &keys);
        for id in ["n1", "n2", "n3"] {
            let n = before.iter().filter(|h| *h == id).count();
            assert!((800..1200).contains(&n), "{id} is home of {n} of 3000 keys");
        }
        let two = vec![node("n1"), node("n3")];
        let after = homes(&two, &keys);
        for (b, a) in before.iter().zip(&after) {
            if b != "n2" {
                assert_eq!(a, b, "a key whose home stayed must not move");
            }
        }
    }

    #[test]
    fn shares_sum_to_the_bound_and_favour_the_home() {
        for total in [0, 1, 2, 3, 4, 10, 100, 1000] {
            for members in 1..=5 {
                let shares: Vec<u32> = (0..members).map(|p| share(total, members, p)).collect();
                assert_eq!(shares.iter().sum::<u32>(), total, "{total} over {members}: {shares:?}");
                assert!(shares.windows(2).all(|w| w[0] >= w[1]), "{shares:?}");
            }
        }
        assert_eq!(share(1, 3, 0), 1);
        assert_eq!(share(1, 3, 1), 0);
        assert_eq!(share(5, 3, 7), 0);
    }
}
