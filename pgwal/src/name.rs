//! WAL file names, exactly as PostgreSQL writes them into `pg_wal/` and hands to
//! `archive_command`.
//!
//! The formats come from `src/include/access/xlog_internal.h`:
//!
//! | kind | C macro | form |
//! | --- | --- | --- |
//! | segment | `XLogFileName` | `TTTTTTTTXXXXXXXXYYYYYYYY` |
//! | partial segment | `XLogFileName` + `.partial` | `TTTTTTTTXXXXXXXXYYYYYYYY.partial` |
//! | timeline history | `TLHistoryFileName` | `TTTTTTTT.history` |
//! | backup history | `BackupHistoryFileName` | `TTTTTTTTXXXXXXXXYYYYYYYY.OOOOOOOO.backup` |
//!
//! `T` is the timeline, `X` the "xlog id" (segment number / segments per xlog id), `Y` the
//! segment within it and `O` the backup start offset in its segment, each printed with `%08X`.
//!
//! **Only uppercase hex is accepted.** PostgreSQL always writes uppercase (and its own
//! `IsXLogFileName` only accepts uppercase); accepting lowercase would let two names address
//! one file in the archive. Anything that could act as a path (`/`, `\`, `..`) is rejected
//! before anything else, so a parsed name is always safe to use as a single path component.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::lsn::{echo, Lsn};
use crate::segment::{SegmentSize, TimeLineId};

/// A parsed WAL file name. [`Display`](fmt::Display) gives back the exact name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WalFileName {
    /// A complete segment, `TTTTTTTTXXXXXXXXYYYYYYYY`.
    Segment { tli: u32, log: u32, seg: u32 },
    /// The last, incomplete segment of a timeline, renamed at promotion (`.partial`).
    Partial { tli: u32, log: u32, seg: u32 },
    /// A timeline history file, `TTTTTTTT.history`.
    History { tli: u32 },
    /// A backup history file, `TTTTTTTTXXXXXXXXYYYYYYYY.OOOOOOOO.backup`. `tli` is the
    /// backup's *stop* timeline while `log`/`seg`/`offset` locate its *start* LSN
    /// (`do_pg_backup_stop` in `xlog.c`).
    Backup {
        tli: u32,
        log: u32,
        seg: u32,
        offset: u32,
    },
}

/// The kind of a [`WalFileName`], without its numbers. Serializes in lowercase.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WalFileKind {
    Segment,
    Partial,
    History,
    Backup,
}

impl WalFileKind {
    /// `segment`, `partial`, `history` or `backup`, as in the serde form.
    pub const fn as_str(self) -> &'static str {
        match self {
            WalFileKind::Segment => "segment",
            WalFileKind::Partial => "partial",
            WalFileKind::History => "history",
            WalFileKind::Backup => "backup",
        }
    }
}

impl fmt::Display for WalFileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a string is not a WAL file name PostgreSQL could have written. Never retryable.
///
/// Every message quotes the (shortened) name and says what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WalNameError {
    #[error("invalid WAL file name: the name is empty")]
    Empty,
    #[error(
        "invalid WAL file name {name:?}: it contains a path separator ('/' or '\\'); \
         a WAL file name is a single file name such as 000000010000000000000001"
    )]
    PathSeparator { name: String },
    #[error("invalid WAL file name {name:?}: it contains \"..\"")]
    DotDot { name: String },
    #[error("invalid WAL file name {name:?}: it contains a control character")]
    ControlCharacter { name: String },
    #[error(
        "invalid WAL file name {name:?}: unknown suffix {suffix:?}; expected a segment \
         (TTTTTTTTXXXXXXXXYYYYYYYY), or a name ending in .partial, .history or .OOOOOOOO.backup"
    )]
    UnknownSuffix { name: String, suffix: String },
    #[error(
        "invalid WAL file name {name:?}: {field} should be {expected} hexadecimal digits, \
         found {found} characters"
    )]
    BadLength {
        name: String,
        field: NameField,
        expected: usize,
        found: usize,
    },
    #[error("invalid WAL file name {name:?}: {field} contains characters that are not hexadecimal digits")]
    NotHex { name: String, field: NameField },
    #[error(
        "invalid WAL file name {name:?}: {field} uses lowercase hex digits; PostgreSQL writes \
         WAL file names in uppercase only"
    )]
    LowercaseHex { name: String, field: NameField },
    #[error("invalid WAL file name {name:?}: timeline 0 does not exist (PostgreSQL timelines start at 1)")]
    TimelineZero { name: String },
}

