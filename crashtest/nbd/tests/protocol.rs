//! Protocol-level tests: the test is a raw NBD client over a `UnixStream`, so it can send what
//! QEMU never would (bad magic, unknown options, out-of-range and oversized requests, broken-off
//! requests) and check the server's exact answers.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kvmio_nbd::{Error, PowerFailMode, Server, ServerHandle, ServerOptions, MAX_PAYLOAD};

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_STARTTLS: u32 = 5;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;
const OPT_STRUCTURED_REPLY: u32 = 8;
const OPT_SET_META_CONTEXT: u32 = 11;

const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
const REP_ERR_INVALID: u32 = (1 << 31) + 3;
const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;

const INFO_EXPORT: u16 = 0;
const INFO_BLOCK_SIZE: u16 = 3;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_WRITE_ZEROES: u16 = 6;
const FLAG_FUA: u16 = 1;

const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;

/// HAS_FLAGS | SEND_FLUSH | SEND_FUA | SEND_WRITE_ZEROES.
const EXPECTED_TRANSMISSION_FLAGS: u16 = 0x0001 | 0x0004 | 0x0008 | 0x0040;

const FILL: u8 = 0x5a;
const SIZE: u64 = 4 << 20;

/// A server on its own runtime; the test thread is free to block on a raw client.
struct Fixture {
    rt: tokio::runtime::Runtime,
    handle: ServerHandle,
    _dir: tempfile::TempDir,
    socket: PathBuf,
    backing: PathBuf,
}

impl Fixture {
    fn new(size: u64, options: ServerOptions) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let backing = dir.path().join("disk.img");
        let f = std::fs::File::create(&backing).unwrap();
        f.set_len(size).unwrap();
        if size <= SIZE {
            std::fs::write(&backing, vec![FILL; size as usize]).unwrap();
        }
        let socket = dir.path().join("nbd.sock");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let server = Server::bind(&socket, &backing, options).unwrap();
        let handle = {
            let _guard = rt.enter();
            server.spawn()
        };
        Fixture {
            rt,
            handle,
            _dir: dir,
            socket,
            backing,
        }
    }

    fn default() -> Fixture {
        Fixture::new(SIZE, ServerOptions::default())
    }

    fn connect(&self) -> Client {
        Client::connect(&self.socket)
    }

    /// Greeting, then fixed newstyle + no zeroes: in option haggling.
    fn negotiating(&self) -> Client {
        let mut c = self.connect();
        c.start(3);
        c
    }

    /// [`Fixture::negotiating`], then NBD_OPT_GO for the default export.
    fn ready(&self) -> Client {
        let mut c = self.negotiating();
        let replies = c.go(OPT_GO, "", &[]);
        assert_eq!(replies.last().unwrap().0, REP_ACK);
        c
    }

    fn backing_bytes(&self) -> Vec<u8> {
        std::fs::read(&self.backing).unwrap()
    }

    fn stop(self) {
        self.rt.block_on(self.handle.shutdown()).unwrap();
        assert!(!self.socket.exists(), "socket file left behind");
    }
}

struct Client {
    s: UnixStream,
}

impl Client {
    fn connect(path: &Path) -> Client {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Client { s }
    }

