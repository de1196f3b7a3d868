//! Who is asking: principals, API keys and the cached registry that authenticates them.
//!
//! A [`Principal`] is a tenant, an actor (`kind:id`) and roles. It comes from a credential: an
//! API key (`Authorization: Bearer efk_...`), a JWT from an identity provider ([`jwt`]), or, on
//! a server started without credentials on a loopback address, from nothing at all
//! ([`Principal::open`]).
//!
//! API keys are random (256 bits from the operating system), shown once when created, and stored
//! only as their SHA-256 in the key's `ApiKeyCreated` event (see
//! `eventfold_domain::identity`). The `api_keys` projection folds those events; every server
//! keeps the projection's documents in memory ([`KeyRegistry`]) and reloads them every
//! [`REFRESH_EVERY`], so a lookup is a hash and a map read, and a key revoked by any process is
//! refused by every running server within about a second (the projection's lag plus one
//! refresh).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use eventfold_core::read_model::key_after;
use eventfold_core::{tenant, Actor, ReadModelStore, StoreError};
use eventfold_domain::identity::{ApiKey, ApiKeyCommand, ApiKeyDoc, KeyGrant, Role, API_KEYS};
use sha2::{Digest, Sha256};

use crate::service::{version_render, CommandContext, Service, ServiceError};

pub mod jwt;

/// How often a server reloads the API keys.
pub const REFRESH_EVERY: Duration = Duration::from_millis(250);

/// The prefix of every API key eventfold makes (so a leaked key is recognisable).
pub const KEY_PREFIX: &str = "efk_";

/// [`Principal::credential`] of an open server's principal.
const OPEN_CREDENTIAL: &str = "open";

/// Who a request is from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The tenant it acts in.
    pub tenant: String,
    /// Who acts (recorded as the events' actor).
    pub actor: Actor,
    /// What it may do.
    pub roles: Vec<Role>,
    /// The service acting on behalf of [`Principal::actor`], if any (recorded in the events'
    /// envelope).
    pub via: Option<Actor>,
    /// The credential it proved, for logs: `open`, `key:{id}`.
    pub credential: String,
}

impl Principal {
    /// The principal of a server running without credentials: every role, in `tenant` (the
    /// `X-Tenant-Id` header, else `default`), as `actor` (the `X-Actor` header, else
    /// `user:anonymous`).
    pub fn open(tenant: &str, actor: Actor) -> Self {
        Self {
            tenant: tenant.to_owned(),
            actor,
            roles: Role::ALL.to_vec(),
            via: None,
            credential: OPEN_CREDENTIAL.into(),
        }
    }

    /// Whether it is the principal of an open server ([`Principal::open`]), proven by nothing.
    pub fn is_open(&self) -> bool {
        self.credential == OPEN_CREDENTIAL
    }

    /// Whether it holds `role`.
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Whether it holds any of `roles`.
    pub fn has_any(&self, roles: &[Role]) -> bool {
        roles.iter().any(|r| self.has(*r))
    }

    /// `id` scoped to the principal's tenant (see [`eventfold_core::tenant`]).
    pub fn scope(&self, id: &str) -> String {
        tenant::scope(&self.tenant, id)
    }
}

/// The API keys servers authenticate with, cached (see the module docs).
#[derive(Default)]
pub struct KeyRegistry {
    by_digest: RwLock<Arc<HashMap<String, Principal>>>,
}

impl KeyRegistry {
    /// The principal of `key`, if it is a live key.
    pub fn lookup(&self, key: &str) -> Option<Principal> {
        let digest = digest(key);
        self.by_digest
            .read()
            .ok()
            .and_then(|m| m.get(&digest).cloned())
    }

    /// Live keys known.
    pub fn len(&self) -> usize {
        self.by_digest.read().map_or(0, |m| m.len())
    }

    /// Whether no live key is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reloads every key from the `api_keys` read model. Returns the live keys.
    ///
    /// # Errors
    /// Store failures (the keys loaded before stay in use).
    pub async fn refresh(&self, read_models: &dyn ReadModelStore) -> Result<usize, StoreError> {
        let mut map = HashMap::new();
        for doc in list_keys(read_models).await? {
            if doc.revoked_at.is_some() {
                continue;
            }
            let (tenant, id) = tenant::split(&doc.key_id);
            map.insert(
                doc.grant.key_sha256.clone(),
                Principal {
                    tenant: tenant.to_owned(),
                    actor: doc.grant.actor.clone(),
                    roles: doc.grant.roles.clone(),
                    via: None,
                    credential: format!("key:{id}"),
                },
            );
        }
        let live = map.len();
        if let Ok(mut m) = self.by_digest.write() {
            *m = Arc::new(map);
        }
        Ok(live)
    }