impl WalNameError {
    /// Always false: the same name is always invalid.
    pub const fn is_retryable(&self) -> bool {
        false
    }
}

/// Which part of a name an error is about.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum NameField {
    /// `TTTTTTTTXXXXXXXXYYYYYYYY` of a segment, partial or backup name.
    SegmentPart,
    /// `TTTTTTTT` of a history file name.
    Timeline,
    /// `OOOOOOOO` of a backup history file name.
    BackupOffset,
}

impl fmt::Display for NameField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameField::SegmentPart => "the segment part (TTTTTTTTXXXXXXXXYYYYYYYY)",
            NameField::Timeline => "the timeline part (TTTTTTTT)",
            NameField::BackupOffset => "the backup offset part (OOOOOOOO)",
        })
    }
}

/// Checks that `s` is exactly `len` uppercase hex digits.
fn check_hex(name: &str, s: &str, field: NameField, len: usize) -> Result<(), WalNameError> {
    // Non-ASCII first: a multi-byte character would make the length message confusing.
    if !s.is_ascii() {
        return Err(WalNameError::NotHex {
            name: echo(name),
            field,
        });
    }
    if s.len() != len {
        return Err(WalNameError::BadLength {
            name: echo(name),
            field,
            expected: len,
            found: s.len(),
        });
    }
    if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(WalNameError::NotHex {
            name: echo(name),
            field,
        });
    }
    if s.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(WalNameError::LowercaseHex {
            name: echo(name),
            field,
        });
    }
    Ok(())
}

/// Reads 8 hex digits already checked by [`check_hex`].
fn hex8(s: &str) -> u32 {
    // check_hex guarantees ASCII hex digits, so slicing is on char boundaries and the parse
    // cannot fail; 0 is a harmless fallback that is never reached.
    u32::from_str_radix(s, 16).unwrap_or(0)
}

/// Parses `TTTTTTTTXXXXXXXXYYYYYYYY` into (tli, log, seg).
fn segment_part(name: &str, s: &str) -> Result<(u32, u32, u32), WalNameError> {
    check_hex(name, s, NameField::SegmentPart, 24)?;
    Ok((hex8(&s[0..8]), hex8(&s[8..16]), hex8(&s[16..24])))
}

impl FromStr for WalFileName {
    type Err = WalNameError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        // Path-like names first, so that the message is about the real danger.
        if name.is_empty() {
            return Err(WalNameError::Empty);
        }
        if name.contains(['/', '\\']) {
            return Err(WalNameError::PathSeparator { name: echo(name) });
        }
        if name.contains("..") {
            return Err(WalNameError::DotDot { name: echo(name) });
        }
        if name.chars().any(char::is_control) {
            return Err(WalNameError::ControlCharacter { name: echo(name) });
        }

        let parsed = match name.split_once('.') {
            None => {
                let (tli, log, seg) = segment_part(name, name)?;
                WalFileName::Segment { tli, log, seg }
            }
            Some((base, "partial")) => {
                let (tli, log, seg) = segment_part(name, base)?;
                WalFileName::Partial { tli, log, seg }
            }
            Some((base, "history")) => {
                check_hex(name, base, NameField::Timeline, 8)?;
                WalFileName::History { tli: hex8(base) }
            }
            Some((base, rest)) => match rest.strip_suffix(".backup") {
                Some(offset) => {
                    let (tli, log, seg) = segment_part(name, base)?;
                    check_hex(name, offset, NameField::BackupOffset, 8)?;
                    WalFileName::Backup {
                        tli,
                        log,
                        seg,
                        offset: hex8(offset),
                    }
                }
                None => {
                    return Err(WalNameError::UnknownSuffix {
                        name: echo(name),
                        suffix: echo(rest),
                    });
                }
            },
        };
        if parsed.timeline() == 0 {
            return Err(WalNameError::TimelineZero { name: echo(name) });
        }
        Ok(parsed)
    }
}

