//! `GuestAgent` against the real `qemu-ga`, run on the host (`-m unix-listen`): it reports the
//! host's disks and reads host files, which is all these tests need.

mod common;

use std::time::Duration;

use common::{assert_times_out_while_stopped, limits, start_agent, AgentUnderTest};
use kvmio_qemu::{AgentCommands, Error, GuestAgent, Limits};
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn ping_info_disks_and_fsinfo() {
    let mut agent = start_agent(&[], limits()).await;
    let ga = &mut agent.ga;

    ga.ping().await.unwrap();
    let info = ga.info().await.unwrap();
    assert!(!info.version.is_empty());
    assert!(info.supports("guest-ping"), "{info:?}");
    assert!(info.supports("guest-sync-delimited"));

    // guest-get-diskstats exists since 7.1; this host's agent is 7.2.
    if info.supports("guest-get-diskstats") {
        let stats = ga.get_diskstats().await.unwrap();
        for disk in &stats {
            assert!(!disk.name.is_empty(), "{disk:?}");
            assert!(disk.stats.read_ios.is_some(), "{disk:?}");
        }
    }
    let disks = ga.get_disks().await.unwrap();
    for disk in &disks {
        assert!(disk.name.starts_with('/'), "{disk:?}");
    }
    // File systems: a container may have none the agent can describe, or deny it.
    match ga.get_fsinfo().await {
        Ok(fs) => {
            for f in &fs {
                assert!(f.mountpoint.starts_with('/'), "{f:?}");
            }
        }
        Err(e) => assert!(e.is_command(), "{e}"),
    }
    let err = ga
        .execute_value("guest-no-such-command", None)
        .await
        .unwrap_err();
    assert_eq!(err.command_class(), Some("CommandNotFound"), "{err}");
    ga.ping().await.unwrap();
}

#[tokio::test]
async fn file_read_all_reads_whole_files_within_the_limit() {
    // Small lines force several guest-file-read chunks.
    let small = limits().with_max_line_bytes(16 * 1024);
    let mut agent = start_agent(&[], small).await;
    let (ga, dir) = (&mut agent.ga, &agent.dir);

    let content: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let file = dir.path().join("data.bin");
    std::fs::write(&file, &content).unwrap();
    let path = file.to_str().unwrap();

    assert_eq!(ga.file_read_all(path, 1 << 20).await.unwrap(), content);
    assert_eq!(
        ga.file_read_all(path, content.len()).await.unwrap(),
        content
    );
    let err = ga.file_read_all(path, content.len() - 1).await.unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");

    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    assert!(ga
        .file_read_all(empty.to_str().unwrap(), 10)
        .await
        .unwrap()
        .is_empty());

    let err = ga
        .file_read_all("/nonexistent/kvmio", 10)
        .await
        .unwrap_err();
    assert!(err.is_command(), "{err}");
    // Every handle was closed: the agent still answers normally.
    ga.ping().await.unwrap();
}

#[tokio::test]
async fn exec_wait_runs_echo_or_reports_the_block() {
    let mut agent = start_agent(&[], limits()).await;
    let ga = &mut agent.ga;

    let info = ga.info().await.unwrap();
    let result = ga
        .exec_wait("/bin/echo", &["hi"], Duration::from_secs(10))
        .await;
    if info.supports("guest-exec") {
        let status = result.unwrap();
        assert!(status.success(), "{status:?}");
        assert_eq!(status.out, b"hi\n");
        assert!(status.err.is_empty());

        let status = ga
            .exec_wait(
                "/bin/sh",
                &["-c", "echo oops >&2; exit 3"],
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        assert_eq!(status.exitcode, Some(3));
        assert_eq!(status.err, b"oops\n");

        let err = ga
            .exec_wait("/bin/sleep", &["5"], Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
    } else {
        let err = result.unwrap_err();
        assert!(err.is_command(), "{err}");
    }
}

#[tokio::test]
async fn a_stopped_agent_times_out_and_the_next_call_resyncs() {
    let call_timeout = Duration::from_millis(500);
    let limits = Limits::default().with_call_timeout(call_timeout);
    let mut agent = start_agent(&[], limits).await;
    let (ga, child) = (&mut agent.ga, &agent.child);
    ga.ping().await.unwrap();

    assert_times_out_while_stopped(child, call_timeout, ga.info()).await;
    assert!(ga.needs_sync());

    // The late guest-info reply is still in the stream; the resync must skip it, and the
    // next reply must be the ping's own (`{}`), not the stale guest-info.
    let value = ga.execute_value("guest-ping", None).await.unwrap();
    assert_eq!(value, serde_json::json!({}));
    assert!(!ga.needs_sync());
    ga.get_disks().await.unwrap();
}

#[tokio::test]
async fn a_new_client_recovers_from_a_half_written_request() {
    let AgentUnderTest {
        mut ga,
        sock,
        child: _agent,
        dir: _dir,
    } = start_agent(&[], limits()).await;
    ga.ping().await.unwrap();
    drop(ga);
    // A client that dies mid-request and leaves garbage behind.
    let mut raw = tokio::net::UnixStream::connect(&sock).await.unwrap();
    raw.write_all(b"{\"execute\": \"guest-get-disks\", \"argum")
        .await
        .unwrap();
    drop(raw);
    let mut ga = GuestAgent::connect(&sock, limits()).await.unwrap();
    ga.ping().await.unwrap();
    ga.info().await.unwrap();
}

#[tokio::test]
async fn a_blocked_command_is_a_command_error() {
    let blocked = ["-b", "guest-exec,guest-file-open"];
    let mut agent = start_agent(&blocked, limits()).await;
    let ga = &mut agent.ga;

    let info = ga.info().await.unwrap();
    assert!(!info.supports("guest-exec"), "{info:?}");
    let err = ga.exec("/bin/echo", &["hi"], true).await.unwrap_err();
    assert!(err.is_command(), "{err}");
    let err = ga.file_read_all("/etc/hostname", 100).await.unwrap_err();
    assert!(err.is_command(), "{err}");
    ga.ping().await.unwrap();
}
