//! Who may do what: the roles of a principal, and API keys as an event-sourced aggregate.
//!
//! An API key's stream is `apikey-{key id}`, scoped to the key's tenant (see
//! `eventfold_core::tenant`). Its events record who created or revoked which key, for which
//! actor and roles, and the SHA-256 of the key (never the key itself: it is shown once, when it
//! is created). The [`ApiKeysProjection`] folds them into the `api_keys` read model that servers
//! cache to authenticate requests.

use chrono::{DateTime, Utc};
use eventfold_core::{Actor, Aggregate, Projection, RecordedEvent};
use serde::{Deserialize, Serialize};

use crate::{DomainError, Refusal};

/// What a principal may do; each route of the API names the roles it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// An end customer: its own accounts and orders.
    Customer,
    /// Customer support: cancel, refund, fulfil, and read any order or account of its tenant.
    Support,
    /// Finance: corrections, the period close and exception decisions, the sales views.
    Finance,
    /// Operations: projections, snapshots, archive, verify, relay, flash-sale setup.
    Operator,
    /// Read-only audit: history, as-of state, sales views, verification and anchors.
    Auditor,
    /// A trusted front end (a shop) that acts on behalf of end users (`X-Actor: user:789`).
    Service,
}

impl Role {
    /// Every role, in declaration order.
    pub const ALL: [Self; 6] = [
        Self::Customer,
        Self::Support,
        Self::Finance,
        Self::Operator,
        Self::Auditor,
        Self::Service,
    ];

    /// The role's name, e.g. `support`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Customer => "customer",
            Self::Support => "support",
            Self::Finance => "finance",
            Self::Operator => "operator",
            Self::Auditor => "auditor",
            Self::Service => "service",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "role {s:?} is not one of {}",
                    Self::ALL.map(Role::as_str).join(", ")
                )
            })
    }
}

/// An API key's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiKey {
    /// Set when created.
    pub grant: Option<KeyGrant>,
    /// Whether it was revoked.
    pub revoked: bool,
}

/// What a key lets its holder be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyGrant {
    /// The actor the key's requests act as.
    pub actor: Actor,
    /// The roles it holds (at least one).
    pub roles: Vec<Role>,
    /// SHA-256 of the key, hex.
    pub key_sha256: String,
}

/// What a caller asks of an API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiKeyCommand {
    /// Creates the key (the id is new; creating it again is refused).
    Create(KeyGrant),
    /// Revokes the key; revoking it again is a no-op.
    Revoke {
        /// Why, if given.
        reason: Option<String>,
    },
}

/// What happened to an API key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApiKeyEvent {
    /// The key exists with this grant (the envelope's actor created it).
    ApiKeyCreated(KeyGrant),
    /// The key is refused from now on (the envelope's actor revoked it).
    ApiKeyRevoked {
        /// Why, if given.
        reason: Option<String>,
    },
}

/// Why an API key command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiKeyError {
    /// A key with this id exists.
    #[error("API key exists already")]
    Exists,
    /// No key with this id.
    #[error("no such API key")]
    NotFound,
    /// A bad grant; the message names the field.
    #[error("{0}")]
    Invalid(String),
}

impl DomainError for ApiKeyError {
    fn code(&self) -> &'static str {
        match self {
            Self::Exists => "api_key_exists",
            Self::NotFound => "api_key_not_found",
            Self::Invalid(_) => "invalid_api_key",
        }
    }
    fn refusal(&self) -> Refusal {
        match self {
            Self::Exists => Refusal::Conflict,
            Self::NotFound => Refusal::NotFound,
            Self::Invalid(_) => Refusal::Invalid,
        }
    }
}

impl Aggregate for ApiKey {
    type Command = ApiKeyCommand;
    type Event = ApiKeyEvent;
    type Error = ApiKeyError;
    const CATEGORY: &'static str = "apikey";

    fn handle(&self, command: ApiKeyCommand) -> Result<Vec<ApiKeyEvent>, ApiKeyError> {
        match command {
            ApiKeyCommand::Create(grant) => {
                if self.grant.is_some() {
                    return Err(ApiKeyError::Exists);
                }
                if grant.roles.is_empty() {
                    return Err(ApiKeyError::Invalid("a key needs at least one role".into()));
                }
                if grant.key_sha256.len() != 64
                    || !grant.key_sha256.bytes().all(|b| b.is_ascii_hexdigit())
                {
                    return Err(ApiKeyError::Invalid(
                        "key_sha256 must be 64 hex digits".into(),
                    ));
                }
                Ok(vec![ApiKeyEvent::ApiKeyCreated(grant)])
            }
            ApiKeyCommand::Revoke { reason } => match (&self.grant, self.revoked) {
                (None, _) => Err(ApiKeyError::NotFound),
                (Some(_), true) => Ok(vec![]),
                (Some(_), false) => Ok(vec![ApiKeyEvent::ApiKeyRevoked { reason }]),
            },
        }
    }

