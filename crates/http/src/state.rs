//! What every handler shares: the application ([`eventfold_app::runtime::App`]).

use eventfold_app::runtime::App;

/// The handlers' state: the app, cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub(crate) app: App,
}

impl AppState {
    /// State over `app` (built by [`eventfold_app::runtime::Runtime::start`], or by hand for a
    /// router without background workers, as tests do).
    pub fn new(app: App) -> Self {
        Self { app }
    }

    /// The app.
    pub fn app(&self) -> &App {
        &self.app
    }
}
