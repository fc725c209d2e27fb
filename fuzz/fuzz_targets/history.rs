//! Timeline history and backup history parsers on arbitrary bytes: never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgwal::backup_history::{
    check_backup_history_name, parse_backup_history, parse_backup_history_bytes,
};
use pgwal::history::{parse_history_bytes, timeline_of_point, timeline_spans};
use pgwal::{SegmentSize, WalFileName};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the history file's timeline, the rest is the content.
    let (tli, content) = match data.split_first() {
        Some((t, rest)) => (u32::from(*t), rest),
        None => (0, data),
    };
    if let Ok(entries) = parse_history_bytes(tli, content) {
        for pair in entries.windows(2) {
            assert!(pair[0].parent_tli < pair[1].parent_tli);
            assert!(pair[0].switchpoint <= pair[1].switchpoint);
        }
        assert!(entries.iter().all(|e| e.parent_tli < tli));
        let spans = timeline_spans(tli, &entries);
        if let Some(last) = entries.last() {
            assert_eq!(timeline_of_point(last.switchpoint, &spans), Some(tli));
        }
    }

    if let Ok(h) = parse_backup_history_bytes(content) {
        assert!(h.start_lsn <= h.stop_lsn);
        for stop_tli in [h.stop_timeline.unwrap_or(1), tli.max(1)] {
            for size in [
                None,
                Some(SegmentSize::DEFAULT),
                Some(SegmentSize::MIN),
                Some(SegmentSize::MAX),
            ] {
                let name = WalFileName::backup(stop_tli, h.start_lsn, size.unwrap_or_default());
                let _ = check_backup_history_name(&name, &h, size);
            }
        }
    }
    if let Ok(text) = std::str::from_utf8(content) {
        let _ = parse_backup_history(text);
    }
});