impl fmt::Display for WalFileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            WalFileName::Segment { tli, log, seg } => write!(f, "{tli:08X}{log:08X}{seg:08X}"),
            WalFileName::Partial { tli, log, seg } => {
                write!(f, "{tli:08X}{log:08X}{seg:08X}.partial")
            }
            WalFileName::History { tli } => write!(f, "{tli:08X}.history"),
            WalFileName::Backup {
                tli,
                log,
                seg,
                offset,
            } => {
                write!(f, "{tli:08X}{log:08X}{seg:08X}.{offset:08X}.backup")
            }
        }
    }
}

impl WalFileName {
    /// `XLogFileName`: the name of segment `segno` on timeline `tli`.
    ///
    /// Like the C macro, the xlog id is truncated to 32 bits for segment numbers beyond the
    /// 64-bit WAL space; segment numbers computed from real LSNs are always in range.
    pub fn segment(tli: TimeLineId, segno: u64, size: SegmentSize) -> WalFileName {
        let per = size.segments_per_xlog_id();
        WalFileName::Segment {
            tli,
            log: (segno / per) as u32,
            seg: (segno % per) as u32,
        }
    }

    /// `TLHistoryFileName`: the history file of timeline `tli`.
    pub fn history(tli: TimeLineId) -> WalFileName {
        WalFileName::History { tli }
    }

    /// `BackupHistoryFileName`: the backup history file of a backup that started at `start` and
    /// stopped on timeline `stop_tli`.
    pub fn backup(stop_tli: TimeLineId, start: Lsn, size: SegmentSize) -> WalFileName {
        match WalFileName::segment(stop_tli, size.segno_of(start), size) {
            WalFileName::Segment { tli, log, seg } => WalFileName::Backup {
                tli,
                log,
                seg,
                // The offset is below the segment size, at most 1 GiB: it fits.
                offset: size.offset_in_segment(start) as u32,
            },
            other => other,
        }
    }

    /// The timeline in the name (`TTTTTTTT`).
    pub const fn timeline(&self) -> TimeLineId {
        match *self {
            WalFileName::Segment { tli, .. }
            | WalFileName::Partial { tli, .. }
            | WalFileName::History { tli }
            | WalFileName::Backup { tli, .. } => tli,
        }
    }

    /// What sort of file this is.
    pub const fn kind(&self) -> WalFileKind {
        match self {
            WalFileName::Segment { .. } => WalFileKind::Segment,
            WalFileName::Partial { .. } => WalFileKind::Partial,
            WalFileName::History { .. } => WalFileKind::History,
            WalFileName::Backup { .. } => WalFileKind::Backup,
        }
    }

    /// True for segments and partial segments, the files holding WAL pages.
    pub const fn is_segment_like(&self) -> bool {
        matches!(
            self,
            WalFileName::Segment { .. } | WalFileName::Partial { .. }
        )
    }

    /// `(log, seg)` for the kinds that name a segment.
    const fn log_seg(&self) -> Option<(u32, u32)> {
        match *self {
            WalFileName::Segment { log, seg, .. }
            | WalFileName::Partial { log, seg, .. }
            | WalFileName::Backup { log, seg, .. } => Some((log, seg)),
            WalFileName::History { .. } => None,
        }
    }

    /// The segment number this name designates for segment size `size` (the inverse of
    /// `XLogFromFileName`). `None` for history files, and `None` when the `YYYYYYYY` part is
    /// at least [`SegmentSize::segments_per_xlog_id`]: PostgreSQL never writes such a name
    /// with that segment size.
    pub const fn segno(&self, size: SegmentSize) -> Option<u64> {
        match self.log_seg() {
            Some((log, seg)) => {
                let per = size.segments_per_xlog_id();
                if (seg as u64) < per {
                    Some(log as u64 * per + seg as u64)
                } else {
                    None
                }
            }
            None => None,
        }
    }

