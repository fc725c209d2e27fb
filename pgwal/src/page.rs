//! XLOG page headers and the streaming segment validator.
//!
//! A WAL segment is a sequence of `XLOG_BLCKSZ` pages. Each page starts with an
//! `XLogPageHeaderData`; the first page of a segment carries the longer
//! `XLogLongPageHeaderData` (both in `src/include/access/xlog_internal.h`). Header fields are in
//! the byte order of the server, which this crate takes to be little endian (see the crate
//! documentation):
//!
//! | offset | field | type |
//! | --- | --- | --- |
//! | 0 | `xlp_magic` | u16 |
//! | 2 | `xlp_info` | u16 |
//! | 4 | `xlp_tli` | u32 |
//! | 8 | `xlp_pageaddr` | u64 |
//! | 16 | `xlp_rem_len` | u32 (then 4 bytes of padding: `SizeOfXLogShortPHD` is `MAXALIGN`ed to 24) |
//! | 24 | `xlp_sysid` | u64 (long header only) |
//! | 32 | `xlp_seg_size` | u32 (long header only) |
//! | 36 | `xlp_xlog_blcksz` | u32 (long header only) |
//!
//! [`SegmentValidator`] checks a whole segment as it streams by, following the checks of
//! `XLogReaderValidatePageHeader` (`src/backend/access/transam/xlogreader.c`) plus the rule that
//! the content must be the segment its file name designates. It is what lets the archive
//! promise never to store a file under the wrong name.

use serde::{Deserialize, Serialize};

use crate::lsn::Lsn;
use crate::name::WalFileName;
use crate::segment::{SegmentSize, TimeLineId};

/// The first record on the page continues a record from the previous page; `xlp_rem_len` says
/// how many bytes of it remain.
pub const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
/// The page has an `XLogLongPageHeaderData` (only the first page of a segment does).
pub const XLP_LONG_HEADER: u16 = 0x0002;
/// Full-page images on this page may be removed (no backup was running when it was written).
pub const XLP_BKP_REMOVABLE: u16 = 0x0004;
/// A partially written record at the end of the previous page was replaced by an
/// `XLOG_OVERWRITE_CONTRECORD` (PostgreSQL 15, back-patched to 10).
pub const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
/// Every flag PostgreSQL defines; any other bit in `xlp_info` is invalid.
pub const XLP_ALL_FLAGS: u16 = 0x000F;

/// `SizeOfXLogShortPHD`: `MAXALIGN(sizeof(XLogPageHeaderData))`.
pub const SIZE_OF_XLOG_SHORT_PHD: usize = 24;
/// `SizeOfXLogLongPHD`: `MAXALIGN(sizeof(XLogLongPageHeaderData))`.
pub const SIZE_OF_XLOG_LONG_PHD: usize = 40;

/// Smallest `XLOG_BLCKSZ` PostgreSQL can be configured with (`--with-wal-blocksize=1`).
pub const MIN_XLOG_BLCKSZ: u32 = 1024;
/// Largest `XLOG_BLCKSZ` PostgreSQL can be configured with (`--with-wal-blocksize=64`).
pub const MAX_XLOG_BLCKSZ: u32 = 65536;

/// `XLOG_PAGE_MAGIC` of each supported major version, as `(magic, major)`. The magic changes
/// whenever the WAL format does, so a segment is only readable by its own major version.
const MAGICS: [(u16, u32); 5] = [
    (0xD106, 13),
    (0xD10D, 14),
    (0xD110, 15),
    (0xD113, 16),
    (0xD116, 17),
];

/// The `XLOG_PAGE_MAGIC` values this crate accepts: PostgreSQL 13, 14, 15, 16 and 17.
pub const SUPPORTED_MAGICS: &[u16] = &[0xD106, 0xD10D, 0xD110, 0xD113, 0xD116];

/// The PostgreSQL major version whose `XLOG_PAGE_MAGIC` is `magic`, if supported.
pub fn pg_major_for_magic(magic: u16) -> Option<u32> {
    MAGICS
        .iter()
        .find(|(m, _)| *m == magic)
        .map(|(_, major)| *major)
}

/// `XLogPageHeaderData`: the header at the start of every WAL page.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct PageHeader {
    /// `xlp_magic`, see [`SUPPORTED_MAGICS`].
    pub magic: u16,
    /// `xlp_info`, the `XLP_*` flags.
    pub info: u16,
    /// `xlp_tli`: timeline of the first record on the page.
    pub tli: TimeLineId,
    /// `xlp_pageaddr`: the LSN of the page's first byte.
    pub pageaddr: Lsn,
    /// `xlp_rem_len`: bytes of a continued record at the start of the page.
    pub rem_len: u32,
}

/// `XLogLongPageHeaderData`: the header of the first page of each segment.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct LongPageHeader {
    pub std: PageHeader,
    /// `xlp_sysid`: the cluster's system identifier from `pg_control`.
    pub system_identifier: u64,
    /// `xlp_seg_size`: the WAL segment size, "just as a cross-check".
    pub segment_size: u32,
    /// `xlp_xlog_blcksz`: the WAL page size, "just as a cross-check".
    pub xlog_blcksz: u32,
}

/// Why bytes are not a valid page header. Never retryable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("{len} bytes are too short for a page header of {needed} bytes")]
    TooShort { len: usize, needed: usize },
    #[error("{}", unsupported_magic_message(*magic))]
    UnsupportedMagic { magic: u16 },
    #[error(
        "invalid page flags {info:#06X}: bits outside XLP_ALL_FLAGS ({XLP_ALL_FLAGS:#06X}) are set"
    )]
    UnknownFlags { info: u16 },
    #[error("the first page of a segment must have a long header, but XLP_LONG_HEADER is not set in flags {info:#06X}")]
    MissingLongHeader { info: u16 },
    #[error("invalid segment size {bytes} in the page header: PostgreSQL uses powers of two from 1 MiB to 1 GiB")]
    BadSegmentSize { bytes: u32 },
    #[error("invalid WAL block size {bytes} in the page header: PostgreSQL uses powers of two from 1 KiB to 64 KiB")]
    BadBlockSize { bytes: u32 },
}

