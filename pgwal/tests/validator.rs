//! Property tests of the streaming segment validator on synthetic segments: every valid
//! segment is accepted however it is split into chunks, and every single corruption that
//! PostgreSQL could not have written is rejected.

use pgwal::page::{
    Expectations, SegmentInfo, SegmentValidator, ValidationError, ValidationErrorKind,
};
use pgwal::synth::SyntheticSegment;
use pgwal::{SegmentSize, WalFileName};
use proptest::prelude::*;

/// Feeds `data` in chunks whose sizes cycle through `splits` (each at least 1).
fn feed(name: &WalFileName, data: &[u8], splits: &[usize]) -> Result<SegmentInfo, ValidationError> {
    let mut v = SegmentValidator::new(name, Expectations::default())?;
    let mut rest = data;
    let mut sizes = splits.iter().cycle();
    while !rest.is_empty() {
        let n = sizes
            .next()
            .copied()
            .unwrap_or(rest.len())
            .clamp(1, rest.len());
        v.update(&rest[..n])?;
        rest = &rest[n..];
    }
    v.finish()
}

fn partial(name: &WalFileName) -> WalFileName {
    format!("{name}.partial")
        .parse()
        .expect("a segment name plus .partial is a valid name")
}

/// Small segments (1 or 2 MiB) with any page size, timeline, position and zero tail.
fn any_segment() -> impl Strategy<Value = SyntheticSegment> {
    (
        20u32..=21,
        10u32..=16,
        1u32..1000,
        any::<u64>(),
        any::<u64>(),
        0usize..5,
        proptest::option::of(any::<u64>()),
    )
        .prop_map(
            |(size_shift, blck_shift, tli, segno, sysid, magic, written)| {
                let segment_size =
                    SegmentSize::new(1 << size_shift).expect("1 and 2 MiB are valid sizes");
                let pages = segment_size.bytes() >> blck_shift;
                SyntheticSegment {
                    page_tli: tli,
                    segno: segno % (u64::MAX / segment_size.bytes()),
                    segment_size,
                    xlog_blcksz: 1 << blck_shift,
                    system_identifier: sysid,
                    magic: pgwal::page::SUPPORTED_MAGICS[magic],
                    written_pages: written.map(|w| 1 + w % pages),
                }
            },
        )
}

/// Chunk sizes from single bytes to more than a page, so that headers straddle chunks.
fn any_splits() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        Just(vec![usize::MAX]),
        proptest::collection::vec(1usize..100, 1..8),
        proptest::collection::vec(1usize..200_000, 1..8),
    ]
}

/// A corruption of one page header that no PostgreSQL segment can have.
#[derive(Clone, Debug)]
enum Mutation {
    /// Flip bits of `xlp_pageaddr`.
    Address(u64),
    /// Raise `xlp_tli` above the name's timeline.
    TimelineAboveName(u32),
    /// Toggle `XLP_LONG_HEADER`, or set an undefined flag bit.
    Flag(u16),
    /// Make `xlp_magic` unsupported.
    Magic(u16),
}

fn any_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (1..=u64::MAX).prop_map(Mutation::Address),
        (1u32..1000).prop_map(Mutation::TimelineAboveName),
        (1u32..=13).prop_map(|bit| Mutation::Flag(if bit == 13 { 0x0002 } else { 1 << (bit + 3) })),
        (1..=u16::MAX).prop_map(Mutation::Magic),
    ]
}

