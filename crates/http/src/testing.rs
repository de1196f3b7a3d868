//! Test support for crates that drive eventfold over HTTP (behind the `testing` feature): an app
//! on a fresh store (a temp SQLite file or a fresh PostgreSQL database) driven in process with
//! `tower::ServiceExt::oneshot`, and helpers for error replies and the repository's CDNOW file
//! (the test Kafka broker is `eventfold_kafka::testing::broker`).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use eventfold_app::backend::Backend;
use eventfold_app::runtime::App;
use eventfold_core::ProjectionRunner;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use crate::{router, AppState};
use eventfold_domain::identity::Role;

/// An app on its own temp SQLite store.
pub struct TestApp {
    /// The router over the store (no background workers: call [`TestApp::project`]).
    pub router: axum::Router,
    /// The store.
    pub backend: Backend,
    /// The projection runner the router reports on.
    pub runner: Arc<ProjectionRunner>,
    /// The app behind the router (its key registry is the router's).
    pub app: App,
    _guard: Box<dyn std::any::Any + Send + Sync>,
}

/// A response: status, JSON body (or `Null`), headers.
pub struct Reply {
    /// The status.
    pub status: StatusCode,
    /// The body as JSON (a JSON string when it is not JSON, `Null` when empty).
    pub body: Value,
    /// The headers.
    pub headers: HeaderMap,
}

impl TestApp {
    /// An app on a fresh SQLite file.
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("eventfold.db").display());
        Self::open(&url, Box::new(dir)).await
    }

    /// An app on a fresh PostgreSQL database.
    pub async fn postgres() -> Self {
        let db = eventfold_postgres::testing::fresh_db().await;
        let url = db.url.clone();
        Self::open(&url, Box::new(db)).await
    }

    /// An app on the store at `url`; `guard` lives as long as the app (a temp dir, a database).
    pub async fn open(url: &str, guard: Box<dyn std::any::Any + Send + Sync>) -> Self {
        let backend = Backend::open(url).await.expect("open store");
        Self::over(backend, guard)
    }

    /// An app on a fresh NATS JetStream store (a stream of its own on the test server,
    /// `EVENTFOLD_TEST_NATS`) with its read models in a fresh PostgreSQL database: seed 004's
    /// layout.
    pub async fn nats() -> Self {
        let db = eventfold_postgres::testing::fresh_db().await;
        let (url, stream) = eventfold_nats::testing::fresh_url();
        let options = eventfold_app::backend::OpenOptions {
            read_models: Some(db.url.clone()),
            ..Default::default()
        };
        let backend = Backend::open_with(&url, &options)
            .await
            .expect("open the NATS store");
        Self::over(backend, Box::new((stream, db)))
    }

    /// An app over an open `backend`, keeping `guard` alive as long as it.
    pub fn over(backend: Backend, guard: Box<dyn std::any::Any + Send + Sync>) -> Self {
        let runner = Arc::new(backend.projection_runner());
        let app = App::new(&backend, runner.clone(), None);
        let router = router(AppState::new(app.clone()));
        Self {
            router,
            backend,
            runner,
            app,
            _guard: guard,
        }
    }

    /// The same app, its router authenticating as `auth` says.
    #[must_use]
    pub fn with_auth(mut self, auth: crate::AuthConfig) -> Self {
        self.router = router(AppState::new(self.app.clone()).with_auth(auth));
        self
    }

    /// A new API key of `tenant` acting as `actor` with `roles`, usable at once (the key
    /// projection is caught up and the router's registry reloaded). From the first key on, the
    /// router requires credentials.
    pub async fn key(&self, tenant: &str, actor: &str, roles: &[Role]) -> String {
        let created = eventfold_app::identity::create_key(
            &self.app.service,
            tenant,
            eventfold_core::Actor::parse(actor).expect("actor"),
            roles.to_vec(),
            eventfold_core::Actor::parse("admin:test").expect("actor"),
        )
        .await
        .expect("key created");
        self.project().await;
        self.app
            .keys
            .refresh(self.backend.read_models.as_ref())
            .await
            .expect("keys reloaded");
        created.key
    }

    /// `send` with `Authorization: Bearer {key}` and `headers`.
    pub async fn send_as(
        &self,
        key: &str,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Reply {
        let bearer = format!("Bearer {key}");
        let mut all = vec![("authorization", bearer.as_str())];
        all.extend_from_slice(headers);
        self.send(method, uri, &all, body).await
    }

    /// Sends a request; `body` is sent as JSON when given.
    pub async fn send(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let request = match body {
            Some(b) => request
                .header("content-type", "application/json")
                .body(Body::from(b.to_string())),
            None => request.body(Body::empty()),
        }
        .expect("request");
        self.raw(request).await
    }

    /// Sends a request as it is.
    pub async fn raw(&self, request: Request<Body>) -> Reply {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("router answers");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Reply {
            status,
            body,
            headers,
        }
    }

    /// A `GET` without headers.
    pub async fn get(&self, uri: &str) -> Reply {
        self.send(Method::GET, uri, &[], None).await
    }

    /// A `POST` of a JSON body without headers.
    pub async fn post(&self, uri: &str, body: Value) -> Reply {
        self.send(Method::POST, uri, &[], Some(body)).await
    }

    /// The global log's head position.
    pub async fn head(&self) -> u64 {
        self.backend.events.head_position().await.expect("head")
    }

    /// Runs the correction notifier (a worker of `serve`) until it has seen the whole log: a
    /// notice for every late sale or refund; then [`TestApp::project`] shows them. The notices
    /// appended now.
    pub async fn notice_corrections(&self) -> u64 {
        eventfold_app::reporting::CorrectionNotifier::new(
            self.backend.events.clone(),
            self.backend.read_models.clone(),
        )
        .catch_up()
        .await
        .expect("the correction notifier catches up")
    }

    /// Runs the windows worker (a worker of `serve`) with the default grace period until it has
    /// seen the whole log; the late-after-grace corrections noticed now.
    pub async fn fold_windows(&self) -> u64 {
        eventfold_app::sales_windows::WindowWorker::new(
            self.backend.events.clone(),
            self.backend.read_models.clone(),
            eventfold_app::sales_windows::DEFAULT_GRACE_SECS,
        )
        .expect("the default grace period is valid")
        .catch_up()
        .await
        .expect("the windows worker catches up")
    }

    /// Brings every projection up to date.
    pub async fn project(&self) {
        self.runner
            .catch_up(None, &|_, _| {})
            .await
            .expect("projections catch up");
    }
}