impl PageError {
    /// Always false: the same bytes always fail the same way.
    pub const fn is_retryable(&self) -> bool {
        false
    }
}

fn unsupported_magic_message(magic: u16) -> String {
    match pg_major_for_magic(magic.swap_bytes()) {
        Some(major) => format!(
            "page magic {magic:#06X} is a byte-swapped PostgreSQL {major} magic: big-endian WAL is not supported"
        ),
        None => format!(
            "page magic {magic:#06X} is not the XLOG_PAGE_MAGIC of a supported PostgreSQL version \
             (13: 0xD106, 14: 0xD10D, 15: 0xD110, 16: 0xD113, 17: 0xD116)"
        ),
    }
}

fn u16_at(buf: &[u8], at: usize) -> u16 {
    let mut b = [0u8; 2];
    b.copy_from_slice(&buf[at..at + 2]);
    u16::from_le_bytes(b)
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Decodes and checks the magic and flags of a page header at the start of `buf`.
///
/// Accepts short and long headers alike (only the first 24 bytes are read); it does not check
/// the address or timeline, which need context (see [`SegmentValidator`]).
pub fn parse_page_header(buf: &[u8]) -> Result<PageHeader, PageError> {
    if buf.len() < SIZE_OF_XLOG_SHORT_PHD {
        return Err(PageError::TooShort {
            len: buf.len(),
            needed: SIZE_OF_XLOG_SHORT_PHD,
        });
    }
    let h = PageHeader {
        magic: u16_at(buf, 0),
        info: u16_at(buf, 2),
        tli: u32_at(buf, 4),
        pageaddr: Lsn(u64_at(buf, 8)),
        rem_len: u32_at(buf, 16),
    };
    // The two checks XLogReaderValidatePageHeader starts with.
    if pg_major_for_magic(h.magic).is_none() {
        return Err(PageError::UnsupportedMagic { magic: h.magic });
    }
    if h.info & !XLP_ALL_FLAGS != 0 {
        return Err(PageError::UnknownFlags { info: h.info });
    }
    Ok(h)
}

/// Decodes and checks the long header of a segment's first page: supported magic, known flags,
/// `XLP_LONG_HEADER` set, a segment size PostgreSQL allows and an `XLOG_BLCKSZ` it can be built
/// with.
pub fn parse_long_page_header(buf: &[u8]) -> Result<LongPageHeader, PageError> {
    if buf.len() < SIZE_OF_XLOG_LONG_PHD {
        return Err(PageError::TooShort {
            len: buf.len(),
            needed: SIZE_OF_XLOG_LONG_PHD,
        });
    }
    let std = parse_page_header(buf)?;
    if std.info & XLP_LONG_HEADER == 0 {
        return Err(PageError::MissingLongHeader { info: std.info });
    }
    let h = LongPageHeader {
        std,
        system_identifier: u64_at(buf, 24),
        segment_size: u32_at(buf, 32),
        xlog_blcksz: u32_at(buf, 36),
    };
    if SegmentSize::new(u64::from(h.segment_size)).is_err() {
        return Err(PageError::BadSegmentSize {
            bytes: h.segment_size,
        });
    }
    if !h.xlog_blcksz.is_power_of_two()
        || !(MIN_XLOG_BLCKSZ..=MAX_XLOG_BLCKSZ).contains(&h.xlog_blcksz)
    {
        return Err(PageError::BadBlockSize {
            bytes: h.xlog_blcksz,
        });
    }
    Ok(h)
}

/// What the archive already knows about the cluster a segment must belong to.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Expectations {
    /// The cluster's system identifier, once bound.
    pub system_identifier: Option<u64>,
    /// The cluster's segment size, once known.
    pub segment_size: Option<SegmentSize>,
}

/// What a successfully validated segment revealed about its cluster.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    pub system_identifier: u64,
    pub segment_size: SegmentSize,
    pub pg_major: u32,
    pub magic: u16,
    pub xlog_blcksz: u32,
    /// End offset of the last page with a valid header: the segment size for a segment that is
    /// full of WAL, less when it ends in zero pages (after `pg_switch_wal`) or, for `.partial`
    /// files, in junk.
    pub last_valid_page_end: u64,
}

/// The broad reasons a segment is refused, for callers that map errors to responses.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValidationErrorKind {
    /// The bytes are not a WAL segment: bad magic or flags, garbage, inconsistent pages.
    NotWal,
    /// A WAL segment of another cluster (system identifier mismatch).
    WrongSystem,
    /// A WAL segment with another segment size than the cluster's.
    WrongSegmentSize,
    /// A WAL segment, but not the one its name designates (address or timeline), or a name that
    /// cannot designate a segment at all.
    NameMismatch,
    /// Shorter than a segment, or empty.
    Truncated,
    /// Longer than a segment.
    TooLong,
}

impl ValidationErrorKind {
    /// `not_wal`, `wrong_system`, ... as in the serde form.
    pub const fn as_str(self) -> &'static str {
        match self {
            ValidationErrorKind::NotWal => "not_wal",
            ValidationErrorKind::WrongSystem => "wrong_system",
            ValidationErrorKind::WrongSegmentSize => "wrong_segment_size",
            ValidationErrorKind::NameMismatch => "name_mismatch",
            ValidationErrorKind::Truncated => "truncated",
            ValidationErrorKind::TooLong => "too_long",
        }
    }
}

