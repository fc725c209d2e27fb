//! Timeline history files (`TTTTTTTT.history`).
//!
//! PostgreSQL writes one when a server is promoted or ends archive recovery on a new timeline
//! (`writeTimeLineHistory` in `src/backend/access/transam/timeline.c`): the parent's history
//! lines, then one line for the parent itself:
//!
//! ```text
//! 1<TAB>0/3000158<TAB>no recovery target specified
//! ```
//!
//! that is the parent timeline, a tab, the LSN at which the child branched off (the
//! "switchpoint"), a tab and a free-text reason. Parsing follows `readTimeLineHistory` in the
//! same file: blank lines and `#` comments (after leading whitespace) are skipped, timeline IDs
//! must increase strictly and stay below the file's own timeline. This parser is slightly
//! stricter than `sscanf("%u\t%X/%X")`: the switchpoint must be in the canonical `X/Y` form
//! (1 to 8 hex digits each side, no `0x`) and separated by whitespace, which is what PostgreSQL
//! writes.
//!
//! Switchpoints need not increase. PostgreSQL does not check their order, and writes files
//! where they decrease: recovery that follows timeline 3 (`1 0/3018CB0` in its history) but
//! stops at a target before 0/3018CB0 ends on a new timeline 4 whose file says
//! `1 0/3018CB0`, then `3 0/3018C48`. Points are then looked up newest span first, as
//! `tliOfPointInHistory` does, so such a history still names exactly one timeline per point.

use serde::{Deserialize, Serialize};

use crate::lsn::{echo, Lsn};
use crate::segment::TimeLineId;

/// One line of a history file: timeline `parent_tli` ended at `switchpoint`
/// (`TimeLineHistoryEntry` in `src/include/access/timeline.h`, as its `tli` and `end`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// An ancestor timeline of the file's timeline.
    pub parent_tli: TimeLineId,
    /// The first LSN that no longer belongs to `parent_tli` on the path to the file's timeline.
    pub switchpoint: Lsn,
    /// PostgreSQL's free-text reason, such as `no recovery target specified`; may be empty.
    pub reason: String,
}

/// Why a history file is invalid. Never retryable. `line` numbers start at 1.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    #[error("timeline 0 has no history file: PostgreSQL timelines start at 1")]
    FileTimelineZero,
    #[error(
        "history file is not valid UTF-8 (at byte {offset}); PostgreSQL writes ASCII history files"
    )]
    InvalidUtf8 { offset: usize },
    #[error("history file contains a NUL byte at byte {offset}; PostgreSQL never writes one")]
    NulByte { offset: usize },
    #[error("syntax error in history file at line {line} ({text:?}): expected {expected}")]
    Syntax {
        line: usize,
        text: String,
        expected: &'static str,
    },
    #[error("invalid history file at line {line}: timeline 0 does not exist")]
    TimelineZero { line: usize },
    #[error(
        "invalid history file at line {line}: timeline {tli} follows timeline {previous}; \
         timeline IDs must be in increasing sequence"
    )]
    NotIncreasing {
        line: usize,
        tli: TimeLineId,
        previous: TimeLineId,
    },
    #[error(
        "invalid history file at line {line}: timeline {tli} is not below {file_tli}, the \
         timeline the file belongs to; timeline IDs must be less than the child timeline's ID"
    )]
    NotBelowFileTimeline {
        line: usize,
        tli: TimeLineId,
        file_tli: TimeLineId,
    },
}

impl HistoryError {
    /// Always false: the same content is always invalid.
    pub const fn is_retryable(&self) -> bool {
        false
    }
}

/// Parses raw history file bytes: rejects invalid UTF-8 and NUL bytes, then [`parse_history`].
pub fn parse_history_bytes(
    tli_of_file: TimeLineId,
    bytes: &[u8],
) -> Result<Vec<HistoryEntry>, HistoryError> {
    // C's fgets/sscanf would stop silently at a NUL and ignore the rest of the line.
    if let Some(offset) = bytes.iter().position(|b| *b == 0) {
        return Err(HistoryError::NulByte { offset });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| HistoryError::InvalidUtf8 {
        offset: e.valid_up_to(),
    })?;
    parse_history(tli_of_file, text)
}

