//! Backup history files (`TTTTTTTTXXXXXXXXYYYYYYYY.OOOOOOOO.backup`).
//!
//! `do_pg_backup_stop` (`src/backend/access/transam/xlog.c`; the text is built by
//! `build_backup_content` in `xlogbackup.c` since PostgreSQL 16) writes one into `pg_wal/` at the
//! end of every base backup, and the archiver ships it like a segment:
//!
//! ```text
//! START WAL LOCATION: 0/2000028 (file 000000010000000000000002)
//! STOP WAL LOCATION: 0/2000100 (file 000000010000000000000002)
//! CHECKPOINT LOCATION: 0/2000060
//! BACKUP METHOD: streamed
//! BACKUP FROM: primary
//! START TIME: 2024-01-01 00:00:00 UTC
//! LABEL: nightly
//! START TIMELINE: 1
//! STOP TIME: 2024-01-01 00:00:01 UTC
//! STOP TIMELINE: 1
//! ```
//!
//! The start file is named with the start timeline and the segment holding the start LSN
//! (`XLogFileName(..., starttli, XLByteToSeg(startpoint))`); the stop file with the stop timeline
//! and the segment holding the byte before the stop LSN (`XLByteToPrevSeg`). The history file's
//! own name uses the **stop** timeline with the start segment and the start LSN's offset in it
//! (`BackupHistoryFilePath(histfilepath, stoptli, _logSegNo, startpoint, ...)`), so after a
//! promotion during a backup taken from a standby the name's timeline differs from the start
//! file's.
//!
//! Lines this parser does not know (`CHECKPOINT LOCATION`, `BACKUP METHOD`, the PostgreSQL 17
//! `INCREMENTAL FROM ...` lines, future additions) are ignored; a known line that appears twice
//! is an error, since it would mean the label smuggled in a forged line.

use crate::lsn::{echo, Lsn};
use crate::name::WalFileName;
use crate::segment::{SegmentSize, TimeLineId};

/// The fields of a backup history file that wal-archive uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupHistory {
    /// `START WAL LOCATION`: where WAL replay must start to restore the backup.
    pub start_lsn: Lsn,
    /// The segment holding `start_lsn`, on the start timeline.
    pub start_file: String,
    /// `STOP WAL LOCATION`: the backup is consistent once replay has passed this point.
    pub stop_lsn: Lsn,
    /// The segment holding the last byte before `stop_lsn`, on the stop timeline.
    pub stop_file: String,
    /// `LABEL`, as given to `pg_backup_start` or `pg_basebackup -l`.
    pub label: Option<String>,
    /// `START TIMELINE` (PostgreSQL 11 and later).
    pub start_timeline: Option<TimeLineId>,
    /// `STOP TIMELINE` (PostgreSQL 11 and later).
    pub stop_timeline: Option<TimeLineId>,
}