    fn read_n(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        self.s.read_exact(&mut v).unwrap();
        v
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.read_n(2).try_into().unwrap())
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.read_n(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.read_n(8).try_into().unwrap())
    }

    /// True once the server has closed the connection (EOF or reset).
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        match self.s.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => {
                e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::TimedOut
            }
        }
    }

    /// Reads the greeting and sends the client flags; returns the handshake flags.
    fn start(&mut self, client_flags: u32) -> u16 {
        assert_eq!(self.u64(), NBDMAGIC);
        assert_eq!(self.u64(), IHAVEOPT);
        let flags = self.u16();
        self.s.write_all(&client_flags.to_be_bytes()).unwrap();
        flags
    }

    fn option(&mut self, opt: u32, data: &[u8]) {
        let mut m = Vec::new();
        m.extend_from_slice(&IHAVEOPT.to_be_bytes());
        m.extend_from_slice(&opt.to_be_bytes());
        m.extend_from_slice(&(data.len() as u32).to_be_bytes());
        m.extend_from_slice(data);
        self.s.write_all(&m).unwrap();
    }

    /// Sends option `opt` and reads its one reply's type (an error, where this is used).
    fn option_error(&mut self, opt: u32, data: &[u8]) -> u32 {
        self.option(opt, data);
        self.option_reply(opt).0
    }

    fn option_reply(&mut self, opt: u32) -> (u32, Vec<u8>) {
        assert_eq!(self.u64(), OPT_REPLY_MAGIC);
        assert_eq!(self.u32(), opt);
        let rep = self.u32();
        let len = self.u32() as usize;
        (rep, self.read_n(len))
    }

    fn info_data(name: &str, infos: &[u16]) -> Vec<u8> {
        let mut d = Vec::new();
        d.extend_from_slice(&(name.len() as u32).to_be_bytes());
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
        for i in infos {
            d.extend_from_slice(&i.to_be_bytes());
        }
        d
    }

    /// NBD_OPT_INFO or NBD_OPT_GO; returns every reply up to the final one.
    fn go(&mut self, opt: u32, name: &str, infos: &[u16]) -> Vec<(u32, Vec<u8>)> {
        self.option(opt, &Self::info_data(name, infos));
        let mut replies = Vec::new();
        loop {
            let r = self.option_reply(opt);
            let last = r.0 != REP_INFO;
            replies.push(r);
            if last {
                return replies;
            }
        }
    }

    fn send(&mut self, kind: u16, flags: u16, cookie: u64, offset: u64, len: u32, data: &[u8]) {
        let mut m = Vec::with_capacity(28 + data.len());
        m.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(&kind.to_be_bytes());
        m.extend_from_slice(&cookie.to_be_bytes());
        m.extend_from_slice(&offset.to_be_bytes());
        m.extend_from_slice(&len.to_be_bytes());
        m.extend_from_slice(data);
        self.s.write_all(&m).unwrap();
    }

    /// Simple reply header: (error, cookie).
    fn reply(&mut self) -> (u32, u64) {
        assert_eq!(self.u32(), SIMPLE_REPLY_MAGIC);
        let error = self.u32();
        (error, self.u64())
    }

    fn write(&mut self, cookie: u64, offset: u64, data: &[u8], flags: u16) -> u32 {
        self.send(CMD_WRITE, flags, cookie, offset, data.len() as u32, data);
        let (error, c) = self.reply();
        assert_eq!(c, cookie);
        error
    }

    fn read(&mut self, cookie: u64, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
        self.send(CMD_READ, 0, cookie, offset, len, &[]);
        let (error, c) = self.reply();
        assert_eq!(c, cookie);
        if error != 0 {
            return Err(error);
        }
        Ok(self.read_n(len as usize))
    }

    fn simple(&mut self, kind: u16, flags: u16, cookie: u64, offset: u64, len: u32) -> u32 {
        self.send(kind, flags, cookie, offset, len, &[]);
        let (error, c) = self.reply();
        assert_eq!(c, cookie);
        error
    }
}

fn all(bytes: &[u8], value: u8) -> bool {
    bytes.iter().all(|&b| b == value)
}