/// Why a file is not the valid WAL segment its name says. Never retryable: the same bytes
/// under the same name always fail the same way (a truncated upload must be sent again whole).
///
/// Offsets are byte offsets in the file, shown in hex like PostgreSQL's own messages.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("{name} is not a segment or partial segment name; only those files hold WAL pages")]
    NotSegmentName { name: String },
    #[error("page at offset {offset:#X}: {error}: not a WAL segment")]
    InvalidPageHeader {
        offset: u64,
        #[source]
        error: PageError,
    },
    #[error(
        "page at offset {offset:#X} has timeline 0, which PostgreSQL never uses: not a WAL segment"
    )]
    TimelineZero { offset: u64 },
    #[error(
        "page at offset {offset:#X} has magic {found:#06X}, but the segment's first page has \
         {expected:#06X}: not a consistent WAL segment"
    )]
    MagicMismatch {
        offset: u64,
        found: u16,
        expected: u16,
    },
    #[error(
        "page at offset {offset:#X} has a long header (XLP_LONG_HEADER), which only the first \
         page of a segment may have: not a consistent WAL segment"
    )]
    UnexpectedLongHeader { offset: u64 },
    #[error(
        "page at offset {offset:#X} has timeline {found}, lower than {previous} on the page \
         before it: not a consistent WAL segment"
    )]
    TimelineDecreased {
        offset: u64,
        found: TimeLineId,
        previous: TimeLineId,
    },
    #[error(
        "byte at offset {offset:#X} is not zero, but the page at offset {zero_page_offset:#X} \
         was all zeros: after the end of WAL every byte of a segment must be zero"
    )]
    NonZeroAfterZeroPage { zero_page_offset: u64, offset: u64 },
    #[error(
        "segment size is {found}, expected {expected} (the cluster's segment size): WAL from a \
         cluster with another segment size"
    )]
    SegmentSizeMismatch {
        expected: SegmentSize,
        found: SegmentSize,
    },
    #[error(
        "system identifier is {found}, expected {expected}: WAL from another PostgreSQL cluster"
    )]
    SystemIdMismatch { expected: u64, found: u64 },
    #[error(
        "{name} cannot name a segment with {size} segments (its last 8 digits must be below \
         {per:X}): the file's content does not match its name"
    )]
    NameImpossibleForSize {
        name: String,
        size: SegmentSize,
        per: u64,
    },
    #[error(
        "page at offset {offset:#X} has address {found}, expected {expected}: the file's content \
         does not match its name"
    )]
    PageAddressMismatch {
        offset: u64,
        found: Lsn,
        expected: Lsn,
    },
    #[error(
        "page at offset {offset:#X} has timeline {found}, above timeline {name_tli} of the file \
         name: the file's content does not match its name"
    )]
    TimelineAboveName {
        offset: u64,
        found: TimeLineId,
        name_tli: TimeLineId,
    },
    #[error("file is empty: a WAL segment is {} bytes", expected.map_or("segment-size".to_owned(), |s| s.bytes().to_string()))]
    Empty { expected: Option<SegmentSize> },
    #[error("file is only {len} bytes, shorter than the {SIZE_OF_XLOG_LONG_PHD}-byte header of a segment's first page: truncated")]
    TruncatedHeader { len: u64 },
    #[error("file is {len} bytes, expected {expected} (the segment size): truncated")]
    Truncated { len: u64, expected: u64 },
    #[error("file is at least {at_least} bytes, expected exactly {expected} (the segment size): too long")]
    TooLong { at_least: u64, expected: u64 },
}

impl ValidationError {
    /// The broad reason, for mapping to a response or exit code.
    pub const fn kind(&self) -> ValidationErrorKind {
        use ValidationErrorKind as K;
        match self {
            ValidationError::InvalidPageHeader { .. }
            | ValidationError::TimelineZero { .. }
            | ValidationError::MagicMismatch { .. }
            | ValidationError::UnexpectedLongHeader { .. }
            | ValidationError::TimelineDecreased { .. }
            | ValidationError::NonZeroAfterZeroPage { .. } => K::NotWal,
            ValidationError::SystemIdMismatch { .. } => K::WrongSystem,
            ValidationError::SegmentSizeMismatch { .. } => K::WrongSegmentSize,
            ValidationError::NotSegmentName { .. }
            | ValidationError::NameImpossibleForSize { .. }
            | ValidationError::PageAddressMismatch { .. }
            | ValidationError::TimelineAboveName { .. } => K::NameMismatch,
            ValidationError::Empty { .. }
            | ValidationError::TruncatedHeader { .. }
            | ValidationError::Truncated { .. } => K::Truncated,
            ValidationError::TooLong { .. } => K::TooLong,
        }
    }

    /// Always false: see the type's documentation.
    pub const fn is_retryable(&self) -> bool {
        false
    }
}

/// What page 0 established.
#[derive(Copy, Clone, Debug)]
struct FirstPage {
    header: LongPageHeader,
    size: SegmentSize,
    major: u32,
    /// LSN of the segment's first byte, from the name and the header's segment size.
    start: Lsn,
}

/// Where the validator is in the file after page 0.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Tail {
    /// Every page so far had a valid header.
    Pages,
    /// The page at this offset was all zeros: every later byte must be zero (segments).
    Zeros { since: u64 },
    /// Past the last valid page of a `.partial` file: anything goes.
    Junk,
}