    /// Whether PostgreSQL could write this name with segment size `size`, that is whether the
    /// `YYYYYYYY` part is below [`SegmentSize::segments_per_xlog_id`]. History file names carry
    /// no segment number and are valid for every size.
    pub const fn segment_name_is_valid_for(&self, size: SegmentSize) -> bool {
        match self {
            WalFileName::History { .. } => true,
            _ => self.segno(size).is_some(),
        }
    }

    /// The plain segment name sharing this name's `TTTTTTTTXXXXXXXXYYYYYYYY` part: the name
    /// itself for a segment, the completed name for a partial segment, and the segment a
    /// backup history file is named after. `None` for history files.
    pub fn segment_file(&self) -> Option<WalFileName> {
        match *self {
            WalFileName::Segment { tli, log, seg }
            | WalFileName::Partial { tli, log, seg }
            | WalFileName::Backup { tli, log, seg, .. } => {
                Some(WalFileName::Segment { tli, log, seg })
            }
            WalFileName::History { .. } => None,
        }
    }

    /// The first LSN this file is about: the start of the segment for segments and partial
    /// segments, the backup's start LSN for backup history files. `None` for history files and
    /// for names impossible with `size` (segment part or backup offset out of range).
    pub fn start_lsn(&self, size: SegmentSize) -> Option<Lsn> {
        let start = size.segment_start(self.segno(size)?);
        match *self {
            WalFileName::Backup { offset, .. } if u64::from(offset) >= size.bytes() => None,
            WalFileName::Backup { offset, .. } => start.checked_add(u64::from(offset)),
            _ => Some(start),
        }
    }
}

