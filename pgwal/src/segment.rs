//! WAL segment sizes and segment-number arithmetic.
//!
//! Follows the macros of `src/include/access/xlog_internal.h`: `IsValidWalSegSize`,
//! `XLogSegmentsPerXLogId`, `XLByteToSeg`, `XLByteToPrevSeg`, `XLogSegNoOffsetToRecPtr` and
//! `XLogSegmentOffset`. A segment number (`XLogSegNo`) counts segments from LSN 0, so it depends
//! on the segment size; the file name splits it into an "xlog id" and a segment within it (see
//! [`crate::name`]).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::lsn::Lsn;

/// A timeline ID (`TimeLineID`). Timeline 0 is never used by PostgreSQL; the first is 1.
pub type TimeLineId = u32;

/// `WalSegMinSize`: 1 MiB.
const MIN_BYTES: u64 = 1 << 20;
/// `WalSegMaxSize`: 1 GiB.
const MAX_BYTES: u64 = 1 << 30;
/// The span of one "xlog id", the high half of an LSN: 4 GiB.
const XLOG_ID_SPAN: u64 = 0x1_0000_0000;

/// A WAL segment size that PostgreSQL accepts (`IsValidWalSegSize`): a power of two from
/// 1 MiB to 1 GiB, chosen at `initdb --wal-segsize` time. Serializes as the byte count.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct SegmentSize(u32);

/// Why a byte count is not a valid WAL segment size. Never retryable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid WAL segment size {bytes} bytes: PostgreSQL segment sizes are powers of two \
     from 1 MiB (1048576) to 1 GiB (1073741824)"
)]
pub struct SegmentSizeError {
    /// The rejected byte count.
    pub bytes: u64,
}

impl SegmentSizeError {
    /// Always false: the same number is always invalid.
    pub const fn is_retryable(&self) -> bool {
        false
    }
}

impl SegmentSize {
    /// PostgreSQL's default, `DEFAULT_XLOG_SEG_SIZE`: 16 MiB.
    pub const DEFAULT: SegmentSize = SegmentSize(16 << 20);
    /// The smallest size PostgreSQL allows (`WalSegMinSize`).
    pub const MIN: SegmentSize = SegmentSize(MIN_BYTES as u32);
    /// The largest size PostgreSQL allows (`WalSegMaxSize`).
    pub const MAX: SegmentSize = SegmentSize(MAX_BYTES as u32);

    /// Accepts exactly the sizes of `IsValidWalSegSize`.
    pub const fn new(bytes: u64) -> Result<SegmentSize, SegmentSizeError> {
        if bytes.is_power_of_two() && bytes >= MIN_BYTES && bytes <= MAX_BYTES {
            Ok(SegmentSize(bytes as u32))
        } else {
            Err(SegmentSizeError { bytes })
        }
    }

    /// Every valid size, smallest first (1 MiB, 2 MiB, ..., 1 GiB).
    pub fn all() -> impl Iterator<Item = SegmentSize> {
        (MIN_BYTES.trailing_zeros()..=MAX_BYTES.trailing_zeros())
            .map(|shift| SegmentSize(1 << shift))
    }

    /// The size in bytes.
    pub const fn bytes(&self) -> u64 {
        self.0 as u64
    }

    /// `XLogSegmentsPerXLogId`: how many segments share one value of the name's middle field.
    /// 4096 for 1 MiB, 256 for 16 MiB, 4 for 1 GiB.
    pub const fn segments_per_xlog_id(&self) -> u64 {
        XLOG_ID_SPAN / self.bytes()
    }

    /// `XLByteToSeg`: the segment holding `lsn`.
    pub const fn segno_of(&self, lsn: Lsn) -> u64 {
        lsn.0 / self.bytes()
    }

    /// `XLByteToPrevSeg`: the segment holding the byte just before `lsn`, that is the segment a
    /// record *ending* at `lsn` lives in. PostgreSQL uses it for a backup's stop file.
    /// For `lsn` 0 (no byte before it) this returns segment 0.
    pub const fn prev_segno_of(&self, lsn: Lsn) -> u64 {
        lsn.0.saturating_sub(1) / self.bytes()
    }

    /// `XLogSegNoOffsetToRecPtr(segno, 0)`: the LSN of the first byte of segment `segno`.
    ///
    /// Like the C macro this wraps for segment numbers past the end of the 64-bit WAL space;
    /// every segment number derived from a WAL file name or an LSN is in range.
    pub const fn segment_start(&self, segno: u64) -> Lsn {
        Lsn(segno.wrapping_mul(self.bytes()))
    }

    /// `XLogSegmentOffset`: the byte offset of `lsn` within its segment.
    pub const fn offset_in_segment(&self, lsn: Lsn) -> u64 {
        lsn.0 & (self.bytes() - 1)
    }
}

impl Default for SegmentSize {
    fn default() -> Self {
        SegmentSize::DEFAULT
    }
}

impl TryFrom<u64> for SegmentSize {
    type Error = SegmentSizeError;

    fn try_from(bytes: u64) -> Result<Self, Self::Error> {
        SegmentSize::new(bytes)
    }
}