/// Validates a segment or partial segment as it streams by, against its name.
///
/// Feed the file with [`update`](Self::update) in chunks of any size, then call
/// [`finish`](Self::finish). Memory use is constant: only a page header (40 bytes) is buffered,
/// never a page or the file. After an error, every later call returns the same error.
///
/// # Rules
///
/// These follow `XLogReaderValidatePageHeader` and what PostgreSQL writes; it was checked on
/// PostgreSQL 15 that a segment closed by `pg_switch_wal` has valid headers on its first pages
/// and then only all-zero pages.
///
/// * Page 0 has a valid long header: supported magic, `XLP_LONG_HEADER`, no unknown flags,
///   the expected segment size and system identifier (if known), `xlp_pageaddr` equal to the
///   start of the segment the name designates, and a timeline from 1 up to the name's.
/// * Every later page is either all zeros, after which every later byte must be zero, or has a
///   valid short header: the same magic, no long flag, no unknown flags, `xlp_pageaddr` equal
///   to segment start + offset, and a timeline that never decreases and stays at most the
///   name's. (The first segment of a new timeline begins with pages of the parent timeline,
///   which is why page timelines may be lower than the name's.)
/// * The length is exactly the segment size.
/// * For `.partial` names anything after the last valid page is accepted, since PostgreSQL's
///   partial files may carry recycled data after the switch point; page 0 must still be valid
///   and the length must still be the segment size.
#[derive(Clone, Debug)]
pub struct SegmentValidator {
    name: String,
    name_tli: TimeLineId,
    partial: bool,
    /// The name, kept to compute the segment number once the segment size is known.
    parsed_name: WalFileName,
    expect: Expectations,
    /// Bytes consumed so far.
    pos: u64,
    /// The header of the current page, collected across chunks.
    header: [u8; SIZE_OF_XLOG_LONG_PHD],
    first: Option<FirstPage>,
    tail: Tail,
    last_tli: TimeLineId,
    last_valid_page_end: u64,
    failed: Option<ValidationError>,
}

/// Index of the first non-zero byte. Checks blocks with a branch-free OR first, which the
/// compiler vectorizes: zero tails can be most of a 1 GiB segment.
fn first_non_zero(data: &[u8]) -> Option<usize> {
    let mut base = 0;
    for block in data.chunks(4096) {
        if block.iter().fold(0u8, |acc, b| acc | b) != 0 {
            return block.iter().position(|b| *b != 0).map(|i| base + i);
        }
        base += block.len();
    }
    None
}

impl SegmentValidator {
    /// A validator for the file named `name`, which must be a segment or a partial segment.
    pub fn new(name: &WalFileName, expect: Expectations) -> Result<Self, ValidationError> {
        let partial = match name {
            WalFileName::Segment { .. } => false,
            WalFileName::Partial { .. } => true,
            _ => {
                return Err(ValidationError::NotSegmentName {
                    name: name.to_string(),
                })
            }
        };
        Ok(SegmentValidator {
            name: name.to_string(),
            name_tli: name.timeline(),
            partial,
            parsed_name: name.clone(),
            expect,
            pos: 0,
            header: [0; SIZE_OF_XLOG_LONG_PHD],
            first: None,
            tail: Tail::Pages,
            last_tli: 0,
            last_valid_page_end: 0,
            failed: None,
        })
    }

    /// Bytes fed so far.
    pub fn bytes_seen(&self) -> u64 {
        self.pos
    }

    /// The segment size from page 0, once its header has been read.
    pub fn segment_size(&self) -> Option<SegmentSize> {
        self.first.map(|f| f.size)
    }

