//! The byte ranges of a chunked upload (`ranges`): chunks of any offsets
//! and lengths, out of order and resent, against a byte map. After every
//! chunk the ranges are sorted, non-empty, apart (merged when they touch),
//! cover exactly the bytes received, and the missing ranges are exactly the
//! rest of the file. Files are at most 512 bytes: the range logic does not
//! depend on size, and the byte-map check costs O(size) per chunk.
#![no_main]

use icllm_canister::ranges::{covered, insert, missing};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((head, ops)) = data.split_first_chunk::<2>() else { return };
    let size = 1 + u16::from_le_bytes(*head) as u64 % 512;
    let mut ranges = Vec::new();
    let mut received = vec![false; size as usize];
    for op in ops.chunks_exact(4) {
        let start = u16::from_le_bytes([op[0], op[1]]) as u64 % size;
        let end = (start + u16::from_le_bytes([op[2], op[3]]) as u64 % (size + 1)).min(size);
        insert(&mut ranges, start, end);
        received[start as usize..end as usize].fill(true);

        for w in ranges.windows(2) {
            assert!(w[0].1 < w[1].0, "ranges overlap or touch: {ranges:?}");
        }
        assert!(ranges.iter().all(|&(a, b)| a < b && b <= size), "{ranges:?}");
        assert_eq!(covered(&ranges), received.iter().filter(|&&r| r).count() as u64);
        let mut expected_missing = Vec::new();
        let mut i = 0;
        while i < size as usize {
            if received[i] {
                i += 1;
                continue;
            }
            let gap = i;
            while i < size as usize && !received[i] {
                i += 1;
            }
            expected_missing.push((gap as u64, i as u64));
        }
        assert_eq!(missing(&ranges, size), expected_missing);
    }
});
