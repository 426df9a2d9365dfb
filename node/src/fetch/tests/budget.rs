//! How `--max-memory-usage` is split between cached chunks and fetches in flight.

use super::super::MemoryBudget;

#[test]
fn an_adaptive_window_may_hold_a_third_of_memory_a_fixed_one_its_own_size() {
    const MI: u64 = 1 << 20;
    let chunk = 2 * MI;
    // The default 100M: an eighth would be 5 chunks; a third holds 15.
    let adaptive = MemoryBudget::split(100_000_000, chunk, None);
    assert_eq!(adaptive.flight_bytes, 100_000_000 / 3);
    assert_eq!(adaptive.tier_bytes, 100_000_000 - 100_000_000 / 3);
    // Plenty of memory: an eighth, more than the window needs.
    assert_eq!(
        MemoryBudget::split(1 << 30, chunk, None).flight_bytes,
        (1 << 30) / 8
    );
    // Little: never below the old fixed window's 5 chunks.
    assert_eq!(
        MemoryBudget::split(16 * MI, chunk, None).flight_bytes,
        5 * chunk
    );
    // A fixed window takes what it needs, and no third.
    assert_eq!(
        MemoryBudget::split(100_000_000, chunk, Some(4)).flight_bytes,
        100_000_000 / 8
    );
}
