//! Read-model versions as the ways in see them: which version of each projection queries read,
//! shadow reads of a candidate, comparing two versions, activating, retiring and rebuilding one
//! (each recorded in `projectionversions-{name}`, see
//! [`eventfold_domain::projection_versions`]).
//!
//! Versions of a projection live side by side in the read-model store (version 1 under the
//! projection's name, version N under `{name}@vN`, each with its own checkpoint) and are all
//! applied from the live log until retired. Queries go through [`Views`], which reads the
//! active version; it learns of a switch made anywhere (another server, the CLI) by reading
//! the control streams again every [`REFRESH_EVERY`], so every server serves the new version
//! within about that long, without a restart.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use eventfold_core::projection::storage_name;
use eventfold_core::read_model::{is_bookkeeping_key, key_after};
use eventfold_core::{
    ProjectionRunner, ProjectionStatus, ReadModelStore, StoreError, RETIRED_CHECKPOINT,
};
use eventfold_domain::projection_versions::{
    ComparisonCounts, ProjectionVersions, ProjectionVersionsCommand,
};
use serde::Serialize;

use crate::service::{version_render, AsOf, CommandContext, Service, ServiceError};

/// How often [`Views::run`] reads the control streams again: the most a switch made elsewhere
/// takes to reach this process.
pub const REFRESH_EVERY: Duration = Duration::from_millis(250);

/// The most a candidate may lag the log, in events, to be activated without `force`.
pub const DEFAULT_MAX_LAG_EVENTS: u64 = 1_000;

/// How many differing keys a comparison or the shadow reads keep as examples.
pub const EXAMPLES: usize = 10;

/// A key whose documents differ between two versions (or that only one has).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Difference {
    /// Document key (scoped to its tenant).
    pub key: String,
    /// The first version's document (the active one's, for a shadow read), `null` when absent.
    #[schema(value_type = Object, nullable)]
    pub a: Option<serde_json::Value>,
    /// The second version's document (the candidate's), `null` when absent.
    #[schema(value_type = Object, nullable)]
    pub b: Option<serde_json::Value>,
}

/// What `eventfold projections compare` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// Projection name.
    pub projection: String,
    /// First version.
    pub a: u32,
    /// Second version.
    pub b: u32,
    /// Keys whose documents are equal.
    pub equal: u64,
    /// Keys in both whose documents differ.
    pub differ: u64,
    /// Keys only in `a`.
    pub only_in_a: u64,
    /// Keys only in `b`.
    pub only_in_b: u64,
    /// `a`'s checkpoint during the walk.
    pub checkpoint_a: u64,
    /// `b`'s checkpoint during the walk.
    pub checkpoint_b: u64,
    /// Whether neither checkpoint moved during the walk (else the counts may include changes
    /// made meanwhile; three walks were tried).
    pub consistent: bool,
    /// The first differing keys, with both documents.
    pub examples: Vec<Difference>,
}

impl Comparison {
    /// The counts.
    pub fn counts(&self) -> ComparisonCounts {
        ComparisonCounts {
            equal: self.equal,
            differ: self.differ,
            only_in_a: self.only_in_a,
            only_in_b: self.only_in_b,
        }
    }
}

/// One projection version as `GET /projections` and `projections status` list it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct VersionStatus {
    /// Projection name.
    pub name: String,
    /// Version.
    pub version: u32,
    /// Whether queries read this version.
    pub active: bool,
    /// Whether this server is rebuilding it beside itself now.
    pub rebuilding: bool,
    /// Last global position applied.
    pub checkpoint: u64,
    /// The log's head when measured.
    pub head: u64,
    /// `head - checkpoint`, in events.
    pub lag_events: u64,
    /// Age of the oldest event not yet applied, in seconds (0 when caught up).
    pub lag_seconds: f64,
    /// Time from the ingest of the last event of the last batch to its commit, in ms.
    pub last_lag_ms: Option<f64>,
    /// Events applied by this server's runner since it started.
    pub events_applied: u64,
    /// 95th percentile of the ingest-to-commit lag since the runner started, in ms.
    pub lag_p95_ms: Option<f64>,
    /// Shadow reads of this version (a candidate), when this server runs them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowReport>,
}