/// Why a backup history file is invalid, or does not match its name. Never retryable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BackupHistoryError {
    #[error("backup history file is not valid UTF-8 (at byte {offset})")]
    InvalidUtf8 { offset: usize },
    #[error(
        "backup history file contains a NUL byte at byte {offset}; PostgreSQL never writes one"
    )]
    NulByte { offset: usize },
    #[error("backup history file has no {field:?} line; it is not what pg_backup_stop writes")]
    Missing { field: &'static str },
    #[error("backup history file has a second {field:?} line at line {line}")]
    Duplicate { field: &'static str, line: usize },
    #[error(
        "backup history file line {line} ({text:?}): expected \"{field}: X/Y (file \
         TTTTTTTTXXXXXXXXYYYYYYYY)\""
    )]
    BadLocation {
        field: &'static str,
        line: usize,
        text: String,
    },
    #[error(
        "backup history file line {line} ({text:?}): expected \"{field}: \" and a timeline number"
    )]
    BadTimeline {
        field: &'static str,
        line: usize,
        text: String,
    },
    #[error("backup history file: STOP WAL LOCATION {stop} is before START WAL LOCATION {start}")]
    StopBeforeStart { start: Lsn, stop: Lsn },
    #[error("backup history file: {field} file {file} is not on timeline {timeline}, which the file also states")]
    TimelineMismatch {
        field: &'static str,
        file: String,
        timeline: TimeLineId,
    },
    #[error(
        "backup history file: {field} {lsn} does not lie in its file {file} with {size} segments"
    )]
    LocationNotInFile {
        field: &'static str,
        lsn: Lsn,
        file: String,
        size: SegmentSize,
    },
    #[error(
        "backup history file: START WAL LOCATION {lsn} does not lie in its file {file} with any \
         valid segment size"
    )]
    StartNotInFileForAnySize { lsn: Lsn, file: String },
    #[error("{name} is not a backup history file name (TTTTTTTTXXXXXXXXYYYYYYYY.OOOOOOOO.backup)")]
    NotBackupName { name: String },
    #[error(
        "backup history file {name} is named after segment {name_segment}, but its content says \
         the backup started in {start_file}: the file's content does not match its name"
    )]
    NameSegmentMismatch {
        name: String,
        name_segment: String,
        start_file: String,
    },
    #[error(
        "backup history file {name} is on timeline {name_tli}, but its content says the backup \
         stopped on timeline {stop_timeline}: the file's content does not match its name"
    )]
    NameTimelineMismatch {
        name: String,
        name_tli: TimeLineId,
        stop_timeline: TimeLineId,
    },
    #[error(
        "backup history file {name} has offset {name_offset:08X}, but START WAL LOCATION {start_lsn} \
         is at offset {expected:08X} of its segment: the file's content does not match its name"
    )]
    NameOffsetMismatch {
        name: String,
        name_offset: u32,
        start_lsn: Lsn,
        expected: u64,
    },
}

impl BackupHistoryError {
    /// Always false: the same content and name always fail the same way.
    pub const fn is_retryable(&self) -> bool {
        false
    }
}

/// Parses raw bytes: rejects invalid UTF-8 and NUL bytes, then [`parse_backup_history`].
pub fn parse_backup_history_bytes(bytes: &[u8]) -> Result<BackupHistory, BackupHistoryError> {
    if let Some(offset) = bytes.iter().position(|b| *b == 0) {
        return Err(BackupHistoryError::NulByte { offset });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| BackupHistoryError::InvalidUtf8 {
        offset: e.valid_up_to(),
    })?;
    parse_backup_history(text)
}

const START_WAL: &str = "START WAL LOCATION";
const STOP_WAL: &str = "STOP WAL LOCATION";
const LABEL: &str = "LABEL";
const START_TLI: &str = "START TIMELINE";
const STOP_TLI: &str = "STOP TIMELINE";

/// Parses `X/Y (file NAME)` where NAME is a segment name.
fn parse_location(value: &str) -> Option<(Lsn, WalFileName)> {
    let (lsn, rest) = value.split_once(' ')?;
    let file = rest.strip_prefix("(file ")?.strip_suffix(')')?;
    let file: WalFileName = file.parse().ok()?;
    if !matches!(file, WalFileName::Segment { .. }) {
        return None;
    }
    Some((lsn.parse().ok()?, file))
}

/// Sets `slot` once; a second value for the same field is an error.
fn set_once<T>(
    slot: &mut Option<T>,
    value: T,
    field: &'static str,
    line: usize,
) -> Result<(), BackupHistoryError> {
    if slot.is_some() {
        return Err(BackupHistoryError::Duplicate { field, line });
    }
    *slot = Some(value);
    Ok(())
}

