//! Summaries of an archive listing: per timeline, which runs of segments are present and which
//! are missing between them. A gap means point-in-time recovery cannot cross it on that
//! timeline (recovery reads segments in order, `XLogFileReadAnyTLI` in `xlogrecovery.c`).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::name::WalFileName;
use crate::segment::{SegmentSize, TimeLineId};

/// The segments of one timeline.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineSummary {
    pub tli: TimeLineId,
    /// Runs of consecutive segments, as (first, last) names, inclusive, in WAL order.
    pub ranges: Vec<(String, String)>,
    /// Missing runs between two ranges, as (first missing, last missing) names, inclusive.
    pub gaps: Vec<(String, String)>,
    /// Number of distinct complete segments.
    pub segments: u64,
    /// Whether the timeline's `.history` file is present.
    pub has_history: bool,
}

#[derive(Default)]
struct Acc {
    segnos: BTreeSet<u64>,
    has_history: bool,
}

/// Summarizes `names` per timeline, in timeline order.
///
/// Only complete segments count towards ranges; a timeline appears as soon as any of its files
/// does (a `.history`, `.partial` or `.backup` file alone gives an entry without ranges).
/// Segment names impossible with `size` (see [`WalFileName::segno`]) are ignored.
pub fn summarize<'a>(
    names: impl IntoIterator<Item = &'a WalFileName>,
    size: SegmentSize,
) -> Vec<TimelineSummary> {
    let mut by_tli: BTreeMap<TimeLineId, Acc> = BTreeMap::new();
    for name in names {
        let acc = by_tli.entry(name.timeline()).or_default();
        match name {
            WalFileName::Segment { .. } => {
                if let Some(segno) = name.segno(size) {
                    acc.segnos.insert(segno);
                }
            }
            WalFileName::History { .. } => acc.has_history = true,
            WalFileName::Partial { .. } | WalFileName::Backup { .. } => {}
        }
    }

    by_tli
        .into_iter()
        .map(|(tli, acc)| {
            let mut runs: Vec<(u64, u64)> = Vec::new();
            for &n in &acc.segnos {
                match runs.last_mut() {
                    Some((_, last)) if *last + 1 == n => *last = n,
                    _ => runs.push((n, n)),
                }
            }
            timeline_summary(tli, &runs, acc.has_history, size)
        })
        .collect()
}

/// The summary of timeline `tli` from its runs of consecutive segment numbers (inclusive,
/// ascending, neither overlapping nor adjacent).
pub fn timeline_summary(
    tli: TimeLineId,
    runs: &[(u64, u64)],
    has_history: bool,
    size: SegmentSize,
) -> TimelineSummary {
    let seg_name = |n: u64| WalFileName::segment(tli, n, size).to_string();
    TimelineSummary {
        tli,
        ranges: runs
            .iter()
            .map(|&(a, b)| (seg_name(a), seg_name(b)))
            .collect(),
        gaps: runs
            .windows(2)
            .map(|w| (seg_name(w[0].1 + 1), seg_name(w[1].0 - 1)))
            .collect(),
        segments: runs.iter().map(|&(a, b)| b - a + 1).sum(),
        has_history,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<WalFileName> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn pair(a: &str, b: &str) -> (String, String) {
        (a.to_owned(), b.to_owned())
    }

    #[test]
    fn ranges_and_gaps_per_timeline() {
        let list = names(&[
            "000000010000000000000003",
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000002", // duplicates count once
            "0000000100000000000000FF",
            "000000010000000100000000", // crosses an xlog id boundary: contiguous with ..FF
            "000000010000000100000005",
            "000000010000000000000004.partial",
            "000000010000000000000002.00000028.backup",
            "00000002.history",
            "000000020000000100000005",
            "00000003.history",
        ]);
        let s = summarize(&list, SegmentSize::DEFAULT);
        assert_eq!(s.len(), 3);
        assert_eq!(
            s[0],
            TimelineSummary {
                tli: 1,
                ranges: vec![
                    pair("000000010000000000000001", "000000010000000000000003"),
                    pair("0000000100000000000000FF", "000000010000000100000000"),
                    pair("000000010000000100000005", "000000010000000100000005"),
                ],
                gaps: vec![
                    pair("000000010000000000000004", "0000000100000000000000FE"),
                    pair("000000010000000100000001", "000000010000000100000004"),
                ],
                segments: 6,
                has_history: false,
            }
        );
        assert_eq!(s[1].tli, 2);
        assert!(s[1].has_history);
        assert_eq!(s[1].segments, 1);
        assert_eq!(
            s[2],
            TimelineSummary {
                tli: 3,
                has_history: true,
                ..Default::default()
            }
        );
    }

    #[test]
    fn segment_size_changes_contiguity() {
        // With 1 GiB segments there are 4 per xlog id: ...00000003 is followed by ...0100000000.
        let list = names(&[
            "000000010000000000000003",
            "000000010000000100000000",
            "000000010000000000000004",
        ]);
        let s = summarize(&list, SegmentSize::MAX);
        assert_eq!(
            s[0].ranges,
            vec![pair("000000010000000000000003", "000000010000000100000000")]
        );
        assert_eq!(
            s[0].segments, 2,
            "...00000004 is impossible with 1 GiB segments"
        );
    }

    #[test]
    fn empty_listing() {
        assert!(summarize(&Vec::new(), SegmentSize::DEFAULT).is_empty());
        let only_partial = names(&["000000050000000000000001.partial"]);
        let s = summarize(&only_partial, SegmentSize::DEFAULT);
        assert_eq!(
            s,
            vec![TimelineSummary {
                tli: 5,
                ..Default::default()
            }]
        );
        assert_eq!(
            serde_json::to_value(&s[0]).unwrap()["ranges"],
            serde_json::json!([])
        );
    }
}