    /// Reloads the keys every [`REFRESH_EVERY`] until `stop` completes; a failed reload is
    /// logged and the keys loaded before stay in use.
    pub async fn run(
        self: Arc<Self>,
        read_models: Arc<dyn ReadModelStore>,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let mut stop = std::pin::pin!(stop);
        loop {
            if let Err(e) = self.refresh(read_models.as_ref()).await {
                tracing::warn!(error = %crate::error_chain(&e), "reloading API keys failed; retrying");
            }
            tokio::select! {
                () = tokio::time::sleep(REFRESH_EVERY) => {}
                () = &mut stop => return,
            }
        }
    }
}

/// SHA-256 of `key`, hex: what the key's events store.
pub fn digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A new API key: [`KEY_PREFIX`] and 32 random bytes from the operating system, hex.
///
/// # Errors
/// The operating system's random source failed.
pub fn new_key() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes)?;
    Ok(format!("{KEY_PREFIX}{}", hex::encode(bytes)))
}

/// A key made by [`create_key`]: its id and the key itself (shown once; only its digest is
/// stored).
#[derive(Debug, Clone)]
pub struct CreatedKey {
    /// The key id (a UUIDv7), unscoped.
    pub id: String,
    /// The key, to send as `Authorization: Bearer {key}`.
    pub key: String,
}

/// Creates a key of `tenant` acting as `actor` with `roles`; `by` is recorded as who created it.
///
/// # Errors
/// An invalid tenant or no role ([`ServiceError::Refused`]), store failures.
pub async fn create_key(
    service: &Service,
    tenant_id: &str,
    actor: Actor,
    roles: Vec<Role>,
    by: Actor,
) -> Result<CreatedKey, ServiceError> {
    eventfold_domain::validate_id("tenant", tenant_id).map_err(|m| ServiceError::Refused {
        code: "invalid_tenant",
        refusal: eventfold_domain::Refusal::Invalid,
        message: m,
    })?;
    let key = new_key().map_err(|e| {
        ServiceError::Store(StoreError::Unavailable(
            format!("random source failed: {e}").into(),
        ))
    })?;
    let id = uuid::Uuid::now_v7().to_string();
    let mut roles = roles;
    roles.sort();
    roles.dedup();
    let grant = KeyGrant {
        actor,
        roles,
        key_sha256: digest(&key),
    };
    service
        .execute::<ApiKey>(
            &tenant::scope(tenant_id, &id),
            ApiKeyCommand::Create(grant),
            &CommandContext::new(by),
            version_render::<ApiKey>(201),
        )
        .await?;
    Ok(CreatedKey { id, key })
}

/// Revokes key `id` (unscoped) of `tenant`; `by` is recorded as who revoked it. Revoking a
/// revoked key changes nothing.
///
/// # Errors
/// No such key ([`ServiceError::Refused`], not found), store failures.
pub async fn revoke_key(
    service: &Service,
    tenant_id: &str,
    id: &str,
    reason: Option<String>,
    by: Actor,
) -> Result<(), ServiceError> {
    service
        .execute::<ApiKey>(
            &tenant::scope(tenant_id, id),
            ApiKeyCommand::Revoke { reason },
            &CommandContext::new(by),
            version_render::<ApiKey>(200),
        )
        .await?;
    Ok(())
}

/// Every key of every tenant, revoked ones included, in key order.
///
/// # Errors
/// Store failures, an undecodable document.
pub async fn list_keys(read_models: &dyn ReadModelStore) -> Result<Vec<ApiKeyDoc>, StoreError> {
    let mut out = Vec::new();
    let mut from = String::new();
    loop {
        let page = read_models
            .range_docs(API_KEYS, &from, "\u{10ffff}", 1_000)
            .await?;
        let Some((last, _)) = page.last() else {
            return Ok(out);
        };
        from = key_after(last);
        let full = page.len() == 1_000;
        for (key, json) in page {
            let doc: ApiKeyDoc = serde_json::from_str(&json)
                .map_err(|e| StoreError::Corrupt(format!("api key {key}: {e}")))?;
            out.push(doc);
        }
        if !full {
            return Ok(out);
        }
    }
}