/// What the shadow reads of a candidate found.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct ShadowReport {
    /// Queries answered from the active version and again from this one.
    pub compared: u64,
    /// Of those, answers that differed.
    pub mismatches: u64,
    /// Queries sampled but not compared, because a commit moved either version meanwhile.
    pub skipped: u64,
    /// The latest differences (newest last), at most [`EXAMPLES`].
    pub latest: Vec<ShadowMismatch>,
}

/// One shadow read that differed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ShadowMismatch {
    /// When it was found (UTC).
    pub at: DateTime<Utc>,
    /// The checkpoint both versions were at.
    pub checkpoint: u64,
    /// The first key that differed.
    pub difference: Difference,
}

/// Shadow reads of one candidate version.
struct Shadow {
    projection: String,
    version: u32,
    /// Fraction of the active version's queries also answered from the candidate (0..=1).
    fraction: f64,
    sampled: AtomicU64,
    report: Mutex<ShadowReport>,
}

/// What a query read, to read again from both versions.
enum Query {
    Keys(Vec<String>),
    Range(String, String, usize),
}

/// Which version of each projection is read, and the operations on versions (see the module
/// docs). Cheap to clone.
#[derive(Clone)]
pub struct Views {
    service: Service,
    read_models: Arc<dyn ReadModelStore>,
    /// Every registered `(name, version)`.
    registered: Arc<Vec<(&'static str, u32)>>,
    /// The names with more than one version: the control streams [`Views::refresh`] reads.
    versioned: Arc<Vec<&'static str>>,
    /// Active version by name, for names with more than one version.
    active: Arc<RwLock<HashMap<String, u32>>>,
    shadow: Option<Arc<Shadow>>,
    /// Storage names being rebuilt in the background ([`Views::start_rebuild`]).
    rebuilding: Arc<Mutex<std::collections::HashSet<String>>>,
}

/// Why an operation on versions was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum VersionsError {
    /// No such projection or version is registered.
    #[error("{0}")]
    Unknown(String),
    /// The domain refused or the store failed.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// The read-model store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Rebuilding failed.
    #[error(transparent)]
    Runner(#[from] eventfold_core::RunnerError),
    /// The version is already being rebuilt.
    #[error("{0}")]
    Busy(String),
}

impl Views {
    /// Views over `runner`'s projections, reading through `service` (the control streams) and
    /// `read_models`. Version 1 of each is active until [`Views::refresh`] reads otherwise.
    pub fn new(
        service: Service,
        read_models: Arc<dyn ReadModelStore>,
        runner: &ProjectionRunner,
    ) -> Self {
        let registered = runner.versions();
        let mut versioned: Vec<&'static str> = registered
            .iter()
            .map(|(n, _)| *n)
            .filter(|n| registered.iter().filter(|(m, _)| m == n).count() > 1)
            .collect();
        versioned.sort_unstable();
        versioned.dedup();
        Self {
            service,
            read_models,
            versioned: Arc::new(versioned),
            registered: Arc::new(registered),
            active: Arc::default(),
            shadow: None,
            rebuilding: Arc::default(),
        }
    }

    /// Also answers `fraction` (0..=1) of the active version's queries of `projection` from
    /// `version`, comparing the two (see [`Views::shadow_report`]).
    ///
    /// # Errors
    /// The version is not registered, or the fraction is not within 0..=1.
    pub fn with_shadow(
        mut self,
        projection: &str,
        version: u32,
        fraction: f64,
    ) -> Result<Self, VersionsError> {
        self.check(projection, version)?;
        if !(0.0..=1.0).contains(&fraction) {
            return Err(VersionsError::Unknown(format!(
                "the shadow fraction must be within 0..1, got {fraction}"
            )));
        }
        self.shadow = Some(Arc::new(Shadow {
            projection: projection.to_owned(),
            version,
            fraction,
            sampled: AtomicU64::new(0),
            report: Mutex::default(),
        }));
        Ok(self)
    }

    /// The registered versions of `name`, ascending.
    pub fn versions_of(&self, name: &str) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .registered
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .collect();
        v.sort_unstable();
        v
    }

