//! Helpers for tests that need a PostgreSQL database: one fresh database per test, dropped when
//! the test ends.

use sqlx::Connection;

/// The admin URL of the test server: `EVENTFOLD_TEST_PG`, default
/// `postgres://postgres@127.0.0.1:5432/postgres`. `scripts/test` sets it (starting a throwaway
/// cluster when no server runs).
pub fn admin_url() -> String {
    std::env::var("EVENTFOLD_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// An empty database that is dropped (`WITH (FORCE)`) when this value is dropped.
pub struct FreshDb {
    /// The database's URL.
    pub url: String,
    name: String,
}

impl Drop for FreshDb {
    fn drop(&mut self) {
        let (admin, name) = (admin_url(), self.name.clone());
        // Drop may run inside a runtime that is shutting down: use a small runtime on a thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&admin).await.ok()?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await
                    .ok()
            })
        })
        .join();
    }
}

/// Creates an empty database on the test server.
///
/// # Panics
/// When the server cannot be reached: the message says how to start one.
pub async fn fresh_db() -> FreshDb {
    let admin = admin_url();
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|e| {
        panic!(
            "PostgreSQL is not reachable at {admin} ({e}). Run the tests through scripts/test, which starts a \
             throwaway cluster when none is running, or set EVENTFOLD_TEST_PG to a server's admin URL."
        )
    });
    let name = format!("eventfold_test_{}", uuid::Uuid::now_v7().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let base = admin
        .rsplit_once('/')
        .map_or(admin.as_str(), |(b, _)| b)
        .to_owned();
    FreshDb {
        url: format!("{base}/{name}"),
        name,
    }
}

/// A PostgreSQL cluster of a test's own (initdb into a temporary directory, `pg_ctl` on a free
/// loopback port), for tests that stop and start the server. Stopped and removed on drop.
pub struct PrivateCluster {
    dir: std::path::PathBuf,
    port: u16,
    bin: std::path::PathBuf,
    /// Run the server tools as the `postgres` user (initdb refuses to run as root).
    as_postgres: bool,
}

impl PrivateCluster {
    /// Creates and starts the cluster.
    ///
    /// # Panics
    /// When the PostgreSQL server binaries cannot be found or the cluster does not start; the
    /// message says what failed (`scripts/test` installs PostgreSQL when it is missing).
    pub fn start() -> Self {
        let bin = pg_bin_dir().unwrap_or_else(|| {
            panic!(
                "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in /usr/lib/postgresql/*/bin; \
                 scripts/test installs them"
            )
        });
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir =
            std::env::temp_dir().join(format!("eventfold-pg-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("cluster directory");
        // Root? (`id -u` keeps this crate free of libc.)
        let as_postgres = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        let cluster = Self {
            dir,
            port,
            bin,
            as_postgres,
        };
        if as_postgres {
            cluster.run(
                "chown",
                &["-R", "postgres", cluster.dir.to_str().expect("utf-8 path")],
                false,
            );
        }
        let data = cluster.data();
        cluster.run(
            "initdb",
            &["-D", &data, "-U", "postgres", "-A", "trust", "--no-sync"],
            true,
        );
        cluster.start_server();
        cluster
    }

    /// The admin URL (database `postgres`).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`: no shutdown checkpoint, as in a
    /// crash; committed transactions are recovered from the WAL on the next start).
    pub fn stop_immediately(&self) {
        let data = self.data();
        self.run(
            "pg_ctl",
            &["-D", &data, "-m", "immediate", "-w", "stop"],
            true,
        );
    }

    /// Starts the server (again), waiting until it accepts connections.
    pub fn start_server(&self) {
        let data = self.data();
        let log = self.dir.join("server.log");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                &data,
                "-l",
                log.to_str().expect("utf-8 path"),
                "-w",
                "-o",
                &options,
                "start",
            ],
            true,
        );
    }

    fn data(&self) -> String {
        self.dir
            .join("data")
            .to_str()
            .expect("utf-8 path")
            .to_owned()
    }

    /// A server tool (`initdb`, `pg_ctl`) from the cluster's bin directory, run as `postgres`
    /// when we are root.
    fn server_command(&self, tool: &str) -> std::process::Command {
        let program = self.bin.join(tool);
        if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            std::process::Command::new(program)
        }
    }

    fn run(&self, tool: &str, args: &[&str], server_tool: bool) {
        let program = if server_tool {
            self.bin.join(tool)
        } else {
            std::path::PathBuf::from(tool)
        };
        let mut command = if server_tool {
            self.server_command(tool)
        } else {
            std::process::Command::new(&program)
        };
        let out = command.args(args).output().unwrap_or_else(|e| {
            panic!("cannot run {}: {e}", program.display());
        });
        assert!(
            out.status.success(),
            "{} {args:?} failed: {}{}",
            program.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self
            .server_command("pg_ctl")
            .args(["-D", &data, "-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The directory holding `initdb` and `pg_ctl`: from PATH, else the newest
/// `/usr/lib/postgresql/*/bin`.
fn pg_bin_dir() -> Option<std::path::PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                return Some(dir);
            }
        }
    }
    let mut versions: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}
