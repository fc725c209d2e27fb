//! The streaming segment validator on arbitrary bytes in arbitrary chunks: never panics, and
//! whether a file is accepted does not depend on how it was split. (Which error is reported
//! may: a chunk that runs past the segment size is refused as too long before its content
//! is looked at.)
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pgwal::page::{Expectations, SegmentInfo, SegmentValidator};
use pgwal::synth::SyntheticSegment;
use pgwal::{SegmentSize, WalFileName};

static FULL: OnceLock<Vec<u8>> = OnceLock::new();

fn run(name: &WalFileName, data: &[u8], chunk: usize) -> Option<SegmentInfo> {
    let mut v = SegmentValidator::new(name, Expectations::default()).ok()?;
    for piece in data.chunks(chunk) {
        if let Err(e) = v.update(piece) {
            // Messages must render without panicking.
            let _ = (e.to_string(), e.kind());
            return None;
        }
    }
    v.finish().ok()
}

fuzz_target!(|data: &[u8]| {
    // Byte 0: chunk size. Byte 1: selects the name (segment or partial) and how the input is
    // used. Rest: file content, or a patch applied to a valid 1 MiB synthetic segment so that
    // the fuzzer reaches the later-page checks instead of failing on page 0's magic.
    let [chunk, mode, rest @ ..] = data else {
        return;
    };
    let chunk = usize::from(*chunk).max(1) * if mode & 1 == 0 { 1 } else { 997 };
    let segment = SyntheticSegment {
        segno: 5,
        segment_size: SegmentSize::MIN,
        xlog_blcksz: 1024,
        written_pages: Some(u64::from(mode >> 2) * 8),
        ..Default::default()
    };
    let base = segment.name(1);
    let name = if mode & 2 == 0 {
        base
    } else {
        match format!("{base}.partial").parse() {
            Ok(n) => n,
            Err(_) => return,
        }
    };

    let content = if mode >> 7 == 1 {
        // Patch: pairs of (3-byte offset, value). The full segment is built once; the zero
        // tail is cut here, which is much cheaper than building each time.
        let full = FULL.get_or_init(|| {
            SyntheticSegment {
                written_pages: None,
                ..segment.clone()
            }
            .build()
        });
        let mut seg = full.clone();
        let written = (segment.written() * u64::from(segment.xlog_blcksz)) as usize;
        seg[written..].fill(0);
        for patch in rest.chunks_exact(4) {
            let at =
                (usize::from(patch[0]) << 16 | usize::from(patch[1]) << 8 | usize::from(patch[2]))
                    % seg.len();
            seg[at] = patch[3];
        }
        seg
    } else {
        rest.to_vec()
    };

    let verdict = run(&name, &content, chunk);
    assert_eq!(
        verdict,
        run(&name, &content, content.len().max(1)),
        "verdict depends on chunking"
    );
});
