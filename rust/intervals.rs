//! A set of disjoint half-open `u64` ranges, merged on insert.
//!
//! The assembler uses two: chunk indices received and byte ranges written.
//! Chunks of a file mostly arrive in order, so each set is usually one range
//! and its memory follows the gaps, never a size a message declares.

use std::collections::BTreeMap;

#[derive(Debug, Default, Clone)]
pub struct IntervalSet {
    /// start -> end (exclusive); no two ranges overlap or touch.
    ranges: BTreeMap<u64, u64>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Overlap;

impl IntervalSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `[start, end)`. Fails without changing the set if any part of it is
    /// already present. An empty range is accepted and changes nothing.
    pub fn insert(&mut self, start: u64, end: u64) -> Result<(), Overlap> {
        if start >= end {
            return Ok(());
        }
        if let Some((_, &prev_end)) = self.ranges.range(..=start).next_back() {
            if prev_end > start {
                return Err(Overlap);
            }
        }
        if self.ranges.range(start..end).next().is_some() {
            return Err(Overlap);
        }
        let mut new_start = start;
        let mut new_end = end;
        if let Some((&ps, &pe)) = self.ranges.range(..start).next_back() {
            if pe == start {
                new_start = ps;
                self.ranges.remove(&ps);
            }
        }
        if let Some(ne) = self.ranges.remove(&end) {
            new_end = ne;
        }
        self.ranges.insert(new_start, new_end);
        Ok(())
    }

    pub fn contains(&self, point: u64) -> bool {
        matches!(self.ranges.range(..=point).next_back(), Some((_, &e)) if e > point)
    }

    /// End of the range that starts at or covers `point`, if `point` is covered.
    pub fn end_of_run(&self, point: u64) -> Option<u64> {
        match self.ranges.range(..=point).next_back() {
            Some((_, &e)) if e > point => Some(e),
            _ => None,
        }
    }

    /// True when the set is exactly `[start, end)`.
    pub fn is_exactly(&self, start: u64, end: u64) -> bool {
        if start == end {
            return self.ranges.is_empty();
        }
        self.ranges.len() == 1 && self.ranges.get(&start) == Some(&end)
    }

    pub fn max_end(&self) -> u64 {
        self.ranges.values().next_back().copied().unwrap_or(0)
    }

    pub fn min_start(&self) -> Option<u64> {
        self.ranges.keys().next().copied()
    }

    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(s, e)| (*s, *e))
    }

    /// The parts of `[start, end)` not in the set, in order.
    pub fn missing(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut at = start;
        let first = self.ranges.range(..=start).next_back().map(|(s, e)| (*s, *e));
        let iter = first.into_iter().chain(self.ranges.range(start + 1..end).map(|(s, e)| (*s, *e)));
        for (s, e) in iter {
            if e <= at {
                continue;
            }
            if s > at {
                out.push((at, s.min(end)));
            }
            at = at.max(e);
            if at >= end {
                break;
            }
        }
        if at < end {
            out.push((at, end));
        }
        out
    }

    /// Removes everything below `point`.
    pub fn prune_below(&mut self, point: u64) {
        let mut keep = self.ranges.split_off(&point);
        if let Some((_, &e)) = self.ranges.iter().next_back() {
            if e > point {
                keep.insert(point, e);
            }
        }
        self.ranges = keep;
    }

    /// Adds `[start, end)`, merging with whatever of it is already present.
    pub fn union(&mut self, start: u64, end: u64) {
        for (lo, hi) in self.missing(start, end) {
            let _ = self.insert(lo, hi);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn n_ranges(&self) -> usize {
        self.ranges.len()
    }

    pub fn covered(&self) -> u64 {
        self.ranges.iter().map(|(s, e)| e - s).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn merges_and_detects_overlap() {
        let mut s = IntervalSet::new();
        s.insert(10, 20).unwrap();
        s.insert(0, 10).unwrap();
        s.insert(20, 30).unwrap();
        assert!(s.is_exactly(0, 30));
        assert_eq!(s.insert(5, 6), Err(Overlap));
        assert_eq!(s.insert(29, 31), Err(Overlap));
        s.insert(40, 50).unwrap();
        assert_eq!(s.insert(35, 45), Err(Overlap));
        assert_eq!(s.n_ranges(), 2);
        assert_eq!(s.end_of_run(0), Some(30));
        assert_eq!(s.end_of_run(30), None);
        assert_eq!(s.covered(), 40);
        assert_eq!(s.max_end(), 50);
        assert_eq!(s.missing(25, 45), vec![(30, 40)]);
        assert_eq!(s.missing(25, 60), vec![(30, 40), (50, 60)]);
        s.insert(30, 40).unwrap();
        assert!(s.is_exactly(0, 50));
        assert_eq!(s.missing(0, 100), vec![(50, 100)]);
        let mut g = IntervalSet::new();
        g.insert(10, 20).unwrap();
        g.insert(30, 40).unwrap();
        assert_eq!(g.missing(0, 50), vec![(0, 10), (20, 30), (40, 50)]);
        assert_eq!(g.missing(15, 35), vec![(20, 30)]);
        assert_eq!(g.min_start(), Some(10));
        assert_eq!(g.ranges().collect::<Vec<_>>(), vec![(10, 20), (30, 40)]);
        g.union(15, 35);
        assert!(g.is_exactly(10, 40));
        g.insert(50, 60).unwrap();
        g.prune_below(20);
        assert_eq!(g.ranges().collect::<Vec<_>>(), vec![(20, 40), (50, 60)]);
        g.prune_below(45);
        assert_eq!(g.ranges().collect::<Vec<_>>(), vec![(50, 60)]);
        g.prune_below(100);
        assert!(g.is_empty());
    }

    proptest! {
        #[test]
        fn any_permutation_of_unit_ranges_merges_to_one(perm in Just((0u64..64).collect::<Vec<_>>()).prop_shuffle()) {
            let mut s = IntervalSet::new();
            for &i in &perm {
                s.insert(i, i + 1).unwrap();
                prop_assert_eq!(s.insert(i, i + 1), Err(Overlap));
            }
            prop_assert!(s.is_exactly(0, 64));
        }
    }
}
