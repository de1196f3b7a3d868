//! Integration tests of the `eventfold` binary: the CLI's subcommands, outputs and exit codes,
//! durability under kill -9 and SIGTERM, the relay killed mid-publish, the flash-sale simulation,
//! the hash chain, archive, corrections and snapshots driven through both the binary and the
//! library, readiness and metrics of a server whose broker and Redis come and go, and the web
//! console in a real browser.

mod archive;
mod chain;
mod cli;
mod console;
mod corrections;
mod durability;
mod keys;
mod observability;
mod relay_kill;
mod shutdown;
mod simulate;
mod snapshots;

/// A child process killed when dropped, so a failing test leaves nothing running.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free loopback port for a server the test starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `eventfold serve` on the SQLite file `db` with `extra` arguments on a free port, its
/// stderr to `stderr`; returns the child and its base URL once `/healthz` answers.
pub async fn start_serve(
    db: &std::path::Path,
    extra: &[&str],
    stderr: std::process::Stdio,
) -> (std::process::Child, String) {
    let port = free_port();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_eventfold"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--store",
            &format!("sqlite://{}", db.display()),
        ])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start eventfold serve");
    let base = format!("http://127.0.0.1:{port}");
    let started = std::time::Instant::now();
    while reqwest::get(format!("{base}/healthz")).await.is_err() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "server did not start"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    (child, base)
}
