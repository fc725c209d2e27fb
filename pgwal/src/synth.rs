//! Synthetic WAL segments for tests: page headers laid out as PostgreSQL writes them
//! (`src/include/access/xlog_internal.h`), with filler bytes standing in for WAL records.
//!
//! The output passes [`SegmentValidator`](crate::page::SegmentValidator) but is not replayable
//! WAL: no record is real. Other crates' tests use it to exercise uploads without a server.

use crate::lsn::Lsn;
use crate::name::WalFileName;
use crate::page::{
    SIZE_OF_XLOG_LONG_PHD, SIZE_OF_XLOG_SHORT_PHD, XLP_BKP_REMOVABLE, XLP_LONG_HEADER,
};
use crate::segment::{SegmentSize, TimeLineId};

/// The description of a synthetic segment; [`build`](Self::build) makes its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntheticSegment {
    /// Timeline written in every page header (may be below the file name's timeline).
    pub page_tli: TimeLineId,
    /// Segment number, which fixes every `xlp_pageaddr`.
    pub segno: u64,
    pub segment_size: SegmentSize,
    /// `XLOG_BLCKSZ`: a power of two from 1 KiB to 64 KiB.
    pub xlog_blcksz: u32,
    pub system_identifier: u64,
    /// `XLOG_PAGE_MAGIC`, 0xD110 (PostgreSQL 15) by default.
    pub magic: u16,
    /// How many pages carry headers and filler; the rest are zeros, as after `pg_switch_wal`.
    /// `None` (or a count past the end) fills the whole segment. At least page 0 is written.
    pub written_pages: Option<u64>,
}

impl Default for SyntheticSegment {
    fn default() -> Self {
        SyntheticSegment {
            page_tli: 1,
            segno: 1,
            segment_size: SegmentSize::DEFAULT,
            xlog_blcksz: 8192,
            system_identifier: 7_300_000_000_000_000_001,
            magic: 0xD110,
            written_pages: None,
        }
    }
}

impl SyntheticSegment {
    /// The segment's name on timeline `tli` (usually `page_tli`).
    pub fn name(&self, tli: TimeLineId) -> WalFileName {
        WalFileName::segment(tli, self.segno, self.segment_size)
    }

    /// Pages in the segment.
    pub fn pages(&self) -> u64 {
        self.segment_size.bytes() / u64::from(self.xlog_blcksz)
    }

    /// Pages that carry a header.
    pub fn written(&self) -> u64 {
        self.written_pages
            .map_or(self.pages(), |n| n.clamp(1, self.pages()))
    }

    /// The segment's bytes: exactly `segment_size` long.
    pub fn build(&self) -> Vec<u8> {
        let size = self.segment_size.bytes() as usize;
        let page = self.xlog_blcksz as usize;
        let start = self.segment_size.segment_start(self.segno);
        let mut buf = vec![0u8; size];
        for (index, chunk) in buf
            .chunks_mut(page)
            .take(self.written() as usize)
            .enumerate()
        {
            let offset = (index * page) as u64;
            let header_len = if index == 0 {
                SIZE_OF_XLOG_LONG_PHD
            } else {
                SIZE_OF_XLOG_SHORT_PHD
            };
            let info = XLP_BKP_REMOVABLE | if index == 0 { XLP_LONG_HEADER } else { 0 };
            self.write_short_header(chunk, info, Lsn(start.0 + offset));
            if index == 0 {
                chunk[24..32].copy_from_slice(&self.system_identifier.to_le_bytes());
                chunk[32..36].copy_from_slice(&(self.segment_size.bytes() as u32).to_le_bytes());
                chunk[36..40].copy_from_slice(&self.xlog_blcksz.to_le_bytes());
            }
            // Never-zero filler in place of records, so that a written page is never mistaken
            // for a zero page.
            for (i, b) in chunk[header_len..].iter_mut().enumerate() {
                *b = (((offset as usize + i) % 251) as u8) | 1;
            }
        }
        buf
    }

    fn write_short_header(&self, page: &mut [u8], info: u16, pageaddr: Lsn) {
        page[0..2].copy_from_slice(&self.magic.to_le_bytes());
        page[2..4].copy_from_slice(&info.to_le_bytes());
        page[4..8].copy_from_slice(&self.page_tli.to_le_bytes());
        page[8..16].copy_from_slice(&pageaddr.0.to_le_bytes());
        page[16..20].copy_from_slice(&0u32.to_le_bytes());
        page[20..24].fill(0);
    }
}