    fn apply(mut self, event: &ApiKeyEvent) -> Self {
        match event {
            ApiKeyEvent::ApiKeyCreated(grant) => self.grant = Some(grant.clone()),
            ApiKeyEvent::ApiKeyRevoked { .. } => self.revoked = true,
        }
        self
    }
}

/// Name of the API key projection.
pub const API_KEYS: &str = "api_keys";

/// One API key as the `api_keys` read model holds it (key: the key id, scoped to its tenant).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyDoc {
    /// The key id, scoped to its tenant.
    pub key_id: String,
    /// What the key grants.
    #[serde(flatten)]
    pub grant: KeyGrant,
    /// Who created it.
    pub created_by: String,
    /// When (UTC).
    pub created_at: DateTime<Utc>,
    /// Who revoked it, if anyone.
    pub revoked_by: Option<String>,
    /// When (UTC).
    pub revoked_at: Option<DateTime<Utc>>,
}

/// The `api_keys` projection.
pub struct ApiKeysProjection;

impl Projection for ApiKeysProjection {
    type Doc = ApiKeyDoc;
    type Input = ApiKeyEvent;

    fn name(&self) -> &'static str {
        API_KEYS
    }

    fn select(&self, event: &RecordedEvent) -> Result<Option<(String, ApiKeyEvent)>, String> {
        let Some(id) = ApiKey::id_of_stream(&event.stream_id) else {
            return Ok(None);
        };
        let input = eventfold_core::aggregate::decode_recorded::<ApiKey>(event)
            .map_err(|e| e.to_string())?;
        Ok(Some((id, input)))
    }

    fn apply(
        &self,
        doc: Option<ApiKeyDoc>,
        input: ApiKeyEvent,
        event: &RecordedEvent,
    ) -> Option<ApiKeyDoc> {
        match (doc, input) {
            (_, ApiKeyEvent::ApiKeyCreated(grant)) => Some(ApiKeyDoc {
                key_id: ApiKey::id_of_stream(&event.stream_id).unwrap_or_default(),
                grant,
                created_by: event.metadata.actor.to_string(),
                created_at: event.event_time,
                revoked_by: None,
                revoked_at: None,
            }),
            (Some(mut doc), ApiKeyEvent::ApiKeyRevoked { .. }) => {
                doc.revoked_by = Some(event.metadata.actor.to_string());
                doc.revoked_at = Some(event.event_time);
                Some(doc)
            }
            (None, ApiKeyEvent::ApiKeyRevoked { .. }) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> KeyGrant {
        KeyGrant {
            actor: Actor::parse("admin:support-001").unwrap(),
            roles: vec![Role::Support],
            key_sha256: "ab".repeat(32),
        }
    }

    #[test]
    fn a_key_is_created_once_and_revoked_once() {
        let key = ApiKey::default();
        let created = key.handle(ApiKeyCommand::Create(grant())).unwrap();
        let key = created.iter().fold(key, ApiKey::apply);
        assert_eq!(
            key.handle(ApiKeyCommand::Create(grant())),
            Err(ApiKeyError::Exists)
        );
        let revoked = key.handle(ApiKeyCommand::Revoke { reason: None }).unwrap();
        assert_eq!(revoked.len(), 1);
        let key = revoked.iter().fold(key, ApiKey::apply);
        assert!(key.revoked);
        assert!(key
            .handle(ApiKeyCommand::Revoke { reason: None })
            .unwrap()
            .is_empty());
        assert_eq!(
            ApiKey::default().handle(ApiKeyCommand::Revoke { reason: None }),
            Err(ApiKeyError::NotFound)
        );
    }

    #[test]
    fn a_grant_needs_a_role_and_a_digest() {
        let mut g = grant();
        g.roles.clear();
        assert!(matches!(
            ApiKey::default().handle(ApiKeyCommand::Create(g)),
            Err(ApiKeyError::Invalid(_))
        ));
        let mut g = grant();
        g.key_sha256 = "zz".into();
        assert!(matches!(
            ApiKey::default().handle(ApiKeyCommand::Create(g)),
            Err(ApiKeyError::Invalid(_))
        ));
    }

    #[test]
    fn roles_parse_by_name_and_name_the_choices() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
        }
        let e = "root".parse::<Role>().unwrap_err();
        assert!(e.contains("customer, support"), "{e}");
    }
}
