//! Test support for eventfold's own tests and its users': Given / When / Then for aggregates, and
//! [`event`], a new event for a store test.
//!
//! ```
//! # use eventfold_core::{Aggregate, testkit::AggregateTest};
//! # #[derive(Default, Clone)] struct Counter(u32);
//! # #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)] enum Ev { Added { n: u32 } }
//! # #[derive(Debug, thiserror::Error)] #[error("too big")] struct TooBig;
//! # impl Aggregate for Counter {
//! #     type Command = u32; type Event = Ev; type Error = TooBig; const CATEGORY: &'static str = "counter";
//! #     fn handle(&self, n: u32) -> Result<Vec<Ev>, TooBig> { if self.0 + n > 10 { Err(TooBig) } else { Ok(vec![Ev::Added { n }]) } }
//! #     fn apply(self, e: &Ev) -> Self { match e { Ev::Added { n } => Counter(self.0 + n) } }
//! # }
//! AggregateTest::<Counter>::given(vec![Ev::Added { n: 4 }])
//!     .when(3)
//!     .then_expect_events(vec![Ev::Added { n: 3 }]);
//! AggregateTest::<Counter>::given(vec![Ev::Added { n: 9 }])
//!     .when(3)
//!     .then_expect_error(|e| matches!(e, TooBig));
//! ```

use std::fmt::Debug;

use crate::aggregate::Aggregate;
use crate::envelope::{Actor, EventMetadata, NewEvent};

/// A new event for a store test or benchmark: `event_type` by `actor` with `payload` (JSON
/// text), a fresh UUIDv7 id, schema version 1, event time now (UTC), no causation or correlation,
/// the default tenant. Tests set other fields on the result.
pub fn event(event_type: &str, actor: Actor, payload: impl Into<String>) -> NewEvent {
    NewEvent {
        event_id: uuid::Uuid::now_v7(),
        event_type: event_type.to_owned(),
        schema_version: 1,
        event_time: chrono::Utc::now(),
        metadata: EventMetadata::by(actor),
        payload: payload.into(),
    }
}

/// A test that folds `given` events, handles one command, and checks the outcome.
pub struct AggregateTest<A: Aggregate> {
    state: A,
}

/// The outcome of [`AggregateTest::when`], to check with a `then_*` method.
pub struct Outcome<A: Aggregate> {
    state: A,
    result: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> AggregateTest<A> {
    /// Starts from the state these events produce.
    pub fn given(events: Vec<A::Event>) -> Self {
        let state = events.iter().fold(A::default(), |s, e| s.apply(e));
        Self { state }
    }

    /// Starts from the empty state (no events).
    pub fn given_no_previous_events() -> Self {
        Self::given(Vec::new())
    }

    /// Handles one command.
    pub fn when(self, command: A::Command) -> Outcome<A> {
        let result = self.state.handle(command);
        Outcome {
            state: self.state,
            result,
        }
    }
}

impl<A: Aggregate> Outcome<A>
where
    A::Event: PartialEq + Debug,
{
    /// Asserts the command produced exactly these events; returns the state after applying them.
    ///
    /// # Panics
    /// When the command was refused or produced other events.
    pub fn then_expect_events(self, expected: Vec<A::Event>) -> A {
        match self.result {
            Ok(events) => {
                assert_eq!(events, expected, "events differ");
                events.iter().fold(self.state, |s, e| s.apply(e))
            }
            Err(e) => panic!("expected events {expected:?}, command was refused: {e}"),
        }
    }

    /// Asserts the command was refused with an error that `check` accepts.
    ///
    /// # Panics
    /// When the command produced events or `check` returns false.
    pub fn then_expect_error(self, check: impl FnOnce(&A::Error) -> bool) {
        match self.result {
            Ok(events) => panic!("expected a refusal, got events {events:?}"),
            Err(e) => assert!(check(&e), "unexpected refusal: {e}"),
        }
    }

    /// Asserts the command was refused with exactly this message (its `Display`).
    ///
    /// # Panics
    /// When the command produced events or the message differs.
    pub fn then_expect_error_message(self, message: &str) {
        match self.result {
            Ok(events) => panic!("expected a refusal, got events {events:?}"),
            Err(e) => assert_eq!(e.to_string(), message),
        }
    }
}
