//! Byte-range bookkeeping for chunked uploads: pure functions, unit-tested.

/// Adds `[start, end)` to a sorted, merged list of ranges.
pub fn insert(ranges: &mut Vec<(u64, u64)>, start: u64, end: u64) {
    if start >= end {
        return;
    }
    let (mut s, mut e) = (start, end);
    let mut out = Vec::with_capacity(ranges.len() + 1);
    let mut placed = false;
    for &(a, b) in ranges.iter() {
        if b < s {
            out.push((a, b));
        } else if a > e {
            if !placed {
                out.push((s, e));
                placed = true;
            }
            out.push((a, b));
        } else {
            s = s.min(a);
            e = e.max(b);
        }
    }
    if !placed {
        out.push((s, e));
    }
    *ranges = out;
}

/// The gaps of `[0, size)` not covered by `ranges`.
pub fn missing(ranges: &[(u64, u64)], size: u64) -> Vec<(u64, u64)> {
    let mut gaps = Vec::new();
    let mut pos = 0;
    for &(a, b) in ranges {
        if a > pos {
            gaps.push((pos, a.min(size)));
        }
        pos = pos.max(b);
    }
    if pos < size {
        gaps.push((pos, size));
    }
    gaps
}

/// The parts of `wanted` (sorted, merged) that `ranges` do not cover.
pub fn missing_of(ranges: &[(u64, u64)], wanted: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut gaps = Vec::new();
    for &(a, b) in wanted {
        let mut pos = a;
        for &(x, y) in ranges {
            if y <= pos {
                continue;
            }
            if x >= b {
                break;
            }
            if x > pos {
                gaps.push((pos, x));
            }
            pos = pos.max(y);
            if pos >= b {
                break;
            }
        }
        if pos < b {
            gaps.push((pos, b));
        }
    }
    gaps
}

/// Whether `[start, end)` lies inside one of `ranges` (sorted, merged).
pub fn contains(ranges: &[(u64, u64)], start: u64, end: u64) -> bool {
    ranges.iter().any(|&(a, b)| a <= start && end <= b)
}

/// Bytes covered by `ranges`.
pub fn covered(ranges: &[(u64, u64)]) -> u64 {
    ranges.iter().map(|(a, b)| b - a).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_of_a_partial_upload_is_what_its_parts_still_lack() {
        let wanted = [(0, 10), (20, 30), (40, 50)];
        assert_eq!(missing_of(&[], &wanted), wanted);
        assert_eq!(missing_of(&[(0, 10), (20, 30), (40, 50)], &wanted), []);
        assert_eq!(missing_of(&[(5, 25), (45, 60)], &wanted), [(0, 5), (25, 30), (40, 45)]);
        assert_eq!(
            missing_of(&[(12, 18)], &wanted),
            wanted,
            "a range between parts covers none"
        );
        assert!(contains(&wanted, 20, 30) && contains(&wanted, 41, 42));
        assert!(!contains(&wanted, 9, 11) && !contains(&wanted, 30, 31));
    }

    #[test]
    fn out_of_order_and_resent_chunks_merge() {
        let mut r = Vec::new();
        insert(&mut r, 20, 30);
        insert(&mut r, 0, 10);
        insert(&mut r, 0, 10);
        assert_eq!(missing(&r, 30), vec![(10, 20)]);
        insert(&mut r, 10, 20);
        assert_eq!(r, vec![(0, 30)]);
        assert!(missing(&r, 30).is_empty());
        assert_eq!(covered(&r), 30);
    }

    #[test]
    fn overlapping_inserts_and_tail_gap() {
        let mut r = vec![(5, 8), (12, 15)];
        insert(&mut r, 7, 13);
        assert_eq!(r, vec![(5, 15)]);
        assert_eq!(missing(&r, 20), vec![(0, 5), (15, 20)]);
        insert(&mut r, 16, 18);
        assert_eq!(r, vec![(5, 15), (16, 18)]);
    }
}