#[test]
fn go_and_info_describe_the_export() {
    let fx = Fixture::default();
    let mut c = fx.connect();
    let hflags = c.start(3);
    assert_eq!(hflags, 0b11, "FIXED_NEWSTYLE | NO_ZEROES");

    let replies = c.go(OPT_INFO, "", &[INFO_BLOCK_SIZE]);
    assert_eq!(replies.len(), 3, "{replies:?}");
    let export = &replies[0];
    assert_eq!(export.0, REP_INFO);
    assert_eq!(export.1.len(), 12);
    assert_eq!(u16::from_be_bytes([export.1[0], export.1[1]]), INFO_EXPORT);
    assert_eq!(
        u64::from_be_bytes(export.1[2..10].try_into().unwrap()),
        SIZE
    );
    assert_eq!(
        u16::from_be_bytes([export.1[10], export.1[11]]),
        EXPECTED_TRANSMISSION_FLAGS
    );
    let bs = &replies[1];
    assert_eq!(bs.0, REP_INFO);
    assert_eq!(bs.1.len(), 14);
    assert_eq!(u16::from_be_bytes([bs.1[0], bs.1[1]]), INFO_BLOCK_SIZE);
    let field = |i: usize| u32::from_be_bytes(bs.1[2 + 4 * i..6 + 4 * i].try_into().unwrap());
    assert_eq!((field(0), field(1), field(2)), (512, 4096, MAX_PAYLOAD));
    assert_eq!(replies[2], (REP_ACK, vec![]));

    // INFO does not end negotiation; GO without information requests does.
    let replies = c.go(OPT_GO, "", &[]);
    assert_eq!(replies.len(), 2);
    assert_eq!(replies[0].1.len(), 12);
    assert_eq!(replies[1], (REP_ACK, vec![]));
    assert_eq!(c.read(1, 0, 512).unwrap(), vec![FILL; 512]);
    fx.stop();
}

#[test]
fn export_name_fallback_with_and_without_zeroes() {
    let fx = Fixture::default();
    for no_zeroes in [false, true] {
        let mut c = fx.connect();
        c.start(if no_zeroes { 3 } else { 1 });
        c.option(OPT_EXPORT_NAME, b"");
        assert_eq!(c.u64(), SIZE);
        assert_eq!(c.u16(), EXPECTED_TRANSMISSION_FLAGS);
        if !no_zeroes {
            assert_eq!(c.read_n(124), vec![0; 124]);
        }
        // The next bytes must be the reply to our first request.
        assert_eq!(c.read(7, 512, 512).unwrap(), vec![FILL; 512]);
        c.send(CMD_DISC, 0, 8, 0, 0, &[]);
        assert!(c.closed());
    }
    fx.stop();
}

#[test]
fn unknown_options_are_refused_and_negotiation_continues() {
    let fx = Fixture::default();
    let mut c = fx.negotiating();
    assert_eq!(c.option_error(0x1234, b"hello"), REP_ERR_UNSUP);
    assert_eq!(c.option_error(OPT_STRUCTURED_REPLY, b""), REP_ERR_UNSUP);
    assert_eq!(c.option_error(OPT_STARTTLS, b""), REP_ERR_UNSUP);
    assert_eq!(
        c.option_error(OPT_SET_META_CONTEXT, b"\0\0\0\0\0\0\0\0"),
        REP_ERR_INVALID
    );
    assert_eq!(c.option_error(OPT_LIST, b"x"), REP_ERR_INVALID);
    c.option(OPT_LIST, b"");
    assert_eq!(c.option_reply(OPT_LIST), (REP_SERVER, vec![0, 0, 0, 0]));
    assert_eq!(c.option_reply(OPT_LIST), (REP_ACK, vec![]));
    let replies = c.go(OPT_GO, "", &[]);
    assert_eq!(replies.last().unwrap().0, REP_ACK);
    assert_eq!(c.write(1, 0, &[1; 512], 0), 0);
    assert_eq!(c.read(2, 0, 512).unwrap(), vec![1; 512]);
    fx.stop();
}

