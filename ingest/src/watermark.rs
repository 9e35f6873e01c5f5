//! The ack watermark: the highest seq W such that every seq in (0, W] is handled (committed,
//! refused for good, or declared lost by the agent), plus the handled ranges above it.
//!
//! Records arrive out of order (three topics, several ingest instances), so a handled seq above
//! a hole is remembered as a range; when the hole fills, the watermark jumps over every range
//! that now touches it. The state lives in the device's ingest-state row, locked for the batch.

/// Handled sequence numbers of one device: all of `(0, watermark]`, and `ranges` above it
/// (inclusive, sorted, disjoint, not adjacent to each other or to the watermark).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HandledSeqs {
    watermark: i64,
    ranges: Vec<(i64, i64)>,
}

impl HandledSeqs {
    /// From stored state; normalizes ranges that are stale, unsorted or touching.
    pub fn new(watermark: i64, ranges: Vec<(i64, i64)>) -> Self {
        let mut seqs = Self {
            watermark: watermark.max(0),
            ranges: Vec::with_capacity(ranges.len()),
        };
        for (from, to) in ranges {
            seqs.insert_range(from, to);
        }
        seqs
    }

    /// The watermark.
    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    /// The ranges above the watermark.
    pub fn ranges(&self) -> &[(i64, i64)] {
        &self.ranges
    }

    /// Whether `seq` is already handled.
    pub fn contains(&self, seq: i64) -> bool {
        seq <= self.watermark || self.range_index(seq).is_ok()
    }

    /// Whether handling `seq` would add a range (it touches neither the watermark nor a range).
    pub fn opens_new_range(&self, seq: i64) -> bool {
        if self.contains(seq) || seq == self.watermark + 1 {
            return false;
        }
        !self
            .ranges
            .iter()
            .any(|&(from, to)| seq + 1 == from || seq.checked_sub(1) == Some(to))
    }

    /// Marks `seq` handled.
    pub fn insert(&mut self, seq: i64) {
        self.insert_range(seq, seq);
    }

    /// Marks `from..=to` handled (ignored when empty), then advances the watermark.
    pub fn insert_range(&mut self, from: i64, to: i64) {
        let from = from.max(self.watermark.saturating_add(1));
        if from > to {
            return;
        }
        let mut merged = (from, to);
        let mut kept = Vec::with_capacity(self.ranges.len() + 1);
        for &(a, b) in &self.ranges {
            let touches = a <= merged.1.saturating_add(1) && merged.0 <= b.saturating_add(1);
            if touches {
                merged = (merged.0.min(a), merged.1.max(b));
            } else {
                kept.push((a, b));
            }
        }
        let at = kept.partition_point(|&(a, _)| a < merged.0);
        kept.insert(at, merged);
        self.ranges = kept;
        self.advance();
    }

    fn advance(&mut self) {
        while let Some(&(from, to)) = self.ranges.first() {
            if from > self.watermark.saturating_add(1) {
                break;
            }
            self.watermark = self.watermark.max(to);
            self.ranges.remove(0);
        }
    }

    fn range_index(&self, seq: i64) -> Result<usize, usize> {
        self.ranges.binary_search_by(|&(from, to)| {
            if to < seq {
                std::cmp::Ordering::Less
            } else if from > seq {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn in_order_seqs_move_the_watermark() {
        let mut seqs = HandledSeqs::default();
        for seq in 1..=5 {
            seqs.insert(seq);
        }
        assert_eq!(seqs.watermark(), 5);
        assert!(seqs.ranges().is_empty());
    }

    #[test]
    fn a_hole_holds_the_watermark_until_it_fills() {
        let mut seqs = HandledSeqs::default();
        seqs.insert(1);
        seqs.insert(3);
        seqs.insert(5);
        assert_eq!(seqs.watermark(), 1);
        assert_eq!(seqs.ranges(), &[(3, 3), (5, 5)]);
        assert!(seqs.opens_new_range(7));
        assert!(!seqs.opens_new_range(4));
        assert!(!seqs.opens_new_range(2));
        seqs.insert(2);
        assert_eq!(seqs.watermark(), 3);
        seqs.insert(4);
        assert_eq!(seqs.watermark(), 5);
        assert!(seqs.ranges().is_empty());
    }

    #[test]
    fn a_declared_loss_fills_a_hole() {
        let mut seqs = HandledSeqs::new(10, vec![(21, 30)]);
        seqs.insert_range(11, 20);
        assert_eq!(seqs.watermark(), 30);
    }

    #[test]
    fn stale_and_empty_ranges_are_ignored() {
        let mut seqs = HandledSeqs::new(10, vec![(2, 5), (12, 11)]);
        assert_eq!(seqs, HandledSeqs::new(10, vec![]));
        seqs.insert(3);
        assert_eq!(seqs.watermark(), 10);
        assert!(seqs.contains(3) && !seqs.contains(11));
    }

    #[test]
    fn extreme_seqs_do_not_overflow() {
        let mut seqs = HandledSeqs::default();
        seqs.insert(i64::MAX);
        assert!(seqs.contains(i64::MAX));
        assert!(!seqs.opens_new_range(i64::MAX - 1));
        seqs.insert_range(1, i64::MAX - 1);
        assert_eq!(seqs.watermark(), i64::MAX);
    }

    proptest! {
        /// Whatever the order, the watermark is the end of the contiguous prefix of what was
        /// inserted, and `contains` agrees with a plain set.
        #[test]
        fn watermark_matches_a_plain_set(
            seqs in proptest::collection::vec(1i64..200, 0..300),
            restart_at in 0usize..300,
        ) {
            let mut handled = HandledSeqs::default();
            let mut set = std::collections::BTreeSet::new();
            for (i, seq) in seqs.iter().enumerate() {
                if i == restart_at {
                    // Stored and reloaded mid-way, as the database does between batches.
                    handled = HandledSeqs::new(handled.watermark(), handled.ranges().to_vec());
                }
                handled.insert(*seq);
                set.insert(*seq);
            }
            let mut expected = 0;
            while set.contains(&(expected + 1)) {
                expected += 1;
            }
            prop_assert_eq!(handled.watermark(), expected);
            for seq in 1..=200 {
                prop_assert_eq!(handled.contains(seq), set.contains(&seq));
            }
            for pair in handled.ranges().windows(2) {
                prop_assert!(pair[0].1 + 1 < pair[1].0, "ranges touch: {:?}", pair);
            }
        }
    }
}