    /// `Ok` when `version` of `name` is registered.
    ///
    /// # Errors
    /// [`VersionsError::Unknown`] naming what is registered.
    pub fn check(&self, name: &str, version: u32) -> Result<(), VersionsError> {
        let versions = self.versions_of(name);
        if versions.is_empty() {
            let mut names: Vec<&str> = self.registered.iter().map(|(n, _)| *n).collect();
            names.dedup();
            return Err(VersionsError::Unknown(format!(
                "unknown projection {name:?}; known: {}",
                names.join(", ")
            )));
        }
        if !versions.contains(&version) {
            return Err(VersionsError::Unknown(format!(
                "projection {name} has no version {version}; it has {versions:?}"
            )));
        }
        Ok(())
    }

    /// The version of `name` queries read now.
    pub fn active(&self, name: &str) -> u32 {
        self.active
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .copied()
            .unwrap_or(1)
    }

    /// Where the active version of `name` keeps its documents.
    pub fn storage(&self, name: &str) -> String {
        storage_name(name, self.active(name))
    }

    /// The versions state of `name` from its control stream.
    ///
    /// # Errors
    /// Store failures.
    pub async fn load(&self, name: &str) -> Result<ProjectionVersions, StoreError> {
        Ok(self
            .service
            .load::<ProjectionVersions>(name, AsOf::Latest)
            .await?
            .map(|r| r.state)
            .unwrap_or_default())
    }

    /// Reads the control stream of every projection with more than one version again.
    ///
    /// # Errors
    /// Store failures (the versions known before stay).
    pub async fn refresh(&self) -> Result<(), StoreError> {
        for &name in self.versioned.iter() {
            let active = self.load(name).await?.active();
            let previous = self
                .active
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(name.to_owned(), active);
            if previous.is_some_and(|p| p != active) {
                tracing::info!(
                    projection = name,
                    version = active,
                    "serving another version"
                );
            }
        }
        Ok(())
    }

