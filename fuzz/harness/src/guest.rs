//! The crash tester's inputs from the guest: control-port lines, records read back from the
//! disk under test, and the ack log they end up in.

use kvmio_crashtest::acklog::AckLog;
use kvmio_guest::protocol::GuestMessage;
use kvmio_guest::record::{self, RecordSpec};

use crate::scratch;

/// One control-port line per input line. A parsed `ACK` or `DONE` prints back as a line
/// that parses to the same message.
pub fn guest_message(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for line in text.split('\n') {
        let Some(message) = GuestMessage::parse(line) else {
            continue;
        };
        let printed = message.to_string();
        if matches!(
            message,
            GuestMessage::Ack { .. } | GuestMessage::Done { .. }
        ) {
            assert_eq!(GuestMessage::parse(&printed).as_ref(), Some(&message));
        }
    }
}

/// A record read back from the disk: any bytes are a valid record or `None`; a valid one names
/// its own length, and a record written by [`RecordSpec::fill`] with the input's parameters
/// parses back to what was written.
pub fn record(data: &[u8]) {
    if let Some(header) = record::parse(data) {
        assert_eq!(header.size as usize, data.len());
        assert_eq!(header.version, record::VERSION);
    }
    if data.len() >= 24 {
        let word = |i: usize| u64::from_le_bytes(data[i..i + 8].try_into().expect("8 bytes"));
        let size = record::SECTOR * (1 + (word(16) % 4) as usize);
        let spec = RecordSpec::new(word(0), word(8), size).expect("a valid size");
        let seq = word(16) >> 2;
        let mut buf = vec![0u8; size];
        let digest = spec.fill(seq, &mut buf);
        let header = record::parse(&buf).expect("a filled record parses");
        assert_eq!((header.seq, header.run_id), (seq, spec.run_id));
        assert!(spec.payload_matches(seq, &buf));
        assert_eq!(
            record::digest_from_hex(&record::to_hex(&digest)),
            Some(digest)
        );
    }
    let _ = record::digest_from_hex(&String::from_utf8_lossy(data));
}

/// An ack log (`kvmio-crashtest verify --acks FILE` reads any file it is given): read through
/// [`AckLog::read`] from a file holding the input.
pub fn ack_log(data: &[u8]) {
    let path = scratch().join("acks");
    std::fs::write(&path, data).expect("write the scratch ack log");
    if let Ok(log) = AckLog::read(&path) {
        assert!(
            log.header.spec().is_ok(),
            "a log with an invalid record size"
        );
        let _ = log.header.slots();
    }
}
