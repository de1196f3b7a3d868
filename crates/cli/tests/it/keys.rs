//! The binary's credentials: `keys create --json` prints `{"id", "key"}`; a server over a store
//! with a key requires it; `keys list` never shows a key; `keys revoke` is picked up by the
//! running server; a server with no credentials refuses to listen beyond loopback unless
//! `--insecure`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn eventfold(db: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_eventfold"))
        .args(["--store", &format!("sqlite://{}", db.display())])
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run eventfold")
}

fn json_of(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_created_used_listed_and_revoked_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keys.db");
    let created = json_of(&eventfold(
        &db,
        &[
            "--json",
            "keys",
            "create",
            "--tenant",
            "tenant-a",
            "--actor",
            "admin:support-001",
            "--role",
            "support",
            "--role",
            "auditor",
        ],
    ));
    let (id, key) = (
        created["id"].as_str().unwrap().to_owned(),
        created["key"].as_str().unwrap().to_owned(),
    );
    assert!(key.starts_with("efk_") && key.len() >= 4 + 32, "{key}");
    let bad = eventfold(
        &db,
        &["keys", "create", "--actor", "admin:x", "--role", "root"],
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("role \"root\" is not one of"));

    let listed = json_of(&eventfold(&db, &["--json", "keys", "list"]));
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["tenant"], "tenant-a");
    assert_eq!(
        listed[0]["roles"],
        serde_json::json!(["support", "auditor"])
    );
    assert!(!listed.to_string().contains(&key), "a listing shows no key");

    let (mut server, base) = crate::start_serve(&db, &[], Stdio::null()).await;
    let client = reqwest::Client::new();
    let status = |key: Option<String>| {
        let mut request = client.get(format!("{base}/orders/o-1"));
        if let Some(k) = key {
            request = request.bearer_auth(k);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(None).await, 401, "a store with a key requires one");
    assert_eq!(
        status(Some(key.clone())).await,
        404,
        "known key, no such order"
    );

    let revoked = eventfold(&db, &["keys", "revoke", &id, "--tenant", "tenant-a"]);
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    let at = Instant::now();
    while status(Some(key.clone())).await != 401 {
        assert!(
            at.elapsed() < Duration::from_secs(1),
            "still let in after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let listed = json_of(&eventfold(&db, &["--json", "keys", "list"]));
    assert!(listed[0]["revoked_at"].is_string(), "{listed}");
    server.kill().unwrap();
    server.wait().unwrap();
}

#[test]
fn an_open_server_refuses_to_listen_beyond_loopback_unless_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("open.db");
    let port = crate::free_port();
    let out = Command::new(env!("CARGO_BIN_EXE_eventfold"))
        .args(["serve", "--listen", &format!("0.0.0.0:{port}")])
        .args(["--store", &format!("sqlite://{}", db.display())])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("without credentials"), "{stderr}");
    assert!(stderr.contains("--insecure"), "{stderr}");

    let mut child = Command::new(env!("CARGO_BIN_EXE_eventfold"))
        .args([
            "serve",
            "--insecure",
            "--listen",
            &format!("0.0.0.0:{port}"),
        ])
        .args(["--store", &format!("sqlite://{}", db.display())])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The listener is bound before the runtime starts and the warning is logged: wait for the
    // warning itself, not for the port.
    let stderr = child.stderr.take().unwrap();
    let (lines, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let mut logged = String::new();
    while !logged.contains("serving open") {
        let left = Duration::from_secs(30).saturating_sub(started.elapsed());
        match seen.recv_timeout(left) {
            Ok(line) => logged.push_str(&line),
            Err(_) => break,
        }
    }
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(logged.contains("serving open"), "{logged}");
}