    /// Feeds the next bytes of the file. Errors as soon as the bytes seen prove the file
    /// invalid, so a caller can stop reading early.
    pub fn update(&mut self, data: &[u8]) -> Result<(), ValidationError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self.feed(data);
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    /// Ends the file: checks its length and returns what page 0 said.
    pub fn finish(self) -> Result<SegmentInfo, ValidationError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let Some(first) = self.first else {
            return Err(match self.pos {
                0 => ValidationError::Empty {
                    expected: self.expect.segment_size,
                },
                len => ValidationError::TruncatedHeader { len },
            });
        };
        if self.pos < first.size.bytes() {
            return Err(ValidationError::Truncated {
                len: self.pos,
                expected: first.size.bytes(),
            });
        }
        Ok(SegmentInfo {
            system_identifier: first.header.system_identifier,
            segment_size: first.size,
            pg_major: first.major,
            magic: first.header.std.magic,
            xlog_blcksz: first.header.xlog_blcksz,
            last_valid_page_end: self.last_valid_page_end,
        })
    }

    fn feed(&mut self, mut data: &[u8]) -> Result<(), ValidationError> {
        while !data.is_empty() {
            let Some(first) = self.first else {
                // Page 0's long header, which may arrive a byte at a time.
                let have = self.pos as usize;
                let take = (SIZE_OF_XLOG_LONG_PHD - have).min(data.len());
                self.header[have..have + take].copy_from_slice(&data[..take]);
                self.pos += take as u64;
                data = &data[take..];
                // Say "not WAL" for short garbage files rather than "truncated".
                if self.pos >= 2 && self.pos - (take as u64) < 2 {
                    let magic = u16_at(&self.header, 0);
                    if pg_major_for_magic(magic).is_none() {
                        let error = PageError::UnsupportedMagic { magic };
                        return Err(ValidationError::InvalidPageHeader { offset: 0, error });
                    }
                }
                if self.pos as usize == SIZE_OF_XLOG_LONG_PHD {
                    self.first = Some(self.check_first_page()?);
                }
                continue;
            };

            let size = first.size.bytes();
            let end = self.pos + data.len() as u64;
            if end > size {
                return Err(ValidationError::TooLong {
                    at_least: end,
                    expected: size,
                });
            }
            match self.tail {
                Tail::Junk => {
                    self.pos = end;
                    return Ok(());
                }
                Tail::Zeros { since } => {
                    if let Some(i) = first_non_zero(data) {
                        return Err(ValidationError::NonZeroAfterZeroPage {
                            zero_page_offset: since,
                            offset: self.pos + i as u64,
                        });
                    }
                    self.pos = end;
                    return Ok(());
                }
                Tail::Pages => {
                    let page = u64::from(first.header.xlog_blcksz);
                    let in_page = (self.pos % page) as usize;
                    if in_page < SIZE_OF_XLOG_SHORT_PHD {
                        // A later page's short header (page 0's is longer, so never here).
                        let take = (SIZE_OF_XLOG_SHORT_PHD - in_page).min(data.len());
                        self.header[in_page..in_page + take].copy_from_slice(&data[..take]);
                        self.pos += take as u64;
                        data = &data[take..];
                        if in_page + take == SIZE_OF_XLOG_SHORT_PHD {
                            let page_offset = self.pos - SIZE_OF_XLOG_SHORT_PHD as u64;
                            self.check_later_page(&first, page_offset)?;
                        }
                    } else {
                        // Record data: not checked.
                        let take = (page - in_page as u64).min(data.len() as u64) as usize;
                        self.pos += take as u64;
                        data = &data[take..];
                    }
                }
            }
        }
        Ok(())
    }

    fn check_first_page(&mut self) -> Result<FirstPage, ValidationError> {
        let header = parse_long_page_header(&self.header)
            .map_err(|error| ValidationError::InvalidPageHeader { offset: 0, error })?;
        // parse_long_page_header checked both: these fallbacks are never taken.
        let Ok(size) = SegmentSize::new(u64::from(header.segment_size)) else {
            let error = PageError::BadSegmentSize {
                bytes: header.segment_size,
            };
            return Err(ValidationError::InvalidPageHeader { offset: 0, error });
        };
        let Some(major) = pg_major_for_magic(header.std.magic) else {
            let error = PageError::UnsupportedMagic {
                magic: header.std.magic,
            };
            return Err(ValidationError::InvalidPageHeader { offset: 0, error });
        };
        if header.std.tli == 0 {
            return Err(ValidationError::TimelineZero { offset: 0 });
        }
        if let Some(expected) = self.expect.segment_size {
            if expected != size {
                return Err(ValidationError::SegmentSizeMismatch {
                    expected,
                    found: size,
                });
            }
        }
        if let Some(expected) = self.expect.system_identifier {
            if expected != header.system_identifier {
                return Err(ValidationError::SystemIdMismatch {
                    expected,
                    found: header.system_identifier,
                });
            }
        }
        // The name only designates a segment once the segment size is known: with 1 GiB
        // segments ...00000004 is impossible, while with 16 MiB it is segment 4.
        let Some(segno) = self.parsed_name.segno(size) else {
            return Err(ValidationError::NameImpossibleForSize {
                name: self.name.clone(),
                size,
                per: size.segments_per_xlog_id(),
            });
        };
        let start = size.segment_start(segno);
        if header.std.pageaddr != start {
            return Err(ValidationError::PageAddressMismatch {
                offset: 0,
                found: header.std.pageaddr,
                expected: start,
            });
        }
        if header.std.tli > self.name_tli {
            return Err(ValidationError::TimelineAboveName {
                offset: 0,
                found: header.std.tli,
                name_tli: self.name_tli,
            });
        }
        self.last_tli = header.std.tli;
        self.last_valid_page_end = u64::from(header.xlog_blcksz);
        Ok(FirstPage {
            header,
            size,
            major,
            start,
        })
    }

    /// Checks the short header now in `self.header[..24]` of the page at `offset`.
    fn check_later_page(&mut self, first: &FirstPage, offset: u64) -> Result<(), ValidationError> {
        let raw = &self.header[..SIZE_OF_XLOG_SHORT_PHD];
        if raw.iter().all(|b| *b == 0) {
            // End of WAL. The rest of this page is checked like every later byte.
            self.tail = if self.partial {
                Tail::Junk
            } else {
                Tail::Zeros { since: offset }
            };
            return Ok(());
        }
        match self.check_short_header(first, offset) {
            Ok(tli) => {
                self.last_tli = tli;
                self.last_valid_page_end = offset + u64::from(first.header.xlog_blcksz);
                Ok(())
            }
            Err(_) if self.partial => {
                self.tail = Tail::Junk;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn check_short_header(
        &self,
        first: &FirstPage,
        offset: u64,
    ) -> Result<TimeLineId, ValidationError> {
        let raw = &self.header[..SIZE_OF_XLOG_SHORT_PHD];
        let magic = u16_at(raw, 0);
        if magic != first.header.std.magic {
            return Err(if pg_major_for_magic(magic).is_some() {
                ValidationError::MagicMismatch {
                    offset,
                    found: magic,
                    expected: first.header.std.magic,
                }
            } else {
                ValidationError::InvalidPageHeader {
                    offset,
                    error: PageError::UnsupportedMagic { magic },
                }
            });
        }
        let h = parse_page_header(raw)
            .map_err(|error| ValidationError::InvalidPageHeader { offset, error })?;
        if h.info & XLP_LONG_HEADER != 0 {
            return Err(ValidationError::UnexpectedLongHeader { offset });
        }
        let expected = Lsn(first.start.0 + offset);
        if h.pageaddr != expected {
            return Err(ValidationError::PageAddressMismatch {
                offset,
                found: h.pageaddr,
                expected,
            });
        }
        // "out-of-sequence timeline ID" in XLogReaderValidatePageHeader.
        if h.tli < self.last_tli {
            return Err(ValidationError::TimelineDecreased {
                offset,
                found: h.tli,
                previous: self.last_tli,
            });
        }
        if h.tli > self.name_tli {
            return Err(ValidationError::TimelineAboveName {
                offset,
                found: h.tli,
                name_tli: self.name_tli,
            });
        }
        Ok(h.tli)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::SyntheticSegment;

    const MIB: u64 = 1 << 20;

    fn small() -> SyntheticSegment {
        SyntheticSegment {
            segment_size: SegmentSize::MIN,
            segno: 0x123,
            ..Default::default()
        }
    }

    fn validate(
        name: &WalFileName,
        expect: Expectations,
        data: &[u8],
    ) -> Result<SegmentInfo, ValidationError> {
        let mut v = SegmentValidator::new(name, expect)?;
        v.update(data)?;
        v.finish()
    }

    fn name(s: &str) -> WalFileName {
        s.parse().unwrap()
    }

    #[test]
    fn magic_table() {
        assert_eq!(pg_major_for_magic(0xD106), Some(13));
        assert_eq!(pg_major_for_magic(0xD10D), Some(14));
        assert_eq!(pg_major_for_magic(0xD110), Some(15));
        assert_eq!(pg_major_for_magic(0xD113), Some(16));
        assert_eq!(pg_major_for_magic(0xD116), Some(17));
        assert_eq!(pg_major_for_magic(0xD101), None);
        assert!(SUPPORTED_MAGICS
            .iter()
            .all(|m| pg_major_for_magic(*m).is_some()));
        assert_eq!(SUPPORTED_MAGICS.len(), MAGICS.len());
    }

    #[test]
    fn parses_headers_of_a_synthetic_segment() {
        let seg = SyntheticSegment::default().build();
        let long = parse_long_page_header(&seg).unwrap();
        assert_eq!(long.std.magic, 0xD110);
        assert_eq!(long.std.info, XLP_LONG_HEADER | XLP_BKP_REMOVABLE);
        assert_eq!(long.std.tli, 1);
        assert_eq!(long.std.pageaddr, Lsn(0x100_0000));
        assert_eq!(long.segment_size, 16 << 20);
        assert_eq!(long.xlog_blcksz, 8192);
        assert_eq!(long.system_identifier, 7_300_000_000_000_000_001);
        let short = parse_page_header(&seg[8192..]).unwrap();
        assert_eq!(short.pageaddr, Lsn(0x100_2000));
        assert_eq!(short.info & XLP_LONG_HEADER, 0);
    }

    #[test]
    fn header_parse_errors() {
        let seg = small().build();
        let page0 = &seg[..SIZE_OF_XLOG_LONG_PHD];
        assert_eq!(
            parse_page_header(&page0[..23]),
            Err(PageError::TooShort {
                len: 23,
                needed: 24
            })
        );
        assert_eq!(
            parse_long_page_header(&page0[..39]),
            Err(PageError::TooShort {
                len: 39,
                needed: 40
            })
        );

        let with = |at: usize, bytes: &[u8]| {
            let mut b = page0.to_vec();
            b[at..at + bytes.len()].copy_from_slice(bytes);
            b
        };
        assert_eq!(
            parse_page_header(&with(0, &[0x01, 0xD1])),
            Err(PageError::UnsupportedMagic { magic: 0xD101 })
        );
        assert_eq!(
            parse_page_header(&with(2, &[0x12, 0x00])),
            Err(PageError::UnknownFlags { info: 0x12 })
        );
        assert_eq!(
            parse_long_page_header(&with(2, &[0x01, 0x00])),
            Err(PageError::MissingLongHeader { info: 1 })
        );
        assert_eq!(
            parse_long_page_header(&with(32, &(3 * MIB as u32).to_le_bytes())),
            Err(PageError::BadSegmentSize {
                bytes: 3 * MIB as u32
            })
        );
        assert_eq!(
            parse_long_page_header(&with(36, &512u32.to_le_bytes())),
            Err(PageError::BadBlockSize { bytes: 512 })
        );
        assert_eq!(
            parse_long_page_header(&with(36, &131072u32.to_le_bytes())),
            Err(PageError::BadBlockSize { bytes: 131072 })
        );
        assert_eq!(
            parse_long_page_header(&with(36, &3000u32.to_le_bytes())),
            Err(PageError::BadBlockSize { bytes: 3000 })
        );
        // A big-endian PostgreSQL 15 segment starts with D1 10.
        let msg = PageError::UnsupportedMagic { magic: 0x10D1 }.to_string();
        assert!(msg.contains("big-endian"), "{msg}");
    }

    #[test]
    fn accepts_full_and_switched_segments() {
        let s = small();
        for written in [None, Some(1), Some(2), Some(100), Some(127)] {
            let seg = SyntheticSegment {
                written_pages: written,
                ..s.clone()
            };
            let info = validate(&seg.name(1), Expectations::default(), &seg.build()).unwrap();
            assert_eq!(info.segment_size, SegmentSize::MIN);
            assert_eq!(info.pg_major, 15);
            assert_eq!(info.magic, 0xD110);
            assert_eq!(info.xlog_blcksz, 8192);
            assert_eq!(info.system_identifier, s.system_identifier);
            assert_eq!(info.last_valid_page_end, seg.written() * 8192);
        }
    }

    #[test]
    fn postgresql_example_names() {
        // With 1 MiB segments, LSN 0/12345678 is in segment 0x123 of log 0.
        let s = small();
        assert_eq!(s.name(1).to_string(), "000000010000000000000123");
        let seg = s.build();
        assert_eq!(
            parse_long_page_header(&seg).unwrap().std.pageaddr,
            Lsn(0x1230_0000)
        );
        let expect = Expectations {
            system_identifier: Some(s.system_identifier),
            segment_size: Some(SegmentSize::MIN),
        };
        assert!(validate(&name("000000010000000000000123"), expect, &seg).is_ok());
    }

    #[test]
    fn first_segment_of_a_new_timeline_has_parent_pages() {
        let s = SyntheticSegment {
            page_tli: 1,
            ..small()
        };
        assert!(validate(&s.name(2), Expectations::default(), &s.build()).is_ok());
        let err = validate(
            &s.name(1),
            Expectations::default(),
            &SyntheticSegment {
                page_tli: 2,
                ..small()
            }
            .build(),
        )
        .unwrap_err();
        assert_eq!(
            err,
            ValidationError::TimelineAboveName {
                offset: 0,
                found: 2,
                name_tli: 1
            }
        );
        assert_eq!(err.kind(), ValidationErrorKind::NameMismatch);
    }

    #[test]
    fn later_pages_may_move_to_a_higher_timeline_but_not_back() {
        let s = SyntheticSegment {
            page_tli: 2,
            ..small()
        };
        let mut seg = s.build();
        // Pages 0 and 1 on timeline 1, the rest on 2: the switch happened inside the segment.
        seg[4..8].copy_from_slice(&1u32.to_le_bytes());
        seg[8192 + 4..8192 + 8].copy_from_slice(&1u32.to_le_bytes());
        assert!(validate(&s.name(2), Expectations::default(), &seg).is_ok());
        // Page 3 back on timeline 1.
        seg[3 * 8192 + 4..3 * 8192 + 8].copy_from_slice(&1u32.to_le_bytes());
        let err = validate(&s.name(2), Expectations::default(), &seg).unwrap_err();
        assert_eq!(
            err,
            ValidationError::TimelineDecreased {
                offset: 3 * 8192,
                found: 1,
                previous: 2
            }
        );
        assert_eq!(err.kind(), ValidationErrorKind::NotWal);
    }

    #[test]
    fn wrong_name_is_a_name_mismatch() {
        let s = SyntheticSegment {
            segment_size: SegmentSize::MIN,
            segno: 0x1B,
            ..Default::default()
        };
        let seg = s.build();
        let err = validate(
            &name("00000001000000000000001A"),
            Expectations::default(),
            &seg,
        )
        .unwrap_err();
        assert_eq!(
            err,
            ValidationError::PageAddressMismatch {
                offset: 0,
                found: Lsn(0x1B0_0000),
                expected: Lsn(0x1A0_0000)
            }
        );
        assert_eq!(err.kind(), ValidationErrorKind::NameMismatch);
        assert_eq!(
            err.to_string(),
            "page at offset 0x0 has address 0/1B00000, expected 0/1A00000: the file's content does not match its name"
        );
        // A later page with another segment's address.
        let mut bad = seg.clone();
        bad[0x4000 + 8..0x4000 + 16].copy_from_slice(&0x1A0_4000u64.to_le_bytes());
        let err = validate(&s.name(1), Expectations::default(), &bad).unwrap_err();
        assert_eq!(
            err.to_string(),
            "page at offset 0x4000 has address 0/1A04000, expected 0/1B04000: the file's content does not match its name"
        );
    }

    #[test]
    fn name_impossible_for_the_segment_size() {
        // ...00000004 cannot exist with 1 GiB segments (4 per xlog id). Only the header is
        // needed to know, so no 1 GiB buffer is built.
        let s = SyntheticSegment {
            segment_size: SegmentSize::MIN,
            ..Default::default()
        };
        let mut head = s.build()[..SIZE_OF_XLOG_LONG_PHD].to_vec();
        head[32..36].copy_from_slice(&(1u32 << 30).to_le_bytes());
        let mut v =
            SegmentValidator::new(&name("000000010000000000000004"), Expectations::default())
                .unwrap();
        let err = v.update(&head).unwrap_err();
        assert!(
            matches!(err, ValidationError::NameImpossibleForSize { per: 4, .. }),
            "{err:?}"
        );
        assert_eq!(err.kind(), ValidationErrorKind::NameMismatch);
    }

    #[test]
    fn expectations_are_enforced() {
        let s = small();
        let seg = s.build();
        let n = s.name(1);
        let err = validate(
            &n,
            Expectations {
                system_identifier: Some(42),
                segment_size: None,
            },
            &seg,
        )
        .unwrap_err();
        assert_eq!(
            err,
            ValidationError::SystemIdMismatch {
                expected: 42,
                found: s.system_identifier
            }
        );
        assert_eq!(err.kind(), ValidationErrorKind::WrongSystem);
        let err = validate(
            &n,
            Expectations {
                system_identifier: None,
                segment_size: Some(SegmentSize::DEFAULT),
            },
            &seg,
        )
        .unwrap_err();
        assert_eq!(
            err,
            ValidationError::SegmentSizeMismatch {
                expected: SegmentSize::DEFAULT,
                found: SegmentSize::MIN
            }
        );
        assert_eq!(err.kind(), ValidationErrorKind::WrongSegmentSize);
        assert!(
            err.to_string()
                .contains("segment size is 1 MiB, expected 16 MiB"),
            "{err}"
        );
    }

    #[test]
    fn length_must_be_exact() {
        let s = small();
        let seg = s.build();
        let n = s.name(1);
        let e = Expectations::default();
        assert_eq!(
            validate(&n, e, &[]).unwrap_err(),
            ValidationError::Empty { expected: None }
        );
        assert_eq!(
            validate(&n, e, &seg[..1]).unwrap_err(),
            ValidationError::TruncatedHeader { len: 1 }
        );
        assert_eq!(
            validate(&n, e, &seg[..39]).unwrap_err(),
            ValidationError::TruncatedHeader { len: 39 }
        );
        assert_eq!(
            validate(&n, e, &seg[..8192]).unwrap_err(),
            ValidationError::Truncated {
                len: 8192,
                expected: MIB
            }
        );
        let mut long = seg.clone();
        long.push(0);
        let err = validate(&n, e, &long).unwrap_err();
        assert_eq!(
            err,
            ValidationError::TooLong {
                at_least: MIB + 1,
                expected: MIB
            }
        );
        assert_eq!(err.kind(), ValidationErrorKind::TooLong);
        // Extra bytes in a later call are caught there.
        let mut v = SegmentValidator::new(&n, e).unwrap();
        v.update(&seg).unwrap();
        assert_eq!(v.bytes_seen(), MIB);
        assert_eq!(v.segment_size(), Some(SegmentSize::MIN));
        assert!(v.update(&[0]).is_err());
        let empty_err = validate(
            &n,
            Expectations {
                segment_size: Some(SegmentSize::MIN),
                ..e
            },
            &[],
        )
        .unwrap_err();
        assert_eq!(
            empty_err.to_string(),
            "file is empty: a WAL segment is 1048576 bytes"
        );
        assert_eq!(empty_err.kind(), ValidationErrorKind::Truncated);
    }

    #[test]
    fn garbage_is_not_wal() {
        let n = name("000000010000000000000001");
        for data in [&b"hello, world"[..], &[0u8; 100][..], &[0xFFu8; 4096][..]] {
            let err = validate(&n, Expectations::default(), data).unwrap_err();
            assert_eq!(err.kind(), ValidationErrorKind::NotWal, "{err}");
            assert!(err.to_string().contains("not a WAL segment"), "{err}");
        }
    }

    #[test]
    fn page_zero_must_be_long_and_later_pages_short() {
        let s = small();
        let n = s.name(1);
        let mut seg = s.build();
        seg[2] &= !(XLP_LONG_HEADER as u8);
        let err = validate(&n, Expectations::default(), &seg).unwrap_err();
        assert!(matches!(
            err,
            ValidationError::InvalidPageHeader {
                offset: 0,
                error: PageError::MissingLongHeader { .. }
            }
        ));

        let mut seg = s.build();
        seg[8192 + 2] |= XLP_LONG_HEADER as u8;
        assert_eq!(
            validate(&n, Expectations::default(), &seg).unwrap_err(),
            ValidationError::UnexpectedLongHeader { offset: 8192 }
        );

        let mut seg = s.build();
        seg[2 * 8192..2 * 8192 + 2].copy_from_slice(&0xD113u16.to_le_bytes());
        assert_eq!(
            validate(&n, Expectations::default(), &seg).unwrap_err(),
            ValidationError::MagicMismatch {
                offset: 2 * 8192,
                found: 0xD113,
                expected: 0xD110
            }
        );

        let mut seg = s.build();
        seg[4..8].fill(0);
        assert_eq!(
            validate(&n, Expectations::default(), &seg).unwrap_err(),
            ValidationError::TimelineZero { offset: 0 }
        );
    }

    #[test]
    fn zero_header_with_content_is_rejected() {
        let s = SyntheticSegment {
            written_pages: Some(3),
            ..small()
        };
        let n = s.name(1);
        let mut seg = s.build();
        seg[3 * 8192 + 100] = 7;
        assert_eq!(
            validate(&n, Expectations::default(), &seg).unwrap_err(),
            ValidationError::NonZeroAfterZeroPage {
                zero_page_offset: 3 * 8192,
                offset: 3 * 8192 + 100
            }
        );
        // Recycled junk after the end of WAL is tolerated in a .partial file only.
        let partial = name(&format!("{n}.partial"));
        let info = validate(&partial, Expectations::default(), &seg).unwrap();
        assert_eq!(info.last_valid_page_end, 3 * 8192);
    }

    #[test]
    fn partial_files_tolerate_stale_pages_after_the_switch_point() {
        let s = SyntheticSegment {
            written_pages: Some(5),
            ..small()
        };
        let partial = name(&format!("{}.partial", s.name(1)));
        // Pages 5.. hold a recycled segment from long ago: valid headers, wrong addresses.
        let old = SyntheticSegment {
            segno: 7,
            ..small()
        }
        .build();
        let mut seg = s.build();
        seg[5 * 8192..].copy_from_slice(&old[5 * 8192..]);
        let info = validate(&partial, Expectations::default(), &seg).unwrap();
        assert_eq!(info.last_valid_page_end, 5 * 8192);
        assert!(validate(&s.name(1), Expectations::default(), &seg).is_err());
        // But page 0 must be valid, and the length exact.
        let mut bad0 = s.build();
        bad0[8] ^= 1;
        assert!(validate(&partial, Expectations::default(), &bad0).is_err());
        assert!(validate(
            &partial,
            Expectations::default(),
            &s.build()[..MIB as usize - 1]
        )
        .is_err());
    }

    #[test]
    fn only_segment_names_can_be_validated() {
        for n in [
            "00000002.history",
            "000000010000000000000002.00000028.backup",
        ] {
            let err = SegmentValidator::new(&name(n), Expectations::default()).unwrap_err();
            assert_eq!(err.kind(), ValidationErrorKind::NameMismatch);
        }
    }

    #[test]
    fn errors_are_sticky() {
        let s = small();
        let mut v = SegmentValidator::new(
            &s.name(2),
            Expectations {
                system_identifier: Some(1),
                segment_size: None,
            },
        )
        .unwrap();
        let seg = s.build();
        let first = v.update(&seg[..100]).unwrap_err();
        assert_eq!(v.update(&seg[100..]).unwrap_err(), first);
        assert_eq!(v.finish().unwrap_err(), first);
        assert!(!first.is_retryable());
    }

    #[test]
    fn byte_at_a_time() {
        let s = SyntheticSegment {
            xlog_blcksz: 1024,
            written_pages: Some(10),
            ..small()
        };
        let mut v = SegmentValidator::new(&s.name(1), Expectations::default()).unwrap();
        for b in s.build() {
            v.update(&[b]).unwrap();
        }
        assert_eq!(v.finish().unwrap().last_valid_page_end, 10 * 1024);
    }

    #[test]
    fn kinds_serialize_in_snake_case() {
        assert_eq!(
            serde_json::to_string(&ValidationErrorKind::WrongSystem).unwrap(),
            "\"wrong_system\""
        );
        assert_eq!(ValidationErrorKind::NameMismatch.as_str(), "name_mismatch");
    }
}