    /// Refreshes every [`REFRESH_EVERY`] until `stop` completes (failures are logged).
    pub async fn run(&self, stop: impl std::future::Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        loop {
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "reading the projection versions failed");
            }
            tokio::select! {
                () = tokio::time::sleep(REFRESH_EVERY) => {}
                () = &mut stop => return,
            }
        }
    }

    /// The active version's documents of `projection` under `keys` (see
    /// [`ReadModelStore::get_docs`]).
    ///
    /// # Errors
    /// Store failures.
    pub async fn get_docs(
        &self,
        projection: &str,
        keys: &[String],
    ) -> Result<Vec<(String, String)>, StoreError> {
        let docs = self
            .read_models
            .get_docs(&self.storage(projection), keys)
            .await?;
        self.maybe_shadow(projection, || Query::Keys(keys.to_vec()));
        Ok(docs)
    }

    /// The active version's documents of `projection` under `keys` and then the version of
    /// stream `stream_id`, for a read-your-writes check: in one read where the event store
    /// keeps the read models beside the events (see
    /// [`eventfold_core::EventStore::docs_and_stream_version`]), else one read of each, at once.
    ///
    /// # Errors
    /// Store failures.
    pub async fn get_docs_and_stream_version(
        &self,
        projection: &str,
        keys: &[String],
        stream_id: &str,
    ) -> Result<(Vec<(String, String)>, u64), StoreError> {
        let store = self.service.store();
        let storage = self.storage(projection);
        let read = match store
            .docs_and_stream_version(&storage, keys, stream_id)
            .await?
        {
            Some(read) => read,
            None => tokio::try_join!(
                self.read_models.get_docs(&storage, keys),
                store.stream_version(stream_id)
            )?,
        };
        self.maybe_shadow(projection, || Query::Keys(keys.to_vec()));
        Ok(read)
    }

    /// The active version's documents of `projection` in a key range (see
    /// [`ReadModelStore::range_docs`]).
    ///
    /// # Errors
    /// Store failures.
    pub async fn range_docs(
        &self,
        projection: &str,
        from_key: &str,
        to_key: &str,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let docs = self
            .read_models
            .range_docs(&self.storage(projection), from_key, to_key, limit)
            .await?;
        self.maybe_shadow(projection, || {
            Query::Range(from_key.to_owned(), to_key.to_owned(), limit)
        });
        Ok(docs)
    }

    /// Samples this query for a shadow read, in a task of its own (the caller's answer does
    /// not wait for it).
    fn maybe_shadow(&self, projection: &str, query: impl FnOnce() -> Query) {
        let Some(shadow) = self.shadow.clone() else {
            return;
        };
        let active = self.active(projection);
        if shadow.projection != projection || shadow.version == active {
            return;
        }
        // Every 1/fraction-th query, evenly: n * fraction crosses a whole number.
        let n = shadow.sampled.fetch_add(1, Ordering::Relaxed) as f64;
        if ((n + 1.0) * shadow.fraction).floor() <= (n * shadow.fraction).floor() {
            return;
        }
        let (query, read_models) = (query(), self.read_models.clone());
        tokio::spawn(async move {
            if let Err(e) = shadow_read(&shadow, active, query, read_models.as_ref()).await {
                tracing::warn!(error = %e, projection = %shadow.projection, "shadow read failed");
            }
        });
    }

    /// What the shadow reads found so far, when this process runs them.
    pub fn shadow_report(&self) -> Option<(String, u32, ShadowReport)> {
        self.shadow.as_ref().map(|s| {
            (
                s.projection.clone(),
                s.version,
                s.report
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone(),
            )
        })
    }

    /// Every version of every projection of `runner` (retired ones left out), with which is
    /// active and the shadow reads' findings.
    ///
    /// # Errors
    /// Store failures.
    pub async fn status(
        &self,
        runner: &ProjectionRunner,
    ) -> Result<Vec<VersionStatus>, eventfold_core::RunnerError> {
        let shadow = self.shadow_report();
        Ok(runner
            .status()
            .await?
            .into_iter()
            .map(|s: ProjectionStatus| VersionStatus {
                active: self.active(&s.name) == s.version,
                rebuilding: self
                    .rebuilding
                    .lock()
                    .is_ok_and(|r| r.contains(&storage_name(&s.name, s.version))),
                shadow: shadow
                    .as_ref()
                    .filter(|(p, v, _)| *p == s.name && *v == s.version)
                    .map(|(_, _, r)| r.clone()),
                name: s.name,
                version: s.version,
                checkpoint: s.checkpoint,
                head: s.head,
                lag_events: s.lag_events,
                lag_seconds: s.lag_seconds,
                last_lag_ms: s.last_lag_ms,
                events_applied: s.events_applied,
                lag_p95_ms: s.lag_p95_ms,
            })
            .collect())
    }

    /// Walks versions `a` and `b` of `projection` key by key (bookkeeping keys left out, see
    /// [`is_bookkeeping_key`]) and counts equal, differing and one-sided keys, keeping the
    /// first `examples` differences. Documents compare as JSON values (field order does not
    /// matter). A walk during which either checkpoint moved is tried again, three times in all.
    ///
    /// # Errors
    /// An unregistered version, store failures.
    pub async fn compare(
        &self,
        projection: &str,
        a: u32,
        b: u32,
        examples: usize,
    ) -> Result<Comparison, VersionsError> {
        self.check(projection, a)?;
        self.check(projection, b)?;
        let (sa, sb) = (storage_name(projection, a), storage_name(projection, b));
        let mut tries = 0;
        loop {
            tries += 1;
            let before = (
                self.read_models.projection_checkpoint(&sa).await?,
                self.read_models.projection_checkpoint(&sb).await?,
            );
            let mut c = Comparison {
                projection: projection.to_owned(),
                a,
                b,
                equal: 0,
                differ: 0,
                only_in_a: 0,
                only_in_b: 0,
                checkpoint_a: before.0,
                checkpoint_b: before.1,
                consistent: false,
                examples: Vec::new(),
            };
            let mut left = Pages::new(self.read_models.as_ref(), &sa);
            let mut right = Pages::new(self.read_models.as_ref(), &sb);
            loop {
                let (l, r) = (left.peek().await?, right.peek().await?);
                let (key, da, db) = match (l, r) {
                    (None, None) => break,
                    (Some(ka), Some(kb)) if ka == kb => {
                        let (k, da) = left.take();
                        (k, Some(da), Some(right.take().1))
                    }
                    (Some(ka), Some(kb)) if ka < kb => {
                        let (k, da) = left.take();
                        (k, Some(da), None)
                    }
                    (Some(_), None) => {
                        let (k, da) = left.take();
                        (k, Some(da), None)
                    }
                    _ => {
                        let (k, db) = right.take();
                        (k, None, Some(db))
                    }
                };
                let (va, vb) = (json(&da)?, json(&db)?);
                match (&va, &vb) {
                    (Some(x), Some(y)) if x == y => c.equal += 1,
                    (Some(_), Some(_)) => c.differ += 1,
                    (Some(_), None) => c.only_in_a += 1,
                    _ => c.only_in_b += 1,
                }
                if va != vb && c.examples.len() < examples {
                    c.examples.push(Difference { key, a: va, b: vb });
                }
            }
            let after = (
                self.read_models.projection_checkpoint(&sa).await?,
                self.read_models.projection_checkpoint(&sb).await?,
            );
            c.consistent = before == after;
            if c.consistent || tries == 3 {
                return Ok(c);
            }
        }
    }

    /// Compares `a` and `b` ([`Views::compare`]) and records the result in the projection's
    /// control stream: activation checks the last one.
    ///
    /// # Errors
    /// As [`Views::compare`]; the append failing.
    pub async fn compare_and_record(
        &self,
        projection: &str,
        a: u32,
        b: u32,
        examples: usize,
        ctx: &CommandContext,
    ) -> Result<Comparison, VersionsError> {
        let c = self.compare(projection, a, b, examples).await?;
        self.command(
            projection,
            ProjectionVersionsCommand::RecordComparison {
                a,
                b,
                counts: c.counts(),
                checkpoint_a: c.checkpoint_a,
                checkpoint_b: c.checkpoint_b,
                actor: ctx.actor.clone(),
            },
            ctx,
        )
        .await?;
        Ok(c)
    }

    /// Makes `version` the one queries of `projection` read (an event with `ctx`'s actor and
    /// `reason`); every server reads it within [`REFRESH_EVERY`]. Refused (unless `force`)
    /// while the version lags the log by more than `max_lag_events` or the last comparison of
    /// it with the active version differed. Returns the version active before.
    ///
    /// # Errors
    /// An unregistered or retired version, a refusal (see
    /// [`eventfold_domain::projection_versions::ProjectionVersionsError`]), store failures.
    pub async fn activate(
        &self,
        projection: &str,
        version: u32,
        reason: &str,
        force: bool,
        max_lag_events: u64,
        ctx: &CommandContext,
    ) -> Result<u32, VersionsError> {
        self.check(projection, version)?;
        let checkpoint = self
            .read_models
            .projection_checkpoint(&storage_name(projection, version))
            .await?;
        let head = self.service.store().head_position().await?;
        let lag_events = if checkpoint >= RETIRED_CHECKPOINT {
            head
        } else {
            head.saturating_sub(checkpoint)
        };
        let previous = self.load(projection).await?.active();
        self.command(
            projection,
            ProjectionVersionsCommand::Activate {
                version,
                reason: reason.to_owned(),
                force,
                lag_events,
                max_lag_events,
                actor: ctx.actor.clone(),
            },
            ctx,
        )
        .await?;
        self.active
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(projection.to_owned(), version);
        Ok(previous)
    }

    /// Retires `version` of `projection` (refused while active): an event, then its documents
    /// are deleted and its checkpoint left at [`RETIRED_CHECKPOINT`], so no runner applies it
    /// again.
    ///
    /// # Errors
    /// An unregistered version, the active one, store failures.
    pub async fn retire(
        &self,
        projection: &str,
        version: u32,
        reason: &str,
        ctx: &CommandContext,
    ) -> Result<(), VersionsError> {
        self.check(projection, version)?;
        self.command(
            projection,
            ProjectionVersionsCommand::Retire {
                version,
                reason: reason.to_owned(),
                actor: ctx.actor.clone(),
            },
            ctx,
        )
        .await?;
        self.read_models
            .maintain_projection(eventfold_core::ProjectionMaintenance::Retire(storage_name(
                projection, version,
            )))
            .await?;
        Ok(())
    }

    /// Rebuilds each `(projection, version)` of `targets` beside itself and switches to the
    /// copy when it has caught up ([`ProjectionRunner::rebuild_beside`]): queries never see an
    /// empty view. A retired version is built again. Each rebuild is recorded with `ctx`'s
    /// actor and `reason` once all are done (so no copy reads another's record); returns the
    /// position the last copy reached.
    ///
    /// # Errors
    /// An unregistered version, archived events in the log, store failures; rebuilds done
    /// before a failure stand, unrecorded.
    pub async fn rebuild(
        &self,
        runner: &ProjectionRunner,
        targets: &[(String, u32)],
        reason: &str,
        ctx: &CommandContext,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<u64, VersionsError> {
        for (projection, version) in targets {
            self.check(projection, *version)?;
        }
        let mut reached = Vec::with_capacity(targets.len());
        for (projection, version) in targets {
            let storage = storage_name(projection, *version);
            reached.push(runner.rebuild_beside(&storage, progress).await?);
        }
        for ((projection, version), checkpoint) in targets.iter().zip(&reached) {
            self.command(
                projection,
                ProjectionVersionsCommand::RecordRebuild {
                    version: *version,
                    checkpoint: *checkpoint,
                    reason: reason.to_owned(),
                    actor: ctx.actor.clone(),
                },
                ctx,
            )
            .await?;
        }
        Ok(reached.last().copied().unwrap_or(0))
    }

    /// Starts rebuilding `version` of `projection` beside itself ([`Views::rebuild`]) on a task
    /// of its own with `runner` (a runner of its own, not the live one), recorded with `ctx`'s
    /// actor and `reason` when done; [`VersionStatus::rebuilding`] says it runs. A failure is
    /// logged (the version keeps serving what it had).
    ///
    /// # Errors
    /// An unregistered version; [`VersionsError::Busy`] while one rebuild of it runs.
    pub fn start_rebuild(
        &self,
        runner: ProjectionRunner,
        projection: &str,
        version: u32,
        reason: &str,
        ctx: CommandContext,
    ) -> Result<(), VersionsError> {
        self.check(projection, version)?;
        let storage = storage_name(projection, version);
        {
            let mut rebuilding = self
                .rebuilding
                .lock()
                .map_err(|_| VersionsError::Busy("the rebuild registry is poisoned".into()))?;
            if !rebuilding.insert(storage.clone()) {
                return Err(VersionsError::Busy(format!(
                    "{projection} version {version} is already being rebuilt"
                )));
            }
        }
        let (me, projection, reason) = (self.clone(), projection.to_owned(), reason.to_owned());
        tokio::spawn(async move {
            let targets = [(projection.clone(), version)];
            match me
                .rebuild(&runner, &targets, &reason, &ctx, &|_, _| {})
                .await
            {
                Ok(position) => {
                    tracing::info!(%projection, version, position, "projection version rebuilt")
                }
                Err(e) => {
                    tracing::warn!(%projection, version, error = %crate::error_chain(&e), "rebuilding a projection version failed")
                }
            }
            if let Ok(mut rebuilding) = me.rebuilding.lock() {
                rebuilding.remove(&storage);
            }
        });
        Ok(())
    }

    async fn command(
        &self,
        projection: &str,
        command: ProjectionVersionsCommand,
        ctx: &CommandContext,
    ) -> Result<(), ServiceError> {
        self.service
            .execute::<ProjectionVersions>(projection, command, ctx, version_render(200))
            .await
            .map(|_| ())
    }
}