#[test]
fn malformed_or_unknown_exports_are_refused() {
    let fx = Fixture::new(
        SIZE,
        ServerOptions {
            export_name: "disk".into(),
            ..ServerOptions::default()
        },
    );
    let mut c = fx.negotiating();
    assert_eq!(
        c.go(OPT_GO, "nope", &[]),
        vec![(REP_ERR_UNKNOWN, b"no such export".to_vec())]
    );
    // Name length larger than the data.
    assert_eq!(
        c.option_error(OPT_GO, &[0, 0, 1, 0, b'x', 0, 0]),
        REP_ERR_INVALID
    );
    // Information request count does not match.
    assert_eq!(
        c.option_error(OPT_INFO, &[0, 0, 0, 0, 0, 2, 0, 0]),
        REP_ERR_INVALID
    );
    // Too short.
    assert_eq!(c.option_error(OPT_GO, &[0, 0]), REP_ERR_INVALID);
    // The configured name works.
    assert_eq!(c.go(OPT_GO, "disk", &[]).last().unwrap().0, REP_ACK);
    assert!(c.read(1, 0, 4096).is_ok());

    // NBD_OPT_EXPORT_NAME cannot fail: an unknown name ends the session.
    let mut c = fx.negotiating();
    c.option(OPT_EXPORT_NAME, b"nope");
    assert!(c.closed());
    fx.ready();
    fx.stop();
}

#[test]
fn abort_is_acknowledged_then_closed() {
    let fx = Fixture::default();
    let mut c = fx.negotiating();
    c.option(OPT_ABORT, b"");
    assert_eq!(c.option_reply(OPT_ABORT), (REP_ACK, vec![]));
    assert!(c.closed());
    fx.stop();
}

#[test]
fn protocol_violations_close_the_connection_but_not_the_server() {
    let fx = Fixture::default();
    // Unknown client flags.
    let mut c = fx.connect();
    c.start(0x80);
    assert!(c.closed());
    // Bad option magic.
    let mut c = fx.negotiating();
    c.s.write_all(&[0xde; 16]).unwrap();
    assert!(c.closed());
    // Absurd option length.
    let mut c = fx.negotiating();
    let mut m = IHAVEOPT.to_be_bytes().to_vec();
    m.extend_from_slice(&OPT_GO.to_be_bytes());
    m.extend_from_slice(&u32::MAX.to_be_bytes());
    c.s.write_all(&m).unwrap();
    assert!(c.closed());
    // Bad request magic in the transmission phase.
    let mut c = fx.ready();
    c.s.write_all(&[0xab; 28]).unwrap();
    assert!(c.closed());
    // The server is still serving.
    let mut c = fx.ready();
    assert_eq!(c.read(1, 0, 512).unwrap(), vec![FILL; 512]);
    fx.stop();
}

#[test]
fn out_of_range_requests_fail_and_the_connection_continues() {
    let fx = Fixture::default();
    let mut c = fx.ready();
    assert_eq!(c.read(1, SIZE - 512, 1024), Err(EINVAL));
    assert_eq!(c.read(2, SIZE, 1), Err(EINVAL));
    assert_eq!(c.read(3, u64::MAX - 10, 512), Err(EINVAL));
    assert_eq!(c.write(4, SIZE - 512, &[1; 1024], 0), ENOSPC);
    assert_eq!(c.write(5, u64::MAX - 511, &[1; 1024], FLAG_FUA), ENOSPC);
    assert_eq!(c.simple(CMD_WRITE_ZEROES, 0, 6, SIZE, 512), ENOSPC);
    // Zero-length requests at the end are fine.
    assert_eq!(c.read(7, SIZE, 0), Ok(vec![]));
    // Nothing was written, and the connection still works.
    assert_eq!(c.read(8, SIZE - 512, 512).unwrap(), vec![FILL; 512]);
    assert_eq!(c.write(9, SIZE - 512, &[2; 512], 0), 0);
    assert_eq!(c.read(10, SIZE - 512, 512).unwrap(), vec![2; 512]);
    let stats = fx.handle.stats();
    assert_eq!(stats.errors, 6);
    assert_eq!(stats.writes, 1);
    fx.stop();
}

