//! Ownership at scale, simulated (no processes): for 3, 10, 100 and 1,000 members, how evenly
//! rendezvous hashing spreads chunk ownership, how many keys one join or one leave moves, and
//! what one ownership lookup costs. Prints a table (`--nocapture`) and asserts the bounds the
//! design relies on; lookup cost is printed only (no timing assertions).

use std::time::Instant;

use casserole_node::cluster::{ring, Member};

/// Chunk keys as the fetcher names them: `<64 hex version>-<index>`; 64 objects × chunks.
fn keys(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let object = i / 256;
            format!(
                "{:064x}-{}",
                (object as u128 + 1) * 0x9e37_79b9_7f4a_7c15,
                i % 256
            )
        })
        .collect()
}

/// Members named like default ids: their peering URLs.
fn members(n: usize) -> Vec<Member> {
    (0..n)
        .map(|i| {
            let url = format!(
                "http://10.{}.{}.{}:8000",
                i / 65536,
                (i / 256) % 256,
                i % 256
            );
            Member::new(url.clone(), url)
        })
        .collect()
}

fn owner_ids(keys: &[String], ms: &[Member]) -> Vec<usize> {
    keys.iter()
        .map(|k| {
            let o = ring::owner(k, ms).expect("members");
            ms.iter()
                .position(|m| m.id == o.id)
                .expect("owner is a member")
        })
        .collect()
}

struct Row {
    members: usize,
    keys: usize,
    max_share: f64,
    min_share: f64,
    /// Standard deviation of the per-member key counts over that of a uniform random
    /// assignment (binomial): 1.0 means as even as chance allows.
    spread: f64,
    join_moved: f64,
    leave_moved: f64,
    owner_ns: f64,
    owners_ns: f64,
}

fn simulate(n: usize, key_count: usize) -> Row {
    let ks = keys(key_count);
    let ms = members(n + 1);
    let (before, joined) = (&ms[..n], &ms[..]);
    let a = owner_ids(&ks, before);

    let mut per = vec![0usize; n];
    for &o in &a {
        per[o] += 1;
    }
    let ideal = key_count as f64 / n as f64;
    let max_share = *per.iter().max().unwrap() as f64 / ideal;
    let min_share = *per.iter().min().unwrap() as f64 / ideal;
    let var = per.iter().map(|&c| (c as f64 - ideal).powi(2)).sum::<f64>() / n as f64;
    let binomial_var = ideal * (1.0 - 1.0 / n as f64);
    let spread = (var / binomial_var).sqrt();

    // Join: a key moves only to the newcomer.
    let b = owner_ids(&ks, joined);
    let mut join_moved = 0;
    for (x, y) in a.iter().zip(&b) {
        if x != y {
            assert_eq!(*y, n, "n={n}: a key moved to a member that did not join");
            join_moved += 1;
        }
    }
    // Leave (member 0): only its keys move.
    let left = &before[1..];
    let c = owner_ids(&ks, left);
    let mut leave_moved = 0;
    for (x, y) in a.iter().zip(&c) {
        if *x == 0 {
            leave_moved += 1;
        } else {
            assert_eq!(*x, y + 1, "n={n}: a surviving member's key moved");
        }
    }

    let lookups = 2000;
    for k in ks.iter().take(200) {
        std::hint::black_box(ring::owners(k, before)); // warm-up
    }
    let t = Instant::now();
    for k in ks.iter().take(lookups) {
        std::hint::black_box(ring::owner(k, before));
    }
    let owner_ns = t.elapsed().as_nanos() as f64 / lookups as f64;
    let t = Instant::now();
    for k in ks.iter().take(lookups) {
        std::hint::black_box(ring::owners(k, before));
    }
    let owners_ns = t.elapsed().as_nanos() as f64 / lookups as f64;

    Row {
        members: n,
        keys: key_count,
        max_share,
        min_share,
        spread,
        join_moved: join_moved as f64 / key_count as f64,
        leave_moved: leave_moved as f64 / key_count as f64,
        owner_ns,
        owners_ns,
    }
}

#[test]
fn ownership_spreads_evenly_and_moves_little_at_every_scale() {
    println!(
        "| members | keys | max share | min share | σ / binomial σ | moved by a join (ideal) | moved by a leave (ideal) | owner() | owners() (failover order) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (n, key_count) in [(3, 60_000), (10, 60_000), (100, 60_000), (1000, 60_000)] {
        let r = simulate(n, key_count);
        println!(
            "| {} | {} | {:.2}× | {:.2}× | {:.2} | {:.4} ({:.4}) | {:.4} ({:.4}) | {:.1} µs | {:.1} µs |",
            r.members,
            r.keys,
            r.max_share,
            r.min_share,
            r.spread,
            r.join_moved,
            1.0 / (n + 1) as f64,
            r.leave_moved,
            1.0 / n as f64,
            r.owner_ns / 1000.0,
            r.owners_ns / 1000.0,
        );
        // Shares are binomial: allow 5 standard deviations of the per-member key count.
        let ideal = r.keys as f64 / n as f64;
        let slack = 5.0 * (ideal * (1.0 - 1.0 / n as f64)).sqrt() / ideal;
        assert!(
            r.max_share <= 1.0 + slack,
            "n={n}: max share {:.2}",
            r.max_share
        );
        assert!(
            r.min_share >= 1.0 - slack,
            "n={n}: min share {:.2}",
            r.min_share
        );
        // The estimate of σ from n counts is itself noisy (≈ 1/√(2(n−1)) relative error).
        let spread_bound = 1.0 + 3.5 / (2.0 * (n as f64 - 1.0)).sqrt();
        assert!(
            r.spread <= spread_bound,
            "n={n}: less even than chance ({:.2} > {spread_bound:.2})",
            r.spread
        );
        // One join moves ~1/(n+1) of the keys, one leave ~1/n: never a reshuffle.
        let join_ideal = 1.0 / (n + 1) as f64;
        let leave_ideal = 1.0 / n as f64;
        assert!(
            (r.join_moved - join_ideal).abs() <= 0.5 * join_ideal,
            "n={n}: join moved {:.4}",
            r.join_moved
        );
        assert!(
            (r.leave_moved - leave_ideal).abs() <= 0.5 * leave_ideal,
            "n={n}: leave moved {:.4}",
            r.leave_moved
        );
    }
}