/// A document's JSON value (`None` when absent).
fn json(doc: &Option<String>) -> Result<Option<serde_json::Value>, StoreError> {
    doc.as_deref()
        .map(|d| {
            serde_json::from_str(d)
                .map_err(|e| StoreError::Corrupt(format!("read model document: {e}")))
        })
        .transpose()
}

/// A projection's documents in key order, a page at a time, bookkeeping keys left out.
struct Pages<'a> {
    store: &'a dyn ReadModelStore,
    projection: &'a str,
    page: VecDeque<(String, String)>,
    next: Option<String>,
}

impl<'a> Pages<'a> {
    const PAGE: usize = 1_000;

    fn new(store: &'a dyn ReadModelStore, projection: &'a str) -> Self {
        Self {
            store,
            projection,
            page: VecDeque::new(),
            next: Some(String::new()),
        }
    }

    /// The next document's key, without taking it.
    async fn peek(&mut self) -> Result<Option<String>, StoreError> {
        while self.page.is_empty() {
            let Some(from) = self.next.take() else {
                return Ok(None);
            };
            let page = self
                .store
                .range_docs(self.projection, &from, "\u{10ffff}", Self::PAGE)
                .await?;
            if page.len() == Self::PAGE {
                self.next = page.last().map(|(k, _)| key_after(k));
            }
            self.page
                .extend(page.into_iter().filter(|(k, _)| !is_bookkeeping_key(k)));
        }
        Ok(self.page.front().map(|(k, _)| k.clone()))
    }