/// Parses the text of the history file of timeline `tli_of_file` (`readTimeLineHistory`).
///
/// Returns the entries oldest first. A file with no entries is accepted, as PostgreSQL does.
pub fn parse_history(
    tli_of_file: TimeLineId,
    text: &str,
) -> Result<Vec<HistoryEntry>, HistoryError> {
    if tli_of_file == 0 {
        return Err(HistoryError::FileTimelineZero);
    }
    let mut entries: Vec<HistoryEntry> = Vec::new();
    for (index, raw) in text.split('\n').enumerate() {
        let line = index + 1;
        let content = raw.strip_suffix('\r').unwrap_or(raw);
        let trimmed = content.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let syntax = |expected| HistoryError::Syntax {
            line,
            text: echo(content),
            expected,
        };

        let digits = trimmed.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(syntax("a numeric timeline ID"));
        }
        let tli: TimeLineId = trimmed[..digits]
            .parse()
            .map_err(|_| syntax("a timeline ID that fits in 32 bits"))?;

        let rest = &trimmed[digits..];
        let after_tli = rest.trim_start();
        if after_tli.len() == rest.len() || after_tli.is_empty() {
            return Err(syntax(
                "a write-ahead log switchpoint location after the timeline ID",
            ));
        }
        let (lsn_text, reason) = match after_tli.find(char::is_whitespace) {
            Some(end) => (&after_tli[..end], after_tli[end..].trim()),
            None => (after_tli, ""),
        };
        let switchpoint: Lsn = lsn_text
            .parse()
            .map_err(|_| syntax("a write-ahead log switchpoint location in X/Y form"))?;

        if tli == 0 {
            return Err(HistoryError::TimelineZero { line });
        }
        if let Some(prev) = entries.last() {
            if tli <= prev.parent_tli {
                return Err(HistoryError::NotIncreasing {
                    line,
                    tli,
                    previous: prev.parent_tli,
                });
            }
        }
        if tli >= tli_of_file {
            return Err(HistoryError::NotBelowFileTimeline {
                line,
                tli,
                file_tli: tli_of_file,
            });
        }
        entries.push(HistoryEntry {
            parent_tli: tli,
            switchpoint,
            reason: reason.to_owned(),
        });
    }
    Ok(entries)
}

/// `(parent timeline, switchpoint)` for each entry, oldest first.
pub fn timeline_switch_points(entries: &[HistoryEntry]) -> Vec<(TimeLineId, Lsn)> {
    entries
        .iter()
        .map(|e| (e.parent_tli, e.switchpoint))
        .collect()
}

/// The stretch of WAL one timeline covers on the path to a history file's timeline
/// (`TimeLineHistoryEntry`): `[begin, end)`, where `end` is `None` for the newest timeline.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineSpan {
    pub tli: TimeLineId,
    pub begin: Lsn,
    pub end: Option<Lsn>,
}

/// The list `readTimeLineHistory` builds, oldest first: one span per entry, then the open-ended
/// span of `tli_of_file` itself, beginning at the last switchpoint.
pub fn timeline_spans(tli_of_file: TimeLineId, entries: &[HistoryEntry]) -> Vec<TimelineSpan> {
    let mut begin = Lsn::INVALID;
    let mut spans = Vec::with_capacity(entries.len() + 1);
    for e in entries {
        spans.push(TimelineSpan {
            tli: e.parent_tli,
            begin,
            end: Some(e.switchpoint),
        });
        begin = e.switchpoint;
    }
    spans.push(TimelineSpan {
        tli: tli_of_file,
        begin,
        end: None,
    });
    spans
}