impl Serialize for WalFileName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for WalFileName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor;

        impl serde::de::Visitor<'_> for NameVisitor {
            type Value = WalFileName;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a PostgreSQL WAL file name such as \"000000010000000000000001\"")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<WalFileName, E> {
                v.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_str(NameVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(s: &str) -> Result<WalFileName, WalNameError> {
        s.parse()
    }

    #[test]
    fn parses_every_kind() {
        assert_eq!(
            parse("000000010000000000000001"),
            Ok(WalFileName::Segment {
                tli: 1,
                log: 0,
                seg: 1
            })
        );
        assert_eq!(
            parse("0000000A00000002000000FF.partial"),
            Ok(WalFileName::Partial {
                tli: 10,
                log: 2,
                seg: 0xFF
            })
        );
        assert_eq!(
            parse("00000002.history"),
            Ok(WalFileName::History { tli: 2 })
        );
        assert_eq!(
            parse("000000010000000000000002.00000028.backup"),
            Ok(WalFileName::Backup {
                tli: 1,
                log: 0,
                seg: 2,
                offset: 0x28
            })
        );
        assert_eq!(
            parse("FFFFFFFFFFFFFFFFFFFFFFFF"),
            Ok(WalFileName::Segment {
                tli: u32::MAX,
                log: u32::MAX,
                seg: u32::MAX
            })
        );
    }

    #[test]
    fn kinds_timelines_and_display() {
        for (s, kind, tli) in [
            ("000000010000000000000001", WalFileKind::Segment, 1),
            ("000000030000000000000001.partial", WalFileKind::Partial, 3),
            ("0000000C.history", WalFileKind::History, 12),
            (
                "000000020000000000000002.00000028.backup",
                WalFileKind::Backup,
                2,
            ),
        ] {
            let n = parse(s).unwrap();
            assert_eq!(n.kind(), kind);
            assert_eq!(n.timeline(), tli);
            assert_eq!(n.to_string(), s);
            assert_eq!(
                n.is_segment_like(),
                matches!(kind, WalFileKind::Segment | WalFileKind::Partial)
            );
        }
        assert_eq!(
            serde_json::to_string(&WalFileKind::Partial).unwrap(),
            "\"partial\""
        );
        assert_eq!(WalFileKind::Backup.to_string(), "backup");
    }

    #[test]
    fn rejects_with_precise_errors() {
        use WalNameError as E;
        type Check = fn(&WalNameError) -> bool;
        let cases: Vec<(&str, Check)> = vec![
            ("", |e| matches!(e, E::Empty)),
            ("00000001000000000000001", |e| {
                matches!(
                    e,
                    E::BadLength {
                        expected: 24,
                        found: 23,
                        field: NameField::SegmentPart,
                        ..
                    }
                )
            }),
            ("0000000100000000000000011", |e| {
                matches!(e, E::BadLength { found: 25, .. })
            }),
            ("00000001000000000000000G", |e| {
                matches!(e, E::NotHex { .. })
            }),
            ("00000001000000000000000a", |e| {
                matches!(e, E::LowercaseHex { .. })
            }),
            ("000000010000000000000001.PARTIAL", |e| {
                matches!(e, E::UnknownSuffix { .. })
            }),
            ("000000010000000000000001.gz", |e| {
                matches!(e, E::UnknownSuffix { .. })
            }),
            ("000000010000000000000001.partial.zst", |e| {
                matches!(e, E::UnknownSuffix { .. })
            }),
            ("000000000000000000000001", |e| {
                matches!(e, E::TimelineZero { .. })
            }),
            ("00000000.history", |e| matches!(e, E::TimelineZero { .. })),
            ("0000000a.history", |e| {
                matches!(
                    e,
                    E::LowercaseHex {
                        field: NameField::Timeline,
                        ..
                    }
                )
            }),
            ("000000010000000000000001.history", |e| {
                matches!(
                    e,
                    E::BadLength {
                        field: NameField::Timeline,
                        expected: 8,
                        found: 24,
                        ..
                    }
                )
            }),
            ("000000010000000000000002.0000002.backup", |e| {
                matches!(
                    e,
                    E::BadLength {
                        field: NameField::BackupOffset,
                        ..
                    }
                )
            }),
            ("000000010000000000000002.0000002x.backup", |e| {
                matches!(
                    e,
                    E::NotHex {
                        field: NameField::BackupOffset,
                        ..
                    }
                )
            }),
            ("00000002.history/../x", |e| {
                matches!(e, E::PathSeparator { .. })
            }),
            ("..", |e| matches!(e, E::DotDot { .. })),
            ("000000010000000000000001..backup", |e| {
                matches!(e, E::DotDot { .. })
            }),
            ("a\\b", |e| matches!(e, E::PathSeparator { .. })),
            ("000000010000000000000001\n", |e| {
                matches!(e, E::ControlCharacter { .. })
            }),
            ("00000001000000000000000\u{0}", |e| {
                matches!(e, E::ControlCharacter { .. })
            }),
            (" 00000001000000000000001", |e| {
                matches!(e, E::NotHex { .. })
            }),
            ("00000001000000000000000é", |e| {
                matches!(e, E::NotHex { .. })
            }),
            (".history", |e| matches!(e, E::BadLength { found: 0, .. })),
        ];
        for (s, ok) in cases {
            let e = parse(s).expect_err(s);
            assert!(ok(&e), "{s:?} gave {e:?}");
            assert!(!e.is_retryable());
            assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn messages_name_the_problem() {
        let m = parse("00000001000000000000000a").unwrap_err().to_string();
        assert!(m.contains("uppercase"), "{m}");
        let m = parse("../etc/passwd").unwrap_err().to_string();
        assert!(m.contains("path separator"), "{m}");
        let m = parse("000000000000000000000001").unwrap_err().to_string();
        assert!(m.contains("timeline 0"), "{m}");
    }

    #[test]
    fn segment_numbers_follow_xlog_internal() {
        let s16 = SegmentSize::DEFAULT;
        let s1 = SegmentSize::MIN;
        let s1g = SegmentSize::MAX;
        // 1 MiB segments: segment 0x123 of xlog id 0 is named ...00000123.
        assert_eq!(
            WalFileName::segment(1, 0x123, s1).to_string(),
            "000000010000000000000123"
        );
        assert_eq!(
            WalFileName::segment(1, s1.segno_of(Lsn(0x1234_5678)), s1).to_string(),
            "000000010000000000000123"
        );
        // 16 MiB: 0/16B3748 is in segment 1; 256 segments per xlog id.
        assert_eq!(
            WalFileName::segment(1, s16.segno_of(Lsn(0x16B3748)), s16).to_string(),
            "000000010000000000000001"
        );
        assert_eq!(
            WalFileName::segment(1, 256, s16).to_string(),
            "000000010000000100000000"
        );
        // 1 GiB: 4 segments per xlog id, so YYYYYYYY only takes 0..=3.
        assert_eq!(
            WalFileName::segment(2, 7, s1g).to_string(),
            "000000020000000100000003"
        );
        let n = parse("000000010000000000000004").unwrap();
        assert_eq!(n.segno(s1g), None);
        assert!(!n.segment_name_is_valid_for(s1g));
        assert_eq!(n.segno(s16), Some(4));
        assert!(n.segment_name_is_valid_for(s16));
        let n = parse("0000000100000000000000FF").unwrap();
        assert_eq!(n.segno(s16), Some(255));
        assert_eq!(parse("000000010000000000000100").unwrap().segno(s16), None);
        assert_eq!(parse("00000001.history").unwrap().segno(s16), None);
        assert!(parse("00000001.history")
            .unwrap()
            .segment_name_is_valid_for(s1g));
    }

    #[test]
    fn backup_names_and_start_lsns() {
        let s16 = SegmentSize::DEFAULT;
        let b = WalFileName::backup(1, Lsn(0x200_0028), s16);
        assert_eq!(b.to_string(), "000000010000000000000002.00000028.backup");
        assert_eq!(b.start_lsn(s16), Some(Lsn(0x200_0028)));
        assert_eq!(
            b.segment_file().unwrap().to_string(),
            "000000010000000000000002"
        );
        assert_eq!(
            parse("000000010000000000000002.01000000.backup")
                .unwrap()
                .start_lsn(s16),
            None
        );
        assert_eq!(
            parse("000000010000000100000002.partial")
                .unwrap()
                .start_lsn(s16),
            Some(Lsn(0x1_0200_0000))
        );
        assert_eq!(WalFileName::history(3).to_string(), "00000003.history");
        assert_eq!(WalFileName::history(3).start_lsn(s16), None);
    }

    #[test]
    fn serde_uses_the_name() {
        let n = parse("000000010000000000000001.partial").unwrap();
        let json = serde_json::to_string(&n).unwrap();
        assert_eq!(json, "\"000000010000000000000001.partial\"");
        assert_eq!(serde_json::from_str::<WalFileName>(&json).unwrap(), n);
        assert!(serde_json::from_str::<WalFileName>("\"../x\"").is_err());
    }

    fn any_name() -> impl Strategy<Value = WalFileName> {
        let tli = 1..=u32::MAX;
        prop_oneof![
            (tli.clone(), any::<u32>(), any::<u32>())
                .prop_map(|(tli, log, seg)| WalFileName::Segment { tli, log, seg }),
            (tli.clone(), any::<u32>(), any::<u32>())
                .prop_map(|(tli, log, seg)| WalFileName::Partial { tli, log, seg }),
            tli.clone().prop_map(|tli| WalFileName::History { tli }),
            (tli, any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(tli, log, seg, offset)| {
                WalFileName::Backup {
                    tli,
                    log,
                    seg,
                    offset,
                }
            }),
        ]
    }

    fn any_size() -> impl Strategy<Value = SegmentSize> {
        (20u32..=30).prop_map(|shift| SegmentSize::new(1 << shift).unwrap())
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(n in any_name()) {
            let s = n.to_string();
            prop_assert_eq!(parse(&s), Ok(n));
        }

        #[test]
        fn accepted_names_are_canonical(s in "[0-9A-Fa-g]{7,25}(\\.(partial|history|backup|[0-9A-F]{8}\\.backup))?") {
            if let Ok(n) = parse(&s) {
                prop_assert_eq!(n.to_string(), s);
            }
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,50}") {
            let _ = parse(&s);
        }

        #[test]
        fn segment_segno_round_trip(size in any_size(), tli in 1..=u32::MAX, segno in any::<u64>()) {
            // Every segment number reachable by a 64-bit LSN.
            let segno = segno % (u64::MAX / size.bytes() + 1);
            let n = WalFileName::segment(tli, segno, size);
            prop_assert_eq!(n.segno(size), Some(segno));
            prop_assert!(n.segment_name_is_valid_for(size));
            prop_assert_eq!(n.start_lsn(size), Some(size.segment_start(segno)));
            prop_assert_eq!(parse(&n.to_string()), Ok(n));
        }
    }
}