/// `eventfold serve` of a [`TestApp`]'s store over a real loopback socket, with the runtime's
/// workers (see [`TestApp::serve`]).
pub struct Served {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Cancels the server (see [`Served::stop`]).
    pub shutdown: tokio_util::sync::CancellationToken,
    /// The server's task: its result once it stopped.
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Served {
    /// Stops the server and its workers and checks that it ended without an error.
    ///
    /// # Panics
    /// When the server failed.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("server task").expect("server ran");
    }
}

impl TestApp {
    /// Serves this app's store over a real socket on a free loopback port, with the workers
    /// `config` asks for ([`crate::serve`]).
    pub async fn serve(&self, config: eventfold_app::runtime::Config) -> Served {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free loopback port");
        let base = format!("http://{}", listener.local_addr().expect("bound"));
        let shutdown = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(crate::serve(
            self.backend.clone(),
            listener,
            shutdown.clone(),
            config,
            crate::AuthConfig::default(),
        ));
        Served {
            base,
            shutdown,
            task,
        }
    }
}

/// Asserts an error reply: status, stable code, and that the message mentions `mentions`.
pub fn assert_error(reply: &Reply, status: StatusCode, code: &str, mentions: &str) {
    assert_eq!(reply.status, status, "body: {}", reply.body);
    assert_eq!(reply.body["code"], code, "body: {}", reply.body);
    let message = reply.body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(mentions),
        "message {message:?} should mention {mentions:?}"
    );
}

/// The repository's copy of the CDNOW purchase log.
pub fn cdnow_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/cdnow/CDNOW_master.txt")
}

/// Two tests of one body, each on a fresh store: `$sqlite` on a temp SQLite file and `$postgres`
/// on a fresh PostgreSQL database. `$body` is an async function taking the [`TestApp`] (by value,
/// or `&` before it to lend it). Arguments for `#[tokio::test(...)]` go first, in brackets.
///
/// ```ignore
/// eventfold_http::on_both_stores!([flavor = "multi_thread"] sqlite_x, postgres_x, check_x);
/// ```
#[macro_export]
macro_rules! on_both_stores {
    ([$($arg:tt)*] $sqlite:ident, $postgres:ident, &$body:path) => {
        #[tokio::test($($arg)*)]
        async fn $sqlite() {
            $body(&$crate::testing::TestApp::new().await).await;
        }

        #[tokio::test($($arg)*)]
        async fn $postgres() {
            $body(&$crate::testing::TestApp::postgres().await).await;
        }
    };
    ([$($arg:tt)*] $sqlite:ident, $postgres:ident, $body:path) => {
        #[tokio::test($($arg)*)]
        async fn $sqlite() {
            $body($crate::testing::TestApp::new().await).await;
        }

        #[tokio::test($($arg)*)]
        async fn $postgres() {
            $body($crate::testing::TestApp::postgres().await).await;
        }
    };
}