impl From<SegmentSize> for u64 {
    fn from(s: SegmentSize) -> u64 {
        s.bytes()
    }
}

impl fmt::Display for SegmentSize {
    /// `16 MiB`, `1 GiB`: how `SHOW wal_segment_size` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.bytes() == MAX_BYTES {
            f.write_str("1 GiB")
        } else {
            write!(f, "{} MiB", self.bytes() >> 20)
        }
    }
}

/// `XLByteToSeg`: the segment number holding `lsn`.
pub const fn segno_of(lsn: Lsn, size: SegmentSize) -> u64 {
    size.segno_of(lsn)
}

/// `XLogSegNoOffsetToRecPtr(segno, 0)`: the LSN at which segment `segno` starts.
pub const fn segment_start(segno: u64, size: SegmentSize) -> Lsn {
    size.segment_start(segno)
}

/// `XLogSegmentOffset`: the byte offset of `lsn` within its segment.
pub const fn offset_in_segment(lsn: Lsn, size: SegmentSize) -> u64 {
    size.offset_in_segment(lsn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn accepts_exactly_the_powers_of_two_from_1_mib_to_1_gib() {
        let valid: Vec<u64> = SegmentSize::all().map(|s| s.bytes()).collect();
        assert_eq!(valid.len(), 11);
        assert_eq!(valid.first(), Some(&MIB));
        assert_eq!(valid.last(), Some(&(1024 * MIB)));
        for b in &valid {
            assert_eq!(SegmentSize::new(*b).map(|s| s.bytes()), Ok(*b));
        }
        for b in [
            0,
            1,
            512 * 1024,
            MIB - 1,
            MIB + 1,
            3 * MIB,
            2048 * MIB,
            u64::MAX,
            1 << 40,
        ] {
            assert_eq!(
                SegmentSize::new(b),
                Err(SegmentSizeError { bytes: b }),
                "{b}"
            );
        }
        assert_eq!(SegmentSize::DEFAULT.bytes(), 16 * MIB);
        assert_eq!(SegmentSize::default(), SegmentSize::DEFAULT);
    }

    #[test]
    fn segments_per_xlog_id() {
        let per = |b| SegmentSize::new(b).map(|s| s.segments_per_xlog_id());
        assert_eq!(per(MIB), Ok(4096));
        assert_eq!(per(16 * MIB), Ok(256));
        assert_eq!(per(1024 * MIB), Ok(4));
    }

    #[test]
    fn postgresql_examples() {
        let s16 = SegmentSize::DEFAULT;
        // 0/16B3748 lies in 000000010000000000000001 with the default 16 MiB segments.
        assert_eq!(segno_of(Lsn(0x16B3748), s16), 1);
        assert_eq!(offset_in_segment(Lsn(0x16B3748), s16), 0x6B3748);
        assert_eq!(segment_start(1, s16), Lsn(0x100_0000));
        // 1/0 starts segment 256 (log 1, seg 0).
        assert_eq!(segno_of(Lsn(0x1_0000_0000), s16), 256);

        let s1 = SegmentSize::MIN;
        assert_eq!(segno_of(Lsn(0x1234_5678), s1), 0x123);
        assert_eq!(offset_in_segment(Lsn(0x1234_5678), s1), 0x45678);

        let s1g = SegmentSize::MAX;
        assert_eq!(segno_of(Lsn(0x1_C000_0000), s1g), 7);
        assert_eq!(segment_start(7, s1g), Lsn(0x1_C000_0000));
    }

    #[test]
    fn prev_segno_is_for_end_positions() {
        let s16 = SegmentSize::DEFAULT;
        assert_eq!(s16.prev_segno_of(Lsn(0x200_0000)), 1);
        assert_eq!(s16.prev_segno_of(Lsn(0x200_0001)), 2);
        assert_eq!(s16.prev_segno_of(Lsn(0)), 0);
    }

    #[test]
    fn display_and_serde() {
        assert_eq!(SegmentSize::DEFAULT.to_string(), "16 MiB");
        assert_eq!(SegmentSize::MAX.to_string(), "1 GiB");
        assert_eq!(
            serde_json::to_string(&SegmentSize::DEFAULT).unwrap(),
            "16777216"
        );
        assert_eq!(
            serde_json::from_str::<SegmentSize>("1048576").unwrap(),
            SegmentSize::MIN
        );
        assert!(serde_json::from_str::<SegmentSize>("1000000").is_err());
    }

    fn any_size() -> impl Strategy<Value = SegmentSize> {
        (20u32..=30).prop_map(|shift| SegmentSize(1 << shift))
    }

    proptest! {
        #[test]
        fn segno_of_segment_start_round_trips(size in any_size(), n in any::<u64>()) {
            let n = n % (u64::MAX / size.bytes() + 1);
            prop_assert_eq!(segno_of(segment_start(n, size), size), n);
            prop_assert_eq!(offset_in_segment(segment_start(n, size), size), 0);
        }

        #[test]
        fn lsn_is_segment_start_plus_offset(size in any_size(), v in any::<u64>()) {
            let lsn = Lsn(v);
            let start = segment_start(segno_of(lsn, size), size);
            prop_assert_eq!(start.0 + offset_in_segment(lsn, size), v);
        }
    }
}
