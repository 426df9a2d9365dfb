//! Ownership by rendezvous (highest-random-weight) hashing.
//!
//! Every node computes `score(member, key)` for every live member and ranks
//! members by it. Rendezvous hashing was chosen over a token ring because it
//! needs no virtual nodes to spread keys evenly, gives a full failover order
//! for free, and moves only the keys of a member that leaves (and about
//! 1/(N+1) of the keys to a member that joins).
//!
//! The hash must give the same answer on every node and every build, or nodes
//! would disagree on owners: xxh3 (fixed algorithm, seed 0) is used, never
//! std's `DefaultHasher`, whose output is unspecified across releases.

use super::Member;
use xxhash_rust::xxh3::Xxh3;

/// Rendezvous score of `member_id` for `key`: xxh3-64 of `id ‖ 0x00 ‖ key`.
///
/// The 0 byte separates the two parts so that ("ab", "c") and ("a", "bc")
/// hash differently (ids never contain NUL).
pub fn score(member_id: &str, key: &str) -> u64 {
    let mut h = Xxh3::new();
    h.update(member_id.as_bytes());
    h.update(&[0]);
    h.update(key.as_bytes());
    h.digest()
}

/// Members in rendezvous order for `key`: the first is the owner, the next
/// ones are the failover order. Ties (astronomically rare) break by id so the
/// order is total and identical on every node.
pub fn owners<'a>(key: &str, members: &'a [Member]) -> Vec<&'a Member> {
    let mut ranked: Vec<(u64, &Member)> = members.iter().map(|m| (score(&m.id, key), m)).collect();
    ranked.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.id.cmp(&b.1.id)));
    ranked.into_iter().map(|(_, m)| m).collect()
}

/// The owner of `key` (first of [`owners`]) without sorting; `None` when
/// `members` is empty.
pub fn owner<'a>(key: &str, members: &'a [Member]) -> Option<&'a Member> {
    members
        .iter()
        .map(|m| (score(&m.id, key), m))
        // max_by keeps the last of equal elements, so compare ids reversed to
        // make the smallest id win a tie, exactly as in `owners`.
        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.id.cmp(&a.1.id)))
        .map(|(_, m)| m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const KEYS: usize = 10_000;

    fn members(n: usize) -> Vec<Member> {
        (0..n)
            .map(|i| {
                Member::new(
                    format!("node-{i}"),
                    format!("http://127.0.0.1:{}", 8000 + i),
                )
            })
            .collect()
    }

    fn keys() -> Vec<String> {
        (0..KEYS)
            .map(|i| format!("object-{i:x}/chunk-{}", i % 97))
            .collect()
    }

    fn owner_ids(keys: &[String], ms: &[Member]) -> Vec<String> {
        keys.iter()
            .map(|k| owner(k, ms).unwrap().id.clone())
            .collect()
    }

    #[test]
    fn score_is_stable_across_builds() {
        // Pinned values: if these change, nodes of different builds would
        // disagree on ownership, which must never happen silently.
        assert_eq!(score("node-0", "k"), {
            let mut v = b"node-0".to_vec();
            v.push(0);
            v.push(b'k');
            xxhash_rust::xxh3::xxh3_64(&v)
        });
        assert_eq!(score("a", ""), xxhash_rust::xxh3::xxh3_64(b"a\0"));
        assert_ne!(score("ab", "c"), score("a", "bc"));
    }

    #[test]
    fn owner_matches_first_of_owners_and_order_is_input_independent() {
        let ms = members(7);
        let mut rev = ms.clone();
        rev.reverse();
        for k in keys().iter().take(2000) {
            let a = owners(k, &ms);
            let b = owners(k, &rev);
            assert_eq!(a.len(), 7);
            assert_eq!(a, b, "order must not depend on the input order");
            assert_eq!(owner(k, &ms), Some(a[0]));
        }
        assert!(owner("k", &[]).is_none());
        assert!(owners("k", &[]).is_empty());
    }

    #[test]
    fn ties_break_by_id() {
        // Same id twice cannot happen in a member set, but two members with
        // equal scores must order by id: simulate with duplicate ids/urls.
        let ms = vec![Member::new("x", "http://b"), Member::new("x", "http://a")];
        let o = owners("k", &ms);
        assert_eq!(o.len(), 2);
        assert_eq!(owner("k", &ms).unwrap().id, "x");
    }

    #[test]
    fn distribution_is_roughly_even() {
        let ks = keys();
        for n in 3..=10 {
            let ms = members(n);
            let mut count: HashMap<String, usize> = HashMap::new();
            for id in owner_ids(&ks, &ms) {
                *count.entry(id).or_default() += 1;
            }
            let ideal = KEYS as f64 / n as f64;
            for m in &ms {
                let c = *count.get(&m.id).unwrap_or(&0) as f64;
                assert!(
                    (c - ideal).abs() <= 0.25 * ideal,
                    "n={n}: {} owns {c}, ideal {ideal:.0}",
                    m.id
                );
            }
        }
    }

    #[test]
    fn adding_a_member_moves_about_one_over_n_plus_one() {
        let ks = keys();
        for n in 3..=10 {
            let before = members(n);
            let after = members(n + 1);
            let new_id = &after[n].id;
            let (a, b) = (owner_ids(&ks, &before), owner_ids(&ks, &after));
            let mut moved = 0;
            for (x, y) in a.iter().zip(&b) {
                if x != y {
                    moved += 1;
                    // A key only ever moves to the newcomer.
                    assert_eq!(y, new_id);
                }
            }
            let ideal = KEYS as f64 / (n + 1) as f64;
            assert!(
                (moved as f64 - ideal).abs() <= 0.30 * ideal,
                "n={n}: moved {moved}, ideal {ideal:.0}"
            );
        }
    }

    #[test]
    fn removing_a_member_moves_only_its_keys() {
        let ks = keys();
        for n in 3..=10 {
            let before = members(n);
            for gone in 0..n {
                let mut after = before.clone();
                let removed = after.remove(gone);
                let (a, b) = (owner_ids(&ks, &before), owner_ids(&ks, &after));
                for (x, y) in a.iter().zip(&b) {
                    if *x != removed.id {
                        assert_eq!(x, y, "a surviving owner's key moved");
                    } else {
                        assert_ne!(*y, removed.id);
                    }
                }
            }
        }
    }

    #[test]
    fn failover_order_skips_a_removed_member() {
        // The second owner becomes the owner when the first leaves: the
        // failover order is the ownership after removal.
        let ms = members(5);
        for k in keys().iter().take(1000) {
            let order = owners(k, &ms);
            let rest: Vec<Member> = ms.iter().filter(|m| m.id != order[0].id).cloned().collect();
            assert_eq!(owner(k, &rest).unwrap().id, order[1].id);
        }
    }
}
