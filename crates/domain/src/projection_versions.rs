//! Which version of a projection is served, and what was done to its versions (the aggregate
//! behind `projectionversions-{projection name}`): activations with actor and reason,
//! retirements, comparisons and rebuilds, every one an event.
//!
//! A projection's versions live side by side, each with its own documents and checkpoint (see
//! `eventfold_core::projection::storage_name`). One is **active**: queries read it. Switching
//! is refused while the candidate lags the log by more than a threshold or the last comparison
//! between it and the active version found differences, unless forced with a reason (a version
//! meant to differ, as an order-date view beside a payment-date one, is switched that way).
//! Rolling back is activating a version that was active before again: it stayed current, so it
//! is instant, and no comparison holds it up (the lag check still applies).
//! A retired version's data is deleted; it is never active again unless rebuilt.

use std::collections::BTreeSet;

use eventfold_core::{Actor, Aggregate};
use serde::{Deserialize, Serialize};

use crate::{DomainError, Refusal};

/// What a comparison of two versions found (`eventfold projections compare`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComparisonCounts {
    /// Keys whose documents are equal in both.
    pub equal: u64,
    /// Keys in both whose documents differ.
    pub differ: u64,
    /// Keys only in the first version.
    pub only_in_a: u64,
    /// Keys only in the second version.
    pub only_in_b: u64,
}

impl ComparisonCounts {
    /// Whether the versions answered the same everywhere.
    pub fn same(&self) -> bool {
        self.differ == 0 && self.only_in_a == 0 && self.only_in_b == 0
    }
}

/// What happened to a projection's versions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ProjectionVersionsEvent {
    /// Queries read `version` from now on.
    ProjectionVersionActivated {
        /// The version activated.
        version: u32,
        /// The version active before.
        previous: u32,
        /// Why, as the actor gave it.
        reason: String,
        /// Whether the lag or comparison checks were overridden.
        forced: bool,
        /// How far the version lagged the log when activated, in events.
        lag_events: u64,
        /// Who acts (recorded as the event's actor).
        actor: Actor,
    },
    /// `version`'s data was deleted; it is not applied any more.
    ProjectionVersionRetired {
        /// The version retired.
        version: u32,
        /// Why.
        reason: String,
        /// Who acts.
        actor: Actor,
    },
    /// Two versions were compared key by key at their checkpoints.
    ProjectionVersionsCompared {
        /// The first version.
        a: u32,
        /// The second version.
        b: u32,
        /// What the walk found.
        counts: ComparisonCounts,
        /// The first version's checkpoint during the walk.
        checkpoint_a: u64,
        /// The second version's checkpoint during the walk.
        checkpoint_b: u64,
        /// Who acts.
        actor: Actor,
    },
    /// `version` was rebuilt from position 0 beside itself and replaced in one step.
    ProjectionRebuilt {
        /// The version rebuilt.
        version: u32,
        /// The rebuilt copy's checkpoint when it took over.
        checkpoint: u64,
        /// Why.
        reason: String,
        /// Who acts.
        actor: Actor,
    },
}

/// What an operator asks of a projection's versions.
#[derive(Debug, Clone, PartialEq)]
pub enum ProjectionVersionsCommand {
    /// Serve `version` from now on.
    Activate {
        /// The version to serve.
        version: u32,
        /// Why (required).
        reason: String,
        /// Override the lag and comparison checks.
        force: bool,
        /// The version's lag behind the log now, in events.
        lag_events: u64,
        /// The most lag allowed without `force`, in events.
        max_lag_events: u64,
        /// Who acts.
        actor: Actor,
    },
    /// Delete `version`'s data (refused while it is active).
    Retire {
        /// The version to retire.
        version: u32,
        /// Why (required).
        reason: String,
        /// Who acts.
        actor: Actor,
    },
    /// Record a comparison.
    RecordComparison {
        /// The first version.
        a: u32,
        /// The second version.
        b: u32,
        /// What the walk found.
        counts: ComparisonCounts,
        /// The first version's checkpoint.
        checkpoint_a: u64,
        /// The second version's checkpoint.
        checkpoint_b: u64,
        /// Who acts.
        actor: Actor,
    },
    /// Record a rebuild beside itself.
    RecordRebuild {
        /// The version rebuilt.
        version: u32,
        /// Its checkpoint when it took over.
        checkpoint: u64,
        /// Why.
        reason: String,
        /// Who acts.
        actor: Actor,
    },
}

