//! How the process's allocator holds chunk memory (glibc's arenas, and its heap prefaulted on
//! request), set once at start-up before any thread runs. Written by hand: no crate tunes
//! glibc's allocator, and the node's chunks (one allocation each, freed when the memory tier
//! evicts them) are what it is tuned for. Not glibc (musl): nothing to do.

/// One arena for the whole process.
///
/// glibc gives threads that allocate at once arenas of their own, up to eight per core, and
/// memory freed in one arena is reused only by allocations from it. Chunks are allocated on
/// whichever worker thread their bytes arrive on and freed on whichever one drops them last, so
/// the memory tier's evictions left free memory in some arenas while others grew: measured,
/// 200 downloads of 1 GiB of distinct objects through a 256 MiB node peaked at 387–388 MiB of
/// RSS against 303–319 MiB with one arena, at the same CPU per hit and per cold chunk (an
/// `M_MMAP_THRESHOLD` below the chunk size bounded it too, 311–315 MiB, but paid a page fault
/// per 4 KiB of every chunk: 1.3–1.9× the CPU of a cold transfer). `MALLOC_ARENA_MAX` in the
/// environment still decides, as glibc documents.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt changes allocator parameters only; called before any thread starts.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

/// glibc's largest `M_MMAP_THRESHOLD` (64-bit): chunks smaller than this can live in the heap.
const MMAP_THRESHOLD_MAX: u64 = 32 << 20;

/// Touches `budget` bytes of heap in `chunk_size` blocks and frees them into the heap, which
/// keeps them: the memory tier's chunks then fill memory the kernel has already handed over.
///
/// Memory new to a process is zeroed by the kernel on its first write, page by page: on a node
/// that has just started, a cold transfer spent 30 % of its CPU in `clear_page` and the page
/// faults around it (`perf`, 128 MiB from an origin 50 ms away): paired against the same build
/// without this, such transfers took 0.84× the time on a new node (1 GiB budget, the tier's
/// share prefaulted). Paid here once, before the node serves (well under a second for 1 GiB),
/// the cost leaves the request path. Off by default (`--prefault-memory`): the memory held from
/// the start raised the peak RSS of the memory benchmark from 310–317 to 319–323 MiB for a
/// 256 MiB budget, past the 64 MiB above the budget that pods are given.
///
/// glibc's own thresholds are left as they adapt (setting any of them by `mallopt` freezes
/// them all: the heap then also took every buffer up to the threshold, and a node's peak RSS
/// grew by 10 MiB in the memory benchmark). So the heap is shaped instead: a first chunk-sized
/// block is mapped and unmapped, which raises glibc's mmap threshold above a chunk (as the
/// node's first evicted chunk would); the blocks then come from the heap, one after the other,
/// and the last one is kept (leaked: one chunk of the budget), so the others, freed, are one
/// free region below it, which glibc does not trim (it gives back only the top of the heap).
/// A chunk size of 32 MiB and more (glibc's largest mmap threshold) is always mapped: nothing
/// to gain. Returns how many bytes were touched.
pub fn prefault(budget: u64, chunk_size: u64) -> u64 {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if chunk_size == 0 || chunk_size >= MMAP_THRESHOLD_MAX || budget < 2 * chunk_size {
            return 0;
        }
        let chunk = chunk_size as usize;
        drop(std::hint::black_box(vec![1u8; chunk]));
        let mut blocks: Vec<Vec<u8>> = Vec::with_capacity((budget / chunk_size) as usize);
        blocks.extend((0..budget / chunk_size).map(|_| touched(chunk)));
        let touched = blocks.iter().map(|b| b.len() as u64).sum();
        let top = blocks.pop().expect("two blocks at least");
        drop(blocks);
        std::mem::forget(top);
        touched
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = (budget, chunk_size);
        0
    }
}

/// A block of `len` bytes of which every page has been written.
fn touched(len: usize) -> Vec<u8> {
    let mut block = vec![0u8; len];
    // `vec!` of zeroes may come from `calloc`, which skips writing memory it knows is fresh:
    // one write a page makes the kernel hand each page over now.
    for i in (0..len).step_by(4096) {
        block[i] = 1;
    }
    std::hint::black_box(&block);
    block
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touched_blocks_are_written_on_every_page() {
        let block = touched(3 * 4096 + 10);
        assert_eq!(block.len(), 3 * 4096 + 10);
        assert_eq!(block.iter().filter(|&&b| b == 1).count(), 4);
    }

    #[test]
    fn nothing_is_touched_where_the_heap_would_not_keep_it() {
        assert_eq!(prefault(1 << 20, 0), 0);
        assert_eq!(prefault(1 << 20, 2 << 20), 0, "a budget below one chunk");
        assert_eq!(
            prefault(1 << 30, 32 << 20),
            0,
            "chunks the heap never holds"
        );
    }
}