/// Parses the text of a backup history file (see the module documentation for the format).
///
/// Besides the syntax it checks what must hold for any file PostgreSQL writes: the stop LSN is
/// not before the start LSN, and the start and stop files are on the start and stop timelines
/// when those lines are present.
pub fn parse_backup_history(text: &str) -> Result<BackupHistory, BackupHistoryError> {
    let mut start: Option<(Lsn, WalFileName)> = None;
    let mut stop: Option<(Lsn, WalFileName)> = None;
    let mut label: Option<String> = None;
    let mut start_tli: Option<TimeLineId> = None;
    let mut stop_tli: Option<TimeLineId> = None;

    for (index, raw) in text.split('\n').enumerate() {
        let line = index + 1;
        let content = raw.strip_suffix('\r').unwrap_or(raw);
        let Some((key, value)) = content.split_once(':') else {
            continue;
        };
        let value = value.strip_prefix(' ').unwrap_or(value);
        match key {
            START_WAL | STOP_WAL => {
                let field = if key == START_WAL {
                    START_WAL
                } else {
                    STOP_WAL
                };
                let loc = parse_location(value).ok_or_else(|| BackupHistoryError::BadLocation {
                    field,
                    line,
                    text: echo(content),
                })?;
                let slot = if field == START_WAL {
                    &mut start
                } else {
                    &mut stop
                };
                set_once(slot, loc, field, line)?;
            }
            START_TLI | STOP_TLI => {
                let field = if key == START_TLI {
                    START_TLI
                } else {
                    STOP_TLI
                };
                let tli = value
                    .trim_end()
                    .parse::<TimeLineId>()
                    .ok()
                    .filter(|t| *t != 0 && value.starts_with(|c: char| c.is_ascii_digit()))
                    .ok_or_else(|| BackupHistoryError::BadTimeline {
                        field,
                        line,
                        text: echo(content),
                    })?;
                let slot = if field == START_TLI {
                    &mut start_tli
                } else {
                    &mut stop_tli
                };
                set_once(slot, tli, field, line)?;
            }
            LABEL => set_once(&mut label, value.to_owned(), LABEL, line)?,
            _ => {}
        }
    }

    let (start_lsn, start_file) = start.ok_or(BackupHistoryError::Missing { field: START_WAL })?;
    let (stop_lsn, stop_file) = stop.ok_or(BackupHistoryError::Missing { field: STOP_WAL })?;
    if stop_lsn < start_lsn {
        return Err(BackupHistoryError::StopBeforeStart {
            start: start_lsn,
            stop: stop_lsn,
        });
    }
    for (field, file, tli) in [
        (START_WAL, &start_file, start_tli),
        (STOP_WAL, &stop_file, stop_tli),
    ] {
        if let Some(tli) = tli {
            if file.timeline() != tli {
                return Err(BackupHistoryError::TimelineMismatch {
                    field,
                    file: file.to_string(),
                    timeline: tli,
                });
            }
        }
    }
    Ok(BackupHistory {
        start_lsn,
        start_file: start_file.to_string(),
        stop_lsn,
        stop_file: stop_file.to_string(),
        label,
        start_timeline: start_tli,
        stop_timeline: stop_tli,
    })
}

/// Whether, with segment size `size`, `lsn` lies in segment `file` and `offset` is its offset.
fn consistent_with(size: SegmentSize, lsn: Lsn, file: &WalFileName, offset: Option<u32>) -> bool {
    file.segno(size) == Some(size.segno_of(lsn))
        && offset.is_none_or(|o| u64::from(o) == size.offset_in_segment(lsn))
}