/// Why a change to a projection's versions was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProjectionVersionsError {
    /// No reason was given.
    #[error("a reason is required")]
    ReasonRequired,
    /// The version was retired.
    #[error("version {0} is retired; rebuild it first")]
    Retired(u32),
    /// Retiring the version queries read.
    #[error("version {0} is active; activate another version first")]
    Active(u32),
    /// The candidate lags the log by more than allowed.
    #[error("version {version} lags the log by {lag_events} events (at most {max_lag_events} without --force)")]
    Lagging {
        /// The candidate.
        version: u32,
        /// Its lag, in events.
        lag_events: u64,
        /// The threshold, in events.
        max_lag_events: u64,
    },
    /// The last comparison between the candidate and the active version found differences.
    #[error("the last comparison of versions {active} and {version} differed ({differ} documents differ, {only_in_active} only in {active}, {only_in_version} only in {version}); compare again or pass --force with a reason")]
    Differed {
        /// The active version.
        active: u32,
        /// The candidate.
        version: u32,
        /// Documents that differ.
        differ: u64,
        /// Keys only in the active version.
        only_in_active: u64,
        /// Keys only in the candidate.
        only_in_version: u64,
    },
}

impl DomainError for ProjectionVersionsError {
    fn code(&self) -> &'static str {
        match self {
            Self::ReasonRequired => "reason_required",
            Self::Retired(_) => "version_retired",
            Self::Active(_) => "version_active",
            Self::Lagging { .. } => "version_lagging",
            Self::Differed { .. } => "versions_differ",
        }
    }

    fn refusal(&self) -> Refusal {
        match self {
            Self::ReasonRequired => Refusal::Invalid,
            _ => Refusal::Conflict,
        }
    }
}

/// The last comparison recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastComparison {
    /// The first version.
    pub a: u32,
    /// The second version.
    pub b: u32,
    /// What it found.
    pub counts: ComparisonCounts,
}

/// A projection's versions (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProjectionVersions {
    /// The version queries read; `None` until one is activated (version 1 is).
    pub active: Option<u32>,
    /// Retired versions.
    pub retired: BTreeSet<u32>,
    /// Versions activated at some time (besides version 1, active by default): activating one
    /// of them again is a roll-back, which no comparison holds up.
    pub served: BTreeSet<u32>,
    /// The last comparison recorded, if any.
    pub last_comparison: Option<LastComparison>,
}

impl ProjectionVersions {
    /// The version queries read: the one activated last, else 1.
    pub fn active(&self) -> u32 {
        self.active.unwrap_or(1)
    }

    /// The last comparison of `a` and `b` (in either order), if the last one recorded was of
    /// them.
    pub fn comparison_of(&self, a: u32, b: u32) -> Option<ComparisonCounts> {
        self.last_comparison
            .filter(|c| (c.a, c.b) == (a, b) || (c.a, c.b) == (b, a))
            .map(|c| c.counts)
    }
}

fn reason(reason: &str) -> Result<String, ProjectionVersionsError> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(ProjectionVersionsError::ReasonRequired);
    }
    Ok(reason.to_owned())
}

impl Aggregate for ProjectionVersions {
    type Command = ProjectionVersionsCommand;
    type Event = ProjectionVersionsEvent;
    type Error = ProjectionVersionsError;
    const CATEGORY: &'static str = "projectionversions";

    fn handle(&self, command: Self::Command) -> Result<Vec<Self::Event>, Self::Error> {
        use ProjectionVersionsCommand as C;
        use ProjectionVersionsError as E;
        use ProjectionVersionsEvent as V;
        match command {
            C::Activate {
                version,
                reason: why,
                force,
                lag_events,
                max_lag_events,
                actor,
            } => {
                let why = reason(&why)?;
                if self.retired.contains(&version) {
                    return Err(E::Retired(version));
                }
                let active = self.active();
                if version == active {
                    return Ok(Vec::new());
                }
                let roll_back = version == 1 || self.served.contains(&version);
                if !force {
                    if lag_events > max_lag_events {
                        return Err(E::Lagging {
                            version,
                            lag_events,
                            max_lag_events,
                        });
                    }
                    if let Some(c) = self
                        .comparison_of(active, version)
                        .filter(|c| !roll_back && !c.same())
                    {
                        let last = self.last_comparison.expect("just found");
                        let (only_in_active, only_in_version) = if last.a == active {
                            (c.only_in_a, c.only_in_b)
                        } else {
                            (c.only_in_b, c.only_in_a)
                        };
                        return Err(E::Differed {
                            active,
                            version,
                            differ: c.differ,
                            only_in_active,
                            only_in_version,
                        });
                    }
                }
                Ok(vec![V::ProjectionVersionActivated {
                    version,
                    previous: active,
                    reason: why,
                    forced: force,
                    lag_events,
                    actor,
                }])
            }
            C::Retire {
                version,
                reason: why,
                actor,
            } => {
                let why = reason(&why)?;
                if version == self.active() {
                    return Err(E::Active(version));
                }
                if self.retired.contains(&version) {
                    return Ok(Vec::new());
                }
                Ok(vec![V::ProjectionVersionRetired {
                    version,
                    reason: why,
                    actor,
                }])
            }
            C::RecordComparison {
                a,
                b,
                counts,
                checkpoint_a,
                checkpoint_b,
                actor,
            } => Ok(vec![V::ProjectionVersionsCompared {
                a,
                b,
                counts,
                checkpoint_a,
                checkpoint_b,
                actor,
            }]),
            C::RecordRebuild {
                version,
                checkpoint,
                reason: why,
                actor,
            } => Ok(vec![V::ProjectionRebuilt {
                version,
                checkpoint,
                reason: reason(&why)?,
                actor,
            }]),
        }
    }