#[test]
fn oversized_requests_are_rejected() {
    // Sparse 40 MiB export, so that a maximal request is in range.
    let fx = Fixture::new(40 << 20, ServerOptions::default());
    let mut c = fx.ready();
    let max = MAX_PAYLOAD;
    assert_eq!(c.read(1, 0, max + 512), Err(EINVAL));
    assert_eq!(c.read(2, 0, u32::MAX), Err(EINVAL));
    // An oversized write's payload is consumed, so the stream stays in sync.
    let big = vec![7u8; (max + 512) as usize];
    assert_eq!(c.write(3, 0, &big, 0), EINVAL);
    assert_eq!(c.simple(CMD_WRITE_ZEROES, 0, 4, 0, max + 512), EINVAL);
    // The maximum itself is accepted.
    assert_eq!(c.write(5, 0, &big[..max as usize], 0), 0);
    assert_eq!(c.read(6, 0, max).unwrap(), big[..max as usize]);
    assert_eq!(c.simple(CMD_FLUSH, 0, 7, 0, 0), 0);
    assert_eq!(fx.handle.stats().bytes_persisted, u64::from(max));
    fx.stop();
}

#[test]
fn invalid_commands_and_flags_get_einval() {
    let fx = Fixture::default();
    let mut c = fx.ready();
    assert_eq!(
        c.simple(5, 0, 1, 0, 512),
        EINVAL,
        "NBD_CMD_CACHE not advertised"
    );
    assert_eq!(c.simple(7, 0, 2, 0, 512), EINVAL, "NBD_CMD_BLOCK_STATUS");
    assert_eq!(
        c.simple(4, 0, 3, 0, 512),
        EINVAL,
        "NBD_CMD_TRIM not advertised"
    );
    assert_eq!(c.simple(99, 0, 4, 0, 0), EINVAL);
    assert_eq!(c.read(5, 0, 0).unwrap(), vec![]);
    c.send(CMD_READ, 1 << 2, 6, 0, 512, &[]); // NBD_CMD_FLAG_DF without structured replies
    assert_eq!(c.reply(), (EINVAL, 6));
    // NO_HOLE is only valid on WRITE_ZEROES; the payload is still consumed.
    assert_eq!(c.write(7, 0, &[3; 512], 1 << 1), EINVAL);
    assert_eq!(c.simple(CMD_FLUSH, 0, 8, 512, 0), EINVAL);
    assert_eq!(c.simple(CMD_FLUSH, 0, 9, 0, 512), EINVAL);
    assert_eq!(
        c.simple(CMD_WRITE_ZEROES, 1 << 4, 10, 0, 512),
        EINVAL,
        "FAST_ZERO"
    );
    // Valid flags.
    assert_eq!(c.simple(CMD_FLUSH, FLAG_FUA, 11, 0, 0), 0);
    assert_eq!(c.simple(CMD_WRITE_ZEROES, 1 << 1, 12, 0, 512), 0);
    assert_eq!(
        c.read(13, 0, 1024).unwrap()[..],
        [[0u8; 512], [FILL; 512]].concat()[..]
    );
    fx.stop();
}