/// Checks that a backup history file's content matches its name `name`, as
/// `BackupHistoryFilePath` in `do_pg_backup_stop` names it:
///
/// * the name is a `.backup` name whose `XXXXXXXXYYYYYYYY` part is the start file's;
/// * its timeline is the stop timeline (when the file states it), otherwise not below the
///   start file's timeline;
/// * with a known segment size: the start LSN lies in the start file, the stop LSN in the stop
///   file, and the name's offset is the start LSN's offset in its segment. Without one, some
///   valid segment size must make the start LSN, start file and offset agree.
pub fn check_backup_history_name(
    name: &WalFileName,
    h: &BackupHistory,
    size: Option<SegmentSize>,
) -> Result<(), BackupHistoryError> {
    let WalFileName::Backup {
        tli,
        log,
        seg,
        offset,
    } = *name
    else {
        return Err(BackupHistoryError::NotBackupName {
            name: name.to_string(),
        });
    };
    // parse_backup_history only builds values from valid segment names, but the fields are
    // public: a hand-made value is checked like any other input.
    let start_file: WalFileName =
        h.start_file
            .parse()
            .map_err(|_| BackupHistoryError::BadLocation {
                field: START_WAL,
                line: 0,
                text: echo(&h.start_file),
            })?;
    let stop_file: WalFileName =
        h.stop_file
            .parse()
            .map_err(|_| BackupHistoryError::BadLocation {
                field: STOP_WAL,
                line: 0,
                text: echo(&h.stop_file),
            })?;
    let WalFileName::Segment {
        tli: start_tli,
        log: start_log,
        seg: start_seg,
    } = start_file
    else {
        return Err(BackupHistoryError::BadLocation {
            field: START_WAL,
            line: 0,
            text: echo(&h.start_file),
        });
    };

    if (log, seg) != (start_log, start_seg) {
        return Err(BackupHistoryError::NameSegmentMismatch {
            name: name.to_string(),
            name_segment: format!("{log:08X}{seg:08X}"),
            start_file: h.start_file.clone(),
        });
    }
    match h.stop_timeline {
        Some(stop_timeline) if stop_timeline != tli => {
            return Err(BackupHistoryError::NameTimelineMismatch {
                name: name.to_string(),
                name_tli: tli,
                stop_timeline,
            });
        }
        None if tli < start_tli => {
            return Err(BackupHistoryError::NameTimelineMismatch {
                name: name.to_string(),
                name_tli: tli,
                stop_timeline: start_tli,
            });
        }
        _ => {}
    }

    match size {
        Some(size) => {
            if !consistent_with(size, h.start_lsn, &start_file, None) {
                return Err(BackupHistoryError::LocationNotInFile {
                    field: START_WAL,
                    lsn: h.start_lsn,
                    file: h.start_file.clone(),
                    size,
                });
            }
            // XLByteToPrevSeg names the stop file; accept XLByteToSeg too, which only differs
            // when the stop LSN falls exactly on a segment boundary.
            let stop_segno = stop_file.segno(size);
            if stop_segno != Some(size.prev_segno_of(h.stop_lsn))
                && stop_segno != Some(size.segno_of(h.stop_lsn))
            {
                return Err(BackupHistoryError::LocationNotInFile {
                    field: STOP_WAL,
                    lsn: h.stop_lsn,
                    file: h.stop_file.clone(),
                    size,
                });
            }
            let expected = size.offset_in_segment(h.start_lsn);
            if u64::from(offset) != expected {
                return Err(BackupHistoryError::NameOffsetMismatch {
                    name: name.to_string(),
                    name_offset: offset,
                    start_lsn: h.start_lsn,
                    expected,
                });
            }
        }
        None => {
            if !SegmentSize::all().any(|s| consistent_with(s, h.start_lsn, &start_file, None)) {
                return Err(BackupHistoryError::StartNotInFileForAnySize {
                    lsn: h.start_lsn,
                    file: h.start_file.clone(),
                });
            }
            if !SegmentSize::all()
                .any(|s| consistent_with(s, h.start_lsn, &start_file, Some(offset)))
            {
                return Err(BackupHistoryError::NameOffsetMismatch {
                    name: name.to_string(),
                    name_offset: offset,
                    start_lsn: h.start_lsn,
                    // Every valid size is a multiple of 1 MiB, so this much is known anyway.
                    expected: h.start_lsn.0 & ((1 << 20) - 1),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What PostgreSQL 15 wrote for `pg_basebackup -l nightly` (times shortened).
    const PG15: &str = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
        STOP WAL LOCATION: 0/2000100 (file 000000010000000000000002)\n\
        CHECKPOINT LOCATION: 0/2000060\n\
        BACKUP METHOD: streamed\n\
        BACKUP FROM: primary\n\
        START TIME: 2024-01-01 00:00:00 UTC\n\
        LABEL: nightly\n\
        START TIMELINE: 1\n\
        STOP TIME: 2024-01-01 00:00:01 UTC\n\
        STOP TIMELINE: 1\n";

    fn name(s: &str) -> WalFileName {
        s.parse().unwrap()
    }

    #[test]
    fn parses_postgresql_15_output() {
        let h = parse_backup_history(PG15).unwrap();
        assert_eq!(
            h,
            BackupHistory {
                start_lsn: Lsn(0x2000028),
                start_file: "000000010000000000000002".into(),
                stop_lsn: Lsn(0x2000100),
                stop_file: "000000010000000000000002".into(),
                label: Some("nightly".into()),
                start_timeline: Some(1),
                stop_timeline: Some(1),
            }
        );
        assert_eq!(parse_backup_history_bytes(PG15.as_bytes()), Ok(h));
    }

    #[test]
    fn tolerates_old_and_new_versions() {
        // Minimal (pre-11 had no timelines) and with PostgreSQL 17's incremental lines, CRLF.
        let text = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\r\n\
            STOP WAL LOCATION: 0/3000000 (file 000000010000000000000002)\r\n\
            INCREMENTAL FROM LSN: 0/1000028\r\nINCREMENTAL FROM TLI: 1\r\nLABEL: \r\nsomething odd\r\n";
        let h = parse_backup_history(text).unwrap();
        assert_eq!(h.label.as_deref(), Some(""));
        assert_eq!((h.start_timeline, h.stop_timeline), (None, None));
        // The stop LSN is exactly a segment boundary: XLByteToPrevSeg gives segment 2.
        check_backup_history_name(
            &name("000000010000000000000002.00000028.backup"),
            &h,
            Some(SegmentSize::DEFAULT),
        )
        .unwrap();
    }

    #[test]
    fn rejects_malformed_content() {
        use BackupHistoryError as E;
        type Check = fn(&BackupHistoryError) -> bool;
        let cases: Vec<(String, Check)> = vec![
            ("".into(), |e| matches!(e, E::Missing { field: START_WAL })),
            (PG15.replace("STOP WAL LOCATION", "STOP WAL"), |e| {
                matches!(e, E::Missing { field: STOP_WAL })
            }),
            (
                PG15.replace(
                    "(file 000000010000000000000002)\nSTOP",
                    "(file 00000001000000000000002)\nSTOP",
                ),
                |e| {
                    matches!(
                        e,
                        E::BadLocation {
                            field: START_WAL,
                            line: 1,
                            ..
                        }
                    )
                },
            ),
            (PG15.replace("0/2000028", "0/zz"), |e| {
                matches!(e, E::BadLocation { .. })
            }),
            (
                PG15.replace(
                    "(file 000000010000000000000002)\nSTOP",
                    "(file 00000001.history)\nSTOP",
                ),
                |e| matches!(e, E::BadLocation { .. }),
            ),
            (PG15.replace("0/2000100", "0/2000000"), |e| {
                matches!(e, E::StopBeforeStart { .. })
            }),
            (
                PG15.replace("START TIMELINE: 1", "START TIMELINE: x"),
                |e| matches!(e, E::BadTimeline { .. }),
            ),
            (
                PG15.replace("START TIMELINE: 1", "START TIMELINE: 0"),
                |e| matches!(e, E::BadTimeline { .. }),
            ),
            (
                PG15.replace("START TIMELINE: 1", "START TIMELINE: +1"),
                |e| matches!(e, E::BadTimeline { .. }),
            ),
            (
                PG15.replace("START TIMELINE: 1", "START TIMELINE: 2"),
                |e| {
                    matches!(
                        e,
                        E::TimelineMismatch {
                            field: START_WAL,
                            timeline: 2,
                            ..
                        }
                    )
                },
            ),
            (
                PG15.replace(
                    "LABEL: nightly",
                    "LABEL: x\nSTOP WAL LOCATION: 0/9000000 (file 000000010000000000000008)",
                ),
                |e| {
                    matches!(
                        e,
                        E::Duplicate {
                            field: STOP_WAL,
                            line: 8
                        }
                    )
                },
            ),
        ];
        for (text, ok) in cases {
            let e = parse_backup_history(&text).expect_err(&text);
            assert!(ok(&e), "{text:?} gave {e:?}");
            assert!(!e.is_retryable());
        }
        assert_eq!(
            parse_backup_history_bytes(b"START\0"),
            Err(E::NulByte { offset: 5 })
        );
        assert_eq!(
            parse_backup_history_bytes(b"LABEL: \xc3"),
            Err(E::InvalidUtf8 { offset: 7 })
        );
    }

    #[test]
    fn name_must_match_content() {
        use BackupHistoryError as E;
        let h = parse_backup_history(PG15).unwrap();
        let s16 = Some(SegmentSize::DEFAULT);
        let good = name("000000010000000000000002.00000028.backup");
        assert_eq!(check_backup_history_name(&good, &h, s16), Ok(()));
        assert_eq!(check_backup_history_name(&good, &h, None), Ok(()));

        let check = |n: &str, size| check_backup_history_name(&name(n), &h, size);
        assert!(matches!(
            check("000000010000000000000002", s16),
            Err(E::NotBackupName { .. })
        ));
        assert!(matches!(
            check("000000010000000000000003.00000028.backup", s16),
            Err(E::NameSegmentMismatch { .. })
        ));
        assert!(matches!(
            check("000000020000000000000002.00000028.backup", s16),
            Err(E::NameTimelineMismatch { .. })
        ));
        assert!(matches!(
            check("000000010000000000000002.00000029.backup", s16),
            Err(E::NameOffsetMismatch { .. })
        ));
        assert!(matches!(
            check("000000010000000000000002.00000029.backup", None),
            Err(E::NameOffsetMismatch { .. })
        ));
        // With 1 MiB segments 0/2000028 is in segment 0x20, not 2: the content itself is wrong.
        assert!(matches!(
            check(
                "000000010000000000000002.00000028.backup",
                Some(SegmentSize::MIN)
            ),
            Err(E::LocationNotInFile {
                field: START_WAL,
                ..
            })
        ));
        let msg = check("000000010000000000000002.00000029.backup", s16)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("does not match its name"), "{msg}");
    }

    #[test]
    fn name_uses_the_stop_timeline() {
        // A backup from a standby that was promoted to timeline 2 during the backup.
        let text = PG15
            .replace(
                "STOP WAL LOCATION: 0/2000100 (file 000000010000000000000002)",
                "STOP WAL LOCATION: 0/3000100 (file 000000020000000000000003)",
            )
            .replace("STOP TIMELINE: 1", "STOP TIMELINE: 2");
        let h = parse_backup_history(&text).unwrap();
        let s16 = Some(SegmentSize::DEFAULT);
        assert_eq!(
            check_backup_history_name(&name("000000020000000000000002.00000028.backup"), &h, s16),
            Ok(())
        );
        assert!(check_backup_history_name(
            &name("000000010000000000000002.00000028.backup"),
            &h,
            s16
        )
        .is_err());
    }

    #[test]
    fn one_gib_segments() {
        let text = "START WAL LOCATION: 1/40000028 (file 000000010000000100000001)\n\
            STOP WAL LOCATION: 1/40000100 (file 000000010000000100000001)\n";
        let h = parse_backup_history(text).unwrap();
        let n = name("000000010000000100000001.00000028.backup");
        assert_eq!(
            check_backup_history_name(&n, &h, Some(SegmentSize::MAX)),
            Ok(())
        );
        assert_eq!(check_backup_history_name(&n, &h, None), Ok(()));
        assert!(check_backup_history_name(&n, &h, Some(SegmentSize::DEFAULT)).is_err());
    }
}
