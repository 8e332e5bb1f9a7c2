//! The crash tester's NBD server, which QEMU's NBD client (driven by the guest) talks to.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;
use std::time::Duration;

use kvmio_nbd::{Server, ServerHandle, ServerOptions};

use crate::scratch;

/// The export's size: small, so that reads of any offset stay cheap.
const EXPORT_BYTES: u64 = 64 * 1024;

/// One server per process, on a scratch backing file; it runs on the shared runtime's thread
/// pool (a connection is served on a blocking thread).
fn server() -> &'static ServerHandle {
    static SERVER: OnceLock<ServerHandle> = OnceLock::new();
    SERVER.get_or_init(|| {
        let backing = scratch().join("nbd.img");
        std::fs::File::create(&backing)
            .and_then(|f| f.set_len(EXPORT_BYTES))
            .expect("the backing file");
        let options = ServerOptions {
            max_volatile_bytes: 1 << 20,
            ..ServerOptions::default()
        };
        let server = Server::bind(scratch().join("nbd.sock"), &backing, options)
            .expect("bind the NBD server");
        let handle = server.handle();
        std::thread::spawn(move || {
            let _ = nbd_runtime().block_on(server.run());
        });
        handle
    })
}

/// The server's own multi-threaded runtime (the targets' runtime runs only while a target
/// blocks on it).
fn nbd_runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

/// A client connection sending the input as it is (handshake options, then requests), then
/// closing its side: the server answers or disconnects, and always finishes the connection
/// (it never waits for more than the client sent, never hangs, never panics).
pub fn nbd_requests(data: &[u8]) {
    let server = server();
    let mut stream = UnixStream::connect(server.socket_path()).expect("connect to the server");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("a read timeout");
    let mut writer = stream.try_clone().expect("clone the client socket");
    let input = data.to_vec();
    let sender = std::thread::spawn(move || {
        // The server may close early (a protocol violation): that ends the writing.
        let _ = writer.write_all(&input);
        let _ = writer.shutdown(Shutdown::Write);
    });
    let mut sink = [0u8; 64 * 1024];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("the NBD server neither answered nor closed within 20 s")
            }
            Err(_) => break,
        }
    }
    sender.join().expect("the sender thread");
}
