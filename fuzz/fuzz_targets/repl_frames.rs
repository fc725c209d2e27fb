//! pgrepl's parsers of backend messages and CopyData payloads on arbitrary bytes: never panic,
//! and what they accept is consistent with the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgrepl::frames::{
    parse_auth, parse_backend_key_data, parse_backup_message, parse_command_complete,
    parse_copy_response, parse_data_row, parse_error_fields, parse_header, parse_parameter_status,
    parse_ready_for_query, parse_replication_message, parse_row_description, BackupMessage,
    ReplicationMessage, MAX_MESSAGE_LEN,
};

fuzz_target!(|data: &[u8]| {
    if data.len() >= 5 {
        let header = [data[0], data[1], data[2], data[3], data[4]];
        if let Ok((tag, body_len)) = parse_header(header) {
            assert_eq!(tag, data[0]);
            assert!(body_len + 5 <= MAX_MESSAGE_LEN);
        }
    }

    match parse_replication_message(data) {
        Ok(ReplicationMessage::XLogData { start, data: wal, .. }) => {
            assert_eq!(data.first(), Some(&b'w'));
            assert_eq!(wal.len() + 25, data.len());
            assert!(start.checked_add(wal.len() as u64).is_some());
        }
        Ok(ReplicationMessage::Keepalive { .. }) => assert_eq!(data.len(), 18),
        Err(_) => {}
    }

    match parse_backup_message(data) {
        Ok(BackupMessage::Data(bytes)) => assert_eq!(bytes, &data[1..]),
        Ok(BackupMessage::NewArchive {
            name,
            tablespace_location,
        }) => assert_eq!(name.len() + tablespace_location.len() + 3, data.len()),
        Ok(BackupMessage::Progress(_)) => assert_eq!(data.len(), 9),
        Ok(BackupMessage::ManifestStart) => assert_eq!(data, b"m"),
        Err(_) => {}
    }

    let _ = parse_auth(data);
    let _ = parse_error_fields(data);
    let _ = parse_parameter_status(data);
    let _ = parse_backend_key_data(data);
    let _ = parse_ready_for_query(data);
    let _ = parse_command_complete(data);
    let _ = parse_copy_response(data);
    if let Ok(columns) = parse_row_description(data) {
        assert!(columns.len() <= data.len());
    }
    if let Ok(values) = parse_data_row(data) {
        let total: usize = values.iter().flatten().map(|v| v.len() + 4).sum();
        assert!(total + values.iter().filter(|v| v.is_none()).count() * 4 + 2 == data.len());
    }
});
