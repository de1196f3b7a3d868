//! What every handler shares: the application ([`eventfold_app::runtime::App`]) and how requests
//! authenticate ([`AuthConfig`]).

use std::sync::Arc;

use eventfold_app::runtime::App;

use crate::auth::AuthConfig;

/// The handlers' state: the app, cheap to clone (one reference count: axum clones the state for
/// every extractor of every request, and the app is a few dozen shared handles).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// What [`AppState`] shares.
#[derive(Clone)]
pub struct Shared {
    pub(crate) app: App,
    pub(crate) auth: AuthConfig,
    /// Cancelled when the server shuts down: long-lived responses (server-sent events) end then,
    /// so a graceful shutdown does not wait for them.
    pub(crate) shutdown: tokio_util::sync::CancellationToken,
}

impl AppState {
    /// State over `app` (built by [`eventfold_app::runtime::Runtime::start`], or by hand for a
    /// router without background workers, as tests do), authenticating as [`AuthConfig`]'s
    /// default does (open while the store holds no key).
    pub fn new(app: App) -> Self {
        Self(Arc::new(Shared {
            app,
            auth: AuthConfig::default(),
            shutdown: tokio_util::sync::CancellationToken::new(),
        }))
    }

    /// The same state, authenticating as `auth` says.
    #[must_use]
    pub fn with_auth(mut self, auth: AuthConfig) -> Self {
        Arc::make_mut(&mut self.0).auth = auth;
        self
    }

    /// The same state, ending long-lived responses when `shutdown` is cancelled.
    #[must_use]
    pub fn with_shutdown(mut self, shutdown: tokio_util::sync::CancellationToken) -> Self {
        Arc::make_mut(&mut self.0).shutdown = shutdown;
        self
    }

    /// The app.
    pub fn app(&self) -> &App {
        &self.app
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}
