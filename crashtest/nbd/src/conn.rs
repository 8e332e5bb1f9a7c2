//! One client connection: fixed newstyle handshake, then the transmission phase.
//!
//! The connection runs on a blocking thread with buffered std I/O: requests are parsed out of one
//! read buffer and processed in order, replies collect in a write buffer that is flushed whenever
//! the next read could block (so pipelined requests are answered in batches, and a client waiting
//! for replies always gets them).

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::net::UnixStream;

use crate::disk::{Disk, Persisted};
use crate::proto::*;
use crate::{Shared, MAX_PAYLOAD, SECTOR_SIZE};

const BUF_SIZE: usize = 256 * 1024;
/// Option data larger than this is treated as abuse: hard disconnect.
const MAX_OPTION_LEN: u32 = 64 * 1024;
/// Strings (export names) longer than this are invalid per the spec.
const MAX_STRING: usize = 4096;
/// Options per connection before we give up on the client.
const MAX_OPTIONS: usize = 1024;
const PREFERRED_BLOCK: u32 = 4096;
/// Payload buffers larger than this are released after use.
const SHRINK_ABOVE: usize = 4 << 20;

const TRANSMISSION_FLAGS: u16 =
    FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_FUA | FLAG_SEND_WRITE_ZEROES;

type Reader = BufReader<UnixStream>;
type Writer = BufWriter<UnixStream>;