/// `tliOfPointInHistory`: the timeline `lsn` belongs to on this history, or `None` if no span
/// holds it (which cannot happen for spans from [`timeline_spans`]). Spans are tried newest
/// first, as PostgreSQL walks its list: when a switchpoint is below the one before it, the
/// spans overlap (or one is empty) and the newer timeline wins.
pub fn timeline_of_point(lsn: Lsn, spans: &[TimelineSpan]) -> Option<TimeLineId> {
    spans
        .iter()
        .rev()
        .find(|s| s.begin <= lsn && s.end.is_none_or(|end| lsn < end))
        .map(|s| s.tli)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(parent_tli: u32, switchpoint: u64, reason: &str) -> HistoryEntry {
        HistoryEntry {
            parent_tli,
            switchpoint: Lsn(switchpoint),
            reason: reason.to_owned(),
        }
    }

    #[test]
    fn parses_what_postgresql_writes() {
        // 00000003.history after two promotions, as written by writeTimeLineHistory.
        let text = "1\t0/3000158\tno recovery target specified\n\
                    2\t0/5000000\tbefore 2024-01-01 00:00:00+00\n";
        assert_eq!(
            parse_history(3, text),
            Ok(vec![
                entry(1, 0x3000158, "no recovery target specified"),
                entry(2, 0x5000000, "before 2024-01-01 00:00:00+00"),
            ])
        );
    }

    #[test]
    fn skips_comments_and_blank_lines_and_tolerates_spaces() {
        let text = "# comment\n\n   \n  # indented comment\r\n1 0/3000158\r\n\t2   1/0   reason with  spaces  \n";
        assert_eq!(
            parse_history(5, text),
            Ok(vec![
                entry(1, 0x3000158, ""),
                entry(2, 0x1_0000_0000, "reason with  spaces")
            ])
        );
        assert_eq!(parse_history(2, ""), Ok(vec![]));
        assert_eq!(parse_history(2, "# only a comment\n"), Ok(vec![]));
    }

    #[test]
    fn rejects_what_readtimelinehistory_rejects() {
        use HistoryError as E;
        type Check = fn(&HistoryError) -> bool;
        let cases: Vec<(u32, &str, Check)> = vec![
            (0, "", |e| matches!(e, E::FileTimelineZero)),
            (2, "x\t0/1\n", |e| {
                matches!(
                    e,
                    E::Syntax {
                        line: 1,
                        expected: "a numeric timeline ID",
                        ..
                    }
                )
            }),
            (2, "1\n", |e| matches!(e, E::Syntax { .. })),
            (2, "1\t\n", |e| matches!(e, E::Syntax { .. })),
            (2, "1/0\n", |e| matches!(e, E::Syntax { .. })),
            (2, "1\tzz\n", |e| matches!(e, E::Syntax { .. })),
            (2, "1\t0x1/0\n", |e| matches!(e, E::Syntax { .. })),
            (2, "99999999999\t0/1\n", |e| matches!(e, E::Syntax { .. })),
            (2, "0\t0/1\n", |e| matches!(e, E::TimelineZero { line: 1 })),
            (4, "2\t0/1\n2\t0/2\n", |e| {
                matches!(
                    e,
                    E::NotIncreasing {
                        line: 2,
                        tli: 2,
                        previous: 2
                    }
                )
            }),
            (4, "2\t0/1\n1\t0/2\n", |e| {
                matches!(e, E::NotIncreasing { .. })
            }),
            (2, "2\t0/1\n", |e| {
                matches!(
                    e,
                    E::NotBelowFileTimeline {
                        tli: 2,
                        file_tli: 2,
                        ..
                    }
                )
            }),
            (2, "5\t0/1\n", |e| {
                matches!(e, E::NotBelowFileTimeline { .. })
            }),
        ];
        for (tli, text, ok) in cases {
            let e = parse_history(tli, text).expect_err(text);
            assert!(ok(&e), "{text:?} gave {e:?}");
            assert!(!e.is_retryable());
        }
    }

    #[test]
    fn decreasing_switchpoints_are_accepted_and_looked_up_newest_first() {
        // What PostgreSQL 15 wrote when recovery followed timeline 2 but stopped at a target
        // before timeline 2 began: timeline 3 branched from timeline 1, below 2's switchpoint.
        let text = "1\t0/3018CB0\tno recovery target specified\n\
                    2\t0/3018C48\tbefore 2026-11-30 10:00:00+00\n";
        let entries = parse_history(3, text).expect("PostgreSQL wrote it");
        assert_eq!(
            entries,
            vec![
                entry(1, 0x3018CB0, "no recovery target specified"),
                entry(2, 0x3018C48, "before 2026-11-30 10:00:00+00"),
            ]
        );
        let spans = timeline_spans(3, &entries);
        assert_eq!(timeline_of_point(Lsn(0x3018C47), &spans), Some(1));
        assert_eq!(timeline_of_point(Lsn(0x3018C48), &spans), Some(3));
        assert_eq!(timeline_of_point(Lsn(0x3018CB0), &spans), Some(3));
        assert_eq!(timeline_of_point(Lsn(u64::MAX), &spans), Some(3));
    }

    #[test]
    fn equal_switchpoints_are_allowed() {
        // A timeline that was promoted again before writing any WAL.
        assert!(parse_history(3, "1\t0/3000000\n2\t0/3000000\n").is_ok());
    }

    #[test]
    fn bytes_must_be_utf8_without_nul() {
        assert_eq!(
            parse_history_bytes(2, b"1\t0/1\0\n"),
            Err(HistoryError::NulByte { offset: 5 })
        );
        assert_eq!(
            parse_history_bytes(2, b"1\t0/1\t\xff\n"),
            Err(HistoryError::InvalidUtf8 { offset: 6 })
        );
        assert_eq!(
            parse_history_bytes(2, b"1\t0/1\treason\n"),
            Ok(vec![entry(1, 1, "reason")])
        );
    }

    #[test]
    fn spans_follow_tli_of_point_in_history() {
        let entries = vec![entry(1, 0x3000158, ""), entry(2, 0x5000000, "")];
        let spans = timeline_spans(3, &entries);
        assert_eq!(spans.len(), 3);
        assert_eq!(timeline_of_point(Lsn(0), &spans), Some(1));
        assert_eq!(timeline_of_point(Lsn(0x3000157), &spans), Some(1));
        assert_eq!(timeline_of_point(Lsn(0x3000158), &spans), Some(2));
        assert_eq!(timeline_of_point(Lsn(0x5000000), &spans), Some(3));
        assert_eq!(timeline_of_point(Lsn(u64::MAX), &spans), Some(3));
        assert_eq!(
            timeline_switch_points(&entries),
            vec![(1, Lsn(0x3000158)), (2, Lsn(0x5000000))]
        );
        assert_eq!(
            timeline_spans(1, &[]),
            vec![TimelineSpan {
                tli: 1,
                begin: Lsn(0),
                end: None
            }]
        );
    }
}