    /// Takes the document [`Pages::peek`] returned.
    fn take(&mut self) -> (String, String) {
        self.page.pop_front().expect("peeked first")
    }
}

/// Reads `query` from the active version and from the shadow's candidate with both
/// checkpoints checked before and after, and records whether the answers agree.
async fn shadow_read(
    shadow: &Shadow,
    active: u32,
    query: Query,
    store: &dyn ReadModelStore,
) -> Result<(), StoreError> {
    let (sa, sb) = (
        storage_name(&shadow.projection, active),
        storage_name(&shadow.projection, shadow.version),
    );
    let read = |storage: String| {
        let query = &query;
        async move {
            let docs = match query {
                Query::Keys(keys) => store.get_docs(&storage, keys).await?,
                Query::Range(from, to, limit) => {
                    store.range_docs(&storage, from, to, *limit).await?
                }
            };
            let mut docs: Vec<(String, Option<serde_json::Value>)> = docs
                .into_iter()
                .filter(|(k, _)| !is_bookkeeping_key(k))
                .map(|(k, d)| Ok((k, json(&Some(d))?)))
                .collect::<Result<_, StoreError>>()?;
            docs.sort_by(|x, y| x.0.cmp(&y.0));
            Ok::<_, StoreError>(docs)
        }
    };
    let before = (
        store.projection_checkpoint(&sa).await?,
        store.projection_checkpoint(&sb).await?,
    );
    let (da, db) = (read(sa.clone()).await?, read(sb.clone()).await?);
    let after = (
        store.projection_checkpoint(&sa).await?,
        store.projection_checkpoint(&sb).await?,
    );
    let mut report = shadow
        .report
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if before != after || before.0 != before.1 {
        report.skipped += 1;
        return Ok(());
    }
    report.compared += 1;
    metrics::counter!("eventfold_projection_shadow_reads_total",
        "projection" => shadow.projection.clone(), "version" => shadow.version.to_string())
    .increment(1);
    if da == db {
        return Ok(());
    }
    report.mismatches += 1;
    metrics::counter!("eventfold_projection_shadow_mismatches_total",
        "projection" => shadow.projection.clone(), "version" => shadow.version.to_string())
    .increment(1);
    let difference = first_difference(&da, &db);
    report.latest.push(ShadowMismatch {
        at: Utc::now(),
        checkpoint: before.0,
        difference,
    });
    if report.latest.len() > EXAMPLES {
        report.latest.remove(0);
    }
    Ok(())
}

/// The first key (in key order) whose documents differ between two sorted answers.
fn first_difference(
    a: &[(String, Option<serde_json::Value>)],
    b: &[(String, Option<serde_json::Value>)],
) -> Difference {
    let mut keys: Vec<&String> = a.iter().chain(b).map(|(k, _)| k).collect();
    keys.sort();
    keys.dedup();
    let find = |side: &[(String, Option<serde_json::Value>)], key: &str| {
        side.iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.clone())
    };
    keys.into_iter()
        .map(|k| Difference {
            key: k.clone(),
            a: find(a, k),
            b: find(b, k),
        })
        .find(|d| d.a != d.b)
        .unwrap_or(Difference {
            key: String::new(),
            a: None,
            b: None,
        })
}