fn apply(seg: &mut [u8], at: usize, m: &Mutation, name_tli: u32) {
    let field = |seg: &mut [u8], off: usize, len: usize| -> u64 {
        let mut b = [0u8; 8];
        b[..len].copy_from_slice(&seg[at + off..at + off + len]);
        u64::from_le_bytes(b)
    };
    match *m {
        Mutation::Address(x) => {
            let v = field(seg, 8, 8) ^ x;
            seg[at + 8..at + 16].copy_from_slice(&v.to_le_bytes());
        }
        Mutation::TimelineAboveName(d) => {
            seg[at + 4..at + 8].copy_from_slice(&(name_tli + d).to_le_bytes());
        }
        Mutation::Flag(bit) => {
            let v = field(seg, 2, 2) as u16 ^ bit;
            seg[at + 2..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        Mutation::Magic(x) => {
            let mut v = field(seg, 0, 2) as u16 ^ x;
            while pgwal::page::pg_major_for_magic(v).is_some() {
                v = v.wrapping_add(1);
            }
            seg[at..at + 2].copy_from_slice(&v.to_le_bytes());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn accepts_valid_segments_in_any_chunking(s in any_segment(), splits in any_splits()) {
        let data = s.build();
        let name = s.name(s.page_tli);
        let info = feed(&name, &data, &splits).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(info.segment_size, s.segment_size);
        prop_assert_eq!(info.system_identifier, s.system_identifier);
        prop_assert_eq!(info.magic, s.magic);
        prop_assert_eq!(info.xlog_blcksz, s.xlog_blcksz);
        prop_assert_eq!(info.last_valid_page_end, s.written() * u64::from(s.xlog_blcksz));
        // The same bytes are a valid partial segment, and valid on a later timeline's name.
        prop_assert!(feed(&partial(&name), &data, &splits).is_ok());
        prop_assert!(feed(&s.name(s.page_tli + 1), &data, &splits).is_ok());
    }

    #[test]
    fn rejects_one_mutated_page_header(
        s in any_segment(), splits in any_splits(), page in any::<u64>(), m in any_mutation(),
    ) {
        let mut data = s.build();
        let page = page % s.written();
        apply(&mut data, (page * u64::from(s.xlog_blcksz)) as usize, &m, s.page_tli);
        let name = s.name(s.page_tli);
        let err = feed(&name, &data, &splits);
        prop_assert!(err.is_err(), "page {} with {:?} was accepted", page, m);
        if page == 0 {
            // Page 0 must be valid in .partial files too.
            prop_assert!(feed(&partial(&name), &data, &splits).is_err());
        }
    }

    #[test]
    fn rejects_any_truncation(s in any_segment(), splits in any_splits(), cut in any::<u64>()) {
        let data = s.build();
        let len = (cut % s.segment_size.bytes()) as usize;
        let name = s.name(s.page_tli);
        let err = feed(&name, &data[..len], &splits).unwrap_err();
        prop_assert_eq!(err.kind(), ValidationErrorKind::Truncated, "{}", err);
        let err = feed(&partial(&name), &data[..len], &splits).unwrap_err();
        prop_assert_eq!(err.kind(), ValidationErrorKind::Truncated, "{}", err);
    }

    #[test]
    fn rejects_extra_bytes(s in any_segment(), splits in any_splits(), extra in 1usize..10_000) {
        let mut data = s.build();
        data.resize(data.len() + extra, 0);
        let err = feed(&s.name(s.page_tli), &data, &splits).unwrap_err();
        prop_assert_eq!(err.kind(), ValidationErrorKind::TooLong);
    }

    #[test]
    fn rejects_non_zero_bytes_after_a_zero_page(
        s in any_segment(), splits in any_splits(), at in any::<u64>(), byte in 1u8..=255,
    ) {
        let s = SyntheticSegment { written_pages: Some(s.written().min(s.pages() - 1)), ..s };
        let mut data = s.build();
        let zero_start = s.written() * u64::from(s.xlog_blcksz);
        let pos = zero_start + at % (s.segment_size.bytes() - zero_start);
        data[pos as usize] = byte;
        let name = s.name(s.page_tli);
        let err = feed(&name, &data, &splits).unwrap_err();
        prop_assert_eq!(err.kind(), ValidationErrorKind::NotWal, "{}", err);
        // After the last valid page, a .partial file may hold anything.
        let info = feed(&partial(&name), &data, &splits).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(info.last_valid_page_end, zero_start);
    }

    #[test]
    fn rejects_the_wrong_name(s in any_segment(), delta in 1u64..1000) {
        let data = s.build();
        let other = WalFileName::segment(s.page_tli, s.segno.wrapping_add(delta) % (u64::MAX / s.segment_size.bytes()), s.segment_size);
        let err = feed(&other, &data, &[usize::MAX]).unwrap_err();
        prop_assert_eq!(err.kind(), ValidationErrorKind::NameMismatch, "{}", err);
    }
}