    fn apply(mut self, event: &Self::Event) -> Self {
        use ProjectionVersionsEvent as V;
        match event {
            V::ProjectionVersionActivated { version, .. } => {
                self.active = Some(*version);
                self.served.insert(*version);
            }
            V::ProjectionVersionRetired { version, .. } => {
                self.retired.insert(*version);
            }
            V::ProjectionVersionsCompared { a, b, counts, .. } => {
                self.last_comparison = Some(LastComparison {
                    a: *a,
                    b: *b,
                    counts: *counts,
                });
            }
            V::ProjectionRebuilt { version, .. } => {
                self.retired.remove(version);
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor() -> Actor {
        Actor::parse("user:ops").unwrap()
    }

    fn activate(version: u32, force: bool, lag: u64) -> ProjectionVersionsCommand {
        ProjectionVersionsCommand::Activate {
            version,
            reason: "order-date view".into(),
            force,
            lag_events: lag,
            max_lag_events: 100,
            actor: actor(),
        }
    }

    fn fold(events: &[ProjectionVersionsEvent]) -> ProjectionVersions {
        events
            .iter()
            .fold(ProjectionVersions::default(), |s, e| s.apply(e))
    }

    fn compared(differ: u64) -> ProjectionVersionsEvent {
        ProjectionVersionsEvent::ProjectionVersionsCompared {
            a: 1,
            b: 2,
            counts: ComparisonCounts {
                equal: 10,
                differ,
                only_in_a: 0,
                only_in_b: 0,
            },
            checkpoint_a: 5,
            checkpoint_b: 5,
            actor: actor(),
        }
    }

    #[test]
    fn activation_checks_lag_and_the_last_comparison_unless_forced() {
        let s = ProjectionVersions::default();
        assert_eq!(s.active(), 1);
        assert!(matches!(
            s.handle(activate(2, false, 101)),
            Err(ProjectionVersionsError::Lagging {
                lag_events: 101,
                ..
            })
        ));
        let differed = fold(&[compared(3)]);
        assert!(matches!(
            differed.handle(activate(2, false, 0)),
            Err(ProjectionVersionsError::Differed { differ: 3, .. })
        ));
        let events = differed.handle(activate(2, true, 101)).unwrap();
        let switched = fold(&[compared(3), events[0].clone()]);
        assert_eq!(switched.active(), 2);
        // Activating the active version changes nothing; rolling back to version 1 is not held
        // up by the comparison that differed, nor is going forward to 2 again afterwards.
        assert!(switched.handle(activate(2, false, 0)).unwrap().is_empty());
        let back = switched
            .clone()
            .apply(&switched.handle(activate(1, false, 0)).unwrap()[0]);
        assert_eq!(back.active(), 1);
        assert_eq!(back.handle(activate(2, false, 0)).unwrap().len(), 1);
        assert_eq!(
            fold(&[compared(0)])
                .handle(activate(2, false, 0))
                .unwrap()
                .len(),
            1
        );
        let no_reason = ProjectionVersionsCommand::Activate {
            version: 2,
            reason: " ".into(),
            force: true,
            lag_events: 0,
            max_lag_events: 0,
            actor: actor(),
        };
        assert_eq!(
            s.handle(no_reason),
            Err(ProjectionVersionsError::ReasonRequired)
        );
    }

    #[test]
    fn the_active_version_cannot_be_retired_and_a_retired_one_not_activated() {
        let s = ProjectionVersions::default();
        let retire = |version| ProjectionVersionsCommand::Retire {
            version,
            reason: "replaced".into(),
            actor: actor(),
        };
        assert_eq!(s.handle(retire(1)), Err(ProjectionVersionsError::Active(1)));
        let retired = fold(&s.handle(retire(2)).unwrap());
        assert_eq!(
            retired.handle(activate(2, true, 0)),
            Err(ProjectionVersionsError::Retired(2))
        );
        assert!(retired.handle(retire(2)).unwrap().is_empty());
        let rebuilt = retired.apply(&ProjectionVersionsEvent::ProjectionRebuilt {
            version: 2,
            checkpoint: 9,
            reason: "back".into(),
            actor: actor(),
        });
        assert_eq!(rebuilt.handle(activate(2, true, 0)).unwrap().len(), 1);
    }
}