#[test]
fn unaligned_requests_use_read_modify_write_unless_block_size_was_agreed() {
    let fx = Fixture::default();
    let mut c = fx.ready();
    assert_eq!(c.write(1, 1000, &[9; 100], 0), 0);
    let data = c.read(2, 990, 120).unwrap();
    assert!(all(&data[..10], FILL) && all(&data[10..110], 9) && all(&data[110..], FILL));
    assert_eq!(fx.handle.stats().volatile_bytes, 1024, "two whole sectors");
    fx.rt
        .block_on(fx.handle.power_fail(PowerFailMode::DropAll))
        .unwrap();
    assert!(all(&fx.backing_bytes(), FILL));

    // A client that asked for the block size constraints must honour them.
    let mut c = fx.negotiating();
    assert_eq!(
        c.go(OPT_GO, "", &[INFO_BLOCK_SIZE]).last().unwrap().0,
        REP_ACK
    );
    assert_eq!(c.write(3, 1000, &[9; 100], 0), EINVAL);
    assert_eq!(c.read(4, 0, 100), Err(EINVAL));
    assert_eq!(c.write(5, 1024, &[9; 512], 0), 0);
    fx.stop();
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let fx = Fixture::default();
    let mut c = fx.ready();
    let mut sender = Client {
        s: c.s.try_clone().unwrap(),
    };
    const N: u64 = 300;
    let writer = std::thread::spawn(move || {
        for i in 0..N {
            let data = vec![(i % 251) as u8; 4096];
            sender.send(CMD_WRITE, 0, i, i * 4096, 4096, &data);
        }
        sender.send(CMD_FLUSH, 0, N, 0, 0, &[]);
        for i in 0..N {
            sender.send(CMD_READ, 0, N + 1 + i, i * 4096, 4096, &[]);
        }
    });
    for i in 0..=N {
        assert_eq!(c.reply(), (0, i));
    }
    for i in 0..N {
        assert_eq!(c.reply(), (0, N + 1 + i));
        assert!(all(&c.read_n(4096), (i % 251) as u8), "read {i}");
    }
    writer.join().unwrap();
    let stats = fx.handle.stats();
    assert_eq!((stats.writes, stats.reads, stats.flushes), (N, N, 1));
    assert_eq!(stats.syncs, 1, "one fdatasync per flush");
    assert_eq!(stats.bytes_persisted, N * 4096);
    fx.stop();
}

#[test]
fn client_disconnect_mid_request_leaves_the_server_running() {
    let fx = Fixture::default();
    // Mid-payload: header of a 64 KiB write and only 1000 bytes of it.
    let mut c = fx.ready();
    let mut m = REQUEST_MAGIC.to_be_bytes().to_vec();
    m.extend_from_slice(&0u16.to_be_bytes());
    m.extend_from_slice(&CMD_WRITE.to_be_bytes());
    m.extend_from_slice(&1u64.to_be_bytes());
    m.extend_from_slice(&0u64.to_be_bytes());
    m.extend_from_slice(&65536u32.to_be_bytes());
    m.extend_from_slice(&[1; 1000]);
    c.s.write_all(&m).unwrap();
    drop(c);
    // Mid-header, mid-handshake, mid-option.
    let mut c = fx.ready();
    c.s.write_all(&REQUEST_MAGIC.to_be_bytes()).unwrap();
    drop(c);
    let c = fx.negotiating();
    drop(c);
    let mut c = fx.negotiating();
    c.s.write_all(&IHAVEOPT.to_be_bytes()).unwrap();
    drop(c);
    drop(fx.connect());

    let mut c = fx.ready();
    assert_eq!(
        c.read(1, 0, 65536).unwrap(),
        vec![FILL; 65536],
        "partial write applied"
    );
    assert_eq!(fx.handle.stats().writes, 0);
    fx.stop();
}

#[test]
fn disconnect_keeps_volatile_data_and_power_failure_severs_clients() {
    let fx = Fixture::default();
    let mut c = fx.ready();
    assert_eq!(c.write(1, 0, &[3; 8192], 0), 0);
    c.send(CMD_DISC, 0, 2, 0, 0, &[]);
    assert!(c.closed());
    let stats = fx.handle.stats();
    assert_eq!((stats.volatile_bytes, stats.volatile_writes), (8192, 1));

    // A client still connected at the power failure is cut off.
    let mut c = fx.ready();
    assert_eq!(c.read(3, 0, 8192).unwrap(), vec![3; 8192]);
    let report = fx
        .rt
        .block_on(fx.handle.power_fail(PowerFailMode::DropAll))
        .unwrap();
    assert_eq!(report.unflushed_writes, 1);
    assert_eq!(report.volatile_bytes, 8192);
    assert!(c.closed());
    assert!(all(&fx.backing_bytes(), FILL));
    let mut c = fx.ready();
    assert_eq!(c.read(4, 0, 8192).unwrap(), vec![FILL; 8192]);
    fx.stop();
}