fn protocol(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

fn be_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// Serves one connection until the client disconnects. Errors are connection-fatal (I/O errors
/// or protocol violations that make the stream impossible to follow).
pub(crate) fn serve(stream: &UnixStream, shared: &Shared) -> io::Result<()> {
    let mut rd = BufReader::with_capacity(BUF_SIZE, stream.try_clone()?);
    let mut wr = BufWriter::with_capacity(BUF_SIZE, stream.try_clone()?);
    match handshake(&mut rd, &mut wr, shared)? {
        Some(enforce_alignment) => transmission(&mut rd, &mut wr, shared, enforce_alignment),
        None => Ok(()),
    }
}

fn option_reply(wr: &mut Writer, opt: u32, rep: u32, data: &[&[u8]]) -> io::Result<()> {
    let len: usize = data.iter().map(|d| d.len()).sum();
    let mut hdr = [0u8; 20];
    hdr[..8].copy_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    hdr[8..12].copy_from_slice(&opt.to_be_bytes());
    hdr[12..16].copy_from_slice(&rep.to_be_bytes());
    hdr[16..20].copy_from_slice(&(len as u32).to_be_bytes());
    wr.write_all(&hdr)?;
    for d in data {
        wr.write_all(d)?;
    }
    Ok(())
}

fn option_error(wr: &mut Writer, opt: u32, rep: u32, msg: &str) -> io::Result<()> {
    option_reply(wr, opt, rep, &[msg.as_bytes()])
}

fn name_ok(shared: &Shared, name: &[u8]) -> bool {
    name.is_empty() || name == shared.export_name().as_bytes()
}

/// NBD_OPT_INFO / NBD_OPT_GO data: name length, name, number of info requests, requests.
/// Returns the name and whether NBD_INFO_BLOCK_SIZE was requested.
fn parse_info(data: &[u8]) -> Result<(&[u8], bool), (u32, &'static str)> {
    const INVALID: u32 = REP_ERR_INVALID;
    if data.len() < 6 {
        return Err((INVALID, "option data too short"));
    }
    let name_len = be_u32(data) as usize;
    if name_len > data.len() - 6 {
        return Err((INVALID, "export name length exceeds option data"));
    }
    if name_len > MAX_STRING {
        return Err((REP_ERR_TOO_BIG, "export name longer than 4096 bytes"));
    }
    let name = &data[4..4 + name_len];
    let rest = &data[4 + name_len..];
    let count = be_u16(rest) as usize;
    if rest.len() != 2 + 2 * count {
        return Err((
            INVALID,
            "information request count does not match option length",
        ));
    }
    let wants_block_size = rest[2..]
        .chunks_exact(2)
        .any(|r| be_u16(r) == INFO_BLOCK_SIZE);
    Ok((name, wants_block_size))
}

/// Returns `Some(enforce_alignment)` when the client entered the transmission phase, `None` when
/// it aborted.
fn handshake(rd: &mut Reader, wr: &mut Writer, shared: &Shared) -> io::Result<Option<bool>> {
    let mut hello = [0u8; 18];
    hello[..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    hello[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    hello[16..].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    wr.write_all(&hello)?;
    wr.flush()?;

    let mut cflags = [0u8; 4];
    rd.read_exact(&mut cflags)?;
    let cflags = u32::from_be_bytes(cflags);
    if cflags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(protocol("client sent unknown handshake flags"));
    }
    let no_zeroes = cflags & FLAG_C_NO_ZEROES != 0;
    let size = shared.size();

    let mut data = Vec::new();
    for _ in 0..MAX_OPTIONS {
        let mut hdr = [0u8; 16];
        rd.read_exact(&mut hdr)?;
        if be_u64(&hdr) != IHAVEOPT {
            return Err(protocol("bad option magic"));
        }
        let opt = be_u32(&hdr[8..]);
        let len = be_u32(&hdr[12..]);
        if len > MAX_OPTION_LEN {
            return Err(protocol("option data too large"));
        }
        data.resize(len as usize, 0);
        rd.read_exact(&mut data)?;
        match opt {
            OPT_EXPORT_NAME => {
                // This option cannot fail: an unknown export ends the session.
                if !name_ok(shared, &data) {
                    return Err(protocol("client asked for an unknown export"));
                }
                let mut reply = [0u8; 10 + 124];
                reply[..8].copy_from_slice(&size.to_be_bytes());
                reply[8..10].copy_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
                let n = if no_zeroes { 10 } else { reply.len() };
                wr.write_all(&reply[..n])?;
                wr.flush()?;
                return Ok(Some(false));
            }
            OPT_ABORT => {
                option_reply(wr, opt, REP_ACK, &[])?;
                wr.flush()?;
                return Ok(None);
            }
            OPT_LIST => {
                if len != 0 {
                    option_error(wr, opt, REP_ERR_INVALID, "NBD_OPT_LIST takes no data")?;
                } else {
                    let name = shared.export_name().as_bytes();
                    let name_len = (name.len() as u32).to_be_bytes();
                    option_reply(wr, opt, REP_SERVER, &[&name_len, name])?;
                    option_reply(wr, opt, REP_ACK, &[])?;
                }
            }
            OPT_INFO | OPT_GO => match parse_info(&data) {
                Err((rep, msg)) => option_error(wr, opt, rep, msg)?,
                Ok((name, _)) if !name_ok(shared, name) => {
                    option_error(wr, opt, REP_ERR_UNKNOWN, "no such export")?
                }
                Ok((_, wants_block_size)) => {
                    let mut export = [0u8; 12];
                    export[..2].copy_from_slice(&INFO_EXPORT.to_be_bytes());
                    export[2..10].copy_from_slice(&size.to_be_bytes());
                    export[10..].copy_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
                    option_reply(wr, opt, REP_INFO, &[&export])?;
                    if wants_block_size {
                        let mut bs = [0u8; 14];
                        bs[..2].copy_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
                        bs[2..6].copy_from_slice(&(SECTOR_SIZE as u32).to_be_bytes());
                        bs[6..10].copy_from_slice(&PREFERRED_BLOCK.to_be_bytes());
                        bs[10..].copy_from_slice(&MAX_PAYLOAD.to_be_bytes());
                        option_reply(wr, opt, REP_INFO, &[&bs])?;
                    }
                    option_reply(wr, opt, REP_ACK, &[])?;
                    if opt == OPT_GO {
                        wr.flush()?;
                        // A client that asked for the block sizes promised to honour them.
                        return Ok(Some(wants_block_size));
                    }
                }
            },
            OPT_STRUCTURED_REPLY => {
                if len != 0 {
                    option_error(wr, opt, REP_ERR_INVALID, "option takes no data")?;
                } else {
                    option_error(wr, opt, REP_ERR_UNSUP, "structured replies not supported")?;
                }
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => option_error(
                wr,
                opt,
                REP_ERR_INVALID,
                "structured replies were not negotiated",
            )?,
            _ => option_error(wr, opt, REP_ERR_UNSUP, "unsupported option")?,
        }
        wr.flush()?;
    }
    Err(protocol("too many options"))
}

fn simple_reply(wr: &mut Writer, error: u32, cookie: u64) -> io::Result<()> {
    let mut r = [0u8; 16];
    r[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    r[4..8].copy_from_slice(&error.to_be_bytes());
    r[8..].copy_from_slice(&cookie.to_be_bytes());
    wr.write_all(&r)
}

/// Maps a backing-file error to an NBD error value.
/// A `WRITE` or (`zeroes`) a `WRITE_ZEROES` of `len` bytes at `offset` through the volatile
/// layer: what it persisted accounted, the request counted, an error logged; the NBD error (0:
/// none).
fn write(
    shared: &Shared,
    zeroes: bool,
    offset: u64,
    len: u32,
    fua: bool,
    op: impl FnOnce(&mut Disk) -> io::Result<Persisted>,
) -> u32 {
    let mut disk = shared.lock_disk();
    let result = op(&mut disk);
    shared.account(&disk, result.as_ref().copied().unwrap_or_default());
    drop(disk);
    match result {
        Ok(_) => {
            shared.count_write(u64::from(len), fua, zeroes);
            0
        }
        Err(e) => {
            let what = if zeroes { "write-zeroes" } else { "write" };
            tracing::warn!("nbd: {what} of {len} bytes at {offset}: {e}");
            nbd_errno(&e)
        }
    }
}

fn nbd_errno(e: &io::Error) -> u32 {
    match e.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded | io::ErrorKind::FileTooLarge => {
            ENOSPC
        }
        _ => EIO,
    }
}

/// Reads exactly `buf.len()` bytes, flushing pending replies first if that read could block.
fn read_payload(rd: &mut Reader, wr: &mut Writer, buf: &mut [u8]) -> io::Result<()> {
    if rd.buffer().len() < buf.len() {
        wr.flush()?;
    }
    rd.read_exact(buf)
}

fn transmission(
    rd: &mut Reader,
    wr: &mut Writer,
    shared: &Shared,
    enforce_alignment: bool,
) -> io::Result<()> {
    let size = shared.size();
    let mut buf: Vec<u8> = Vec::new();
    let mut hdr = [0u8; REQUEST_HEADER_LEN];
    loop {
        if buf.len() > SHRINK_ABOVE {
            // Do not keep a huge buffer per connection after a rare large request.
            buf = Vec::new();
        }
        if rd.buffer().len() < REQUEST_HEADER_LEN {
            // No complete request pending: send the replies we have before blocking.
            wr.flush()?;
        }
        match rd.read_exact(&mut hdr) {
            Ok(()) => {}
            // The client went away (killed, or disconnected without NBD_CMD_DISC).
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        if be_u32(&hdr) != REQUEST_MAGIC {
            // The stream cannot be resynchronised.
            return Err(protocol("bad request magic"));
        }
        let flags = be_u16(&hdr[4..]);
        let kind = be_u16(&hdr[6..]);
        let cookie = be_u64(&hdr[8..]);
        let offset = be_u64(&hdr[16..]);
        let len = be_u32(&hdr[24..]);
        let end = offset.checked_add(u64::from(len));
        let in_range = end.is_some_and(|e| e <= size);
        let aligned =
            !enforce_alignment || (offset % SECTOR_SIZE == 0 && u64::from(len) % SECTOR_SIZE == 0);

        let error = match kind {
            CMD_WRITE => {
                if len > MAX_PAYLOAD {
                    // Too large to buffer: discard the payload to stay in sync, then refuse.
                    discard(rd, wr, u64::from(len))?;
                    EINVAL
                } else {
                    let n = len as usize;
                    if buf.len() < n {
                        buf.resize(n, 0);
                    }
                    read_payload(rd, wr, &mut buf[..n])?;
                    let fua = flags & CMD_FLAG_FUA != 0;
                    if flags & !CMD_FLAG_FUA != 0 || !aligned {
                        EINVAL
                    } else if !in_range {
                        ENOSPC
                    } else {
                        write(shared, false, offset, len, fua, |disk| {
                            disk.write(offset, &buf[..n], fua)
                        })
                    }
                }
            }
            CMD_READ => {
                if flags & !CMD_FLAG_FUA != 0 || len > MAX_PAYLOAD || !in_range || !aligned {
                    EINVAL
                } else {
                    let n = len as usize;
                    if buf.len() < n {
                        buf.resize(n, 0);
                    }
                    let result = shared.lock_disk().read(offset, &mut buf[..n]);
                    match result {
                        Ok(()) => {
                            shared.count_read(u64::from(len));
                            simple_reply(wr, 0, cookie)?;
                            wr.write_all(&buf[..n])?;
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!("nbd: read of {len} bytes at {offset}: {e}");
                            EIO
                        }
                    }
                }
            }
            CMD_WRITE_ZEROES => {
                let fua = flags & CMD_FLAG_FUA != 0;
                if flags & !(CMD_FLAG_FUA | CMD_FLAG_NO_HOLE) != 0 || len > MAX_PAYLOAD || !aligned
                {
                    EINVAL
                } else if !in_range {
                    ENOSPC
                } else {
                    write(shared, true, offset, len, fua, |disk| {
                        disk.write_zeroes(offset, u64::from(len), fua)
                    })
                }
            }
            CMD_FLUSH => {
                if flags & !CMD_FLAG_FUA != 0 || offset != 0 || len != 0 {
                    EINVAL
                } else {
                    let mut disk = shared.lock_disk();
                    let result = disk.flush();
                    shared.account(&disk, result.as_ref().copied().unwrap_or_default());
                    drop(disk);
                    match result {
                        Ok(_) => {
                            shared.count_flush();
                            0
                        }
                        Err(e) => {
                            tracing::warn!("nbd: flush: {e}");
                            nbd_errno(&e)
                        }
                    }
                }
            }
            CMD_DISC => {
                // Every earlier request has been handled (in order); no reply.
                wr.flush()?;
                return Ok(());
            }
            _ => EINVAL,
        };
        if error != 0 {
            shared.count_error();
        }
        simple_reply(wr, error, cookie)?;
    }
}

/// Reads and drops `len` payload bytes.
fn discard(rd: &mut Reader, wr: &mut Writer, mut len: u64) -> io::Result<()> {
    wr.flush()?;
    let mut sink = [0u8; 64 * 1024];
    while len > 0 {
        let n = len.min(sink.len() as u64) as usize;
        rd.read_exact(&mut sink[..n])?;
        len -= n as u64;
    }
    Ok(())
}