#[test]
fn connection_limit_is_enforced() {
    let fx = Fixture::new(
        SIZE,
        ServerOptions {
            max_connections: 1,
            ..ServerOptions::default()
        },
    );
    let mut first = fx.ready();
    let mut second = fx.connect();
    assert!(second.closed(), "second client accepted over the limit");
    assert_eq!(first.read(1, 0, 512).unwrap(), vec![FILL; 512]);
    drop(first);
    // Once the first handler has finished, a new client is accepted.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = fx.connect();
        let mut b = [0u8; 8];
        if c.s.read_exact(&mut b).is_ok() {
            assert_eq!(u64::from_be_bytes(b), NBDMAGIC);
            break;
        }
        assert!(Instant::now() < deadline, "server never accepted again");
        std::thread::sleep(Duration::from_millis(20));
    }
    fx.stop();
}

#[test]
fn shutdown_disconnects_clients_and_removes_the_socket() {
    let fx = Fixture::default();
    let mut c = fx.ready();
    assert_eq!(c.write(1, 0, &[4; 512], 0), 0);
    fx.rt.block_on(fx.handle.shutdown()).unwrap();
    assert!(c.closed());
    assert!(!fx.socket.exists());
    assert!(UnixStream::connect(&fx.socket).is_err());
    // Unflushed data is not persisted by a shutdown.
    assert!(all(&fx.backing_bytes()[..512], FILL));
    // Shutting down twice is harmless.
    fx.rt.block_on(fx.handle.shutdown()).unwrap();
}

#[test]
fn bind_checks_its_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let odd = dir.path().join("odd.img");
    std::fs::write(&odd, [0u8; 1000]).unwrap();
    let sock = dir.path().join("s.sock");
    assert!(matches!(
        Server::bind(&sock, &odd, ServerOptions::default()),
        Err(Error::UnalignedSize { size: 1000, .. })
    ));
    assert!(!sock.exists());
    assert!(matches!(
        Server::bind(
            &sock,
            dir.path().join("missing.img"),
            ServerOptions::default()
        ),
        Err(Error::Backing { .. })
    ));
    assert!(Server::bind(&sock, dir.path(), ServerOptions::default()).is_err());
    // An existing file at the socket path is neither replaced nor removed.
    let good = dir.path().join("good.img");
    std::fs::write(&good, [0u8; 4096]).unwrap();
    std::fs::write(&sock, b"precious").unwrap();
    assert!(matches!(
        Server::bind(&sock, &good, ServerOptions::default()),
        Err(Error::Listen { .. })
    ));
    assert_eq!(std::fs::read(&sock).unwrap(), b"precious");
    // Dropping a bound server that never ran removes its socket.
    let sock2 = dir.path().join("s2.sock");
    let server = Server::bind(&sock2, &good, ServerOptions::default()).unwrap();
    assert!(sock2.exists());
    drop(server);
    assert!(!sock2.exists());
}

#[test]
fn power_fail_modes_parse_and_print() {
    for (text, mode) in [
        ("drop-all", PowerFailMode::DropAll),
        ("subset:42", PowerFailMode::Subset { seed: 42 }),
        ("subset-torn:7", PowerFailMode::SubsetTorn { seed: 7 }),
    ] {
        assert_eq!(text.parse::<PowerFailMode>().unwrap(), mode);
        assert_eq!(mode.to_string(), text);
    }
    assert_eq!(
        "subset 5".parse::<PowerFailMode>().unwrap(),
        PowerFailMode::Subset { seed: 5 }
    );
    for bad in ["", "drop", "subset", "subset:x", "torn:1", "subset:-1"] {
        assert!(bad.parse::<PowerFailMode>().is_err(), "{bad:?}");
    }
}
