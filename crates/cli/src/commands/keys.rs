//! `eventfold keys create | list | revoke`: the API keys requests authenticate with. Each change
//! is recorded as an event of the key's stream (who created or revoked which key; never the key
//! itself, only its SHA-256). Every running server picks a change up within about a second.

use anyhow::Context;
use clap::{Args, Subcommand};
use eventfold_app::identity::{create_key, list_keys, revoke_key};
use eventfold_app::service::Service;
use eventfold_core::{tenant, Actor};
use eventfold_domain::identity::Role;
use serde::Serialize;

use crate::context::Global;

/// The key subcommands.
#[derive(Debug, Subcommand)]
pub enum Keys {
    /// Create a key and print it, once (`--json`: `{"id": "...", "key": "..."}`); send it as
    /// `Authorization: Bearer <key>`.
    Create(Create),
    /// List every key (never the key itself).
    List,
    /// Revoke a key: every running server refuses it within about a second.
    Revoke(Revoke),
}

/// `keys create`'s options.
#[derive(Debug, Args)]
pub struct Create {
    /// The tenant the key acts in.
    #[arg(long, default_value = tenant::DEFAULT)]
    tenant: String,
    /// The actor the key acts as, `kind:id` (e.g. `admin:support-001`, `user:789`,
    /// `service:shop-web`).
    #[arg(long)]
    actor: String,
    /// A role the key holds (repeat for more): customer, support, finance, operator, auditor,
    /// service.
    #[arg(long = "role", required = true)]
    roles: Vec<String>,
    /// Who creates the key, recorded in its event (default `admin:{$USER}`).
    #[arg(long)]
    by: Option<String>,
}

/// `keys revoke`'s options.
#[derive(Debug, Args)]
pub struct Revoke {
    /// The key id (`keys list` shows it).
    id: String,
    /// The key's tenant.
    #[arg(long, default_value = tenant::DEFAULT)]
    tenant: String,
    /// Why, recorded in the key's event.
    #[arg(long)]
    reason: Option<String>,
    /// Who revokes the key, recorded in its event (default `admin:{$USER}`).
    #[arg(long)]
    by: Option<String>,
}

#[derive(Serialize)]
struct Created {
    id: String,
    key: String,
    tenant: String,
    actor: String,
    roles: Vec<Role>,
}

#[derive(Serialize)]
struct Listed {
    id: String,
    tenant: String,
    actor: String,
    roles: Vec<Role>,
    created_by: String,
    created_at: chrono::DateTime<chrono::Utc>,
    revoked_by: Option<String>,
    revoked_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The actor recorded for a key change: `--by`, else `admin:{$USER}`.
pub(crate) fn by(given: Option<String>) -> anyhow::Result<Actor> {
    let text = given.unwrap_or_else(|| {
        let user = std::env::var("USER").unwrap_or_default();
        let user: String = user
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'))
            .collect();
        format!("admin:{}", if user.is_empty() { "cli" } else { &user })
    });
    Actor::parse(&text).map_err(|m| anyhow::anyhow!("--by: {m}"))
}

impl Keys {
    /// Runs the subcommand.
    ///
    /// # Errors
    /// A bad option (named), a key that does not exist, the store failing.
    pub async fn exec(self, global: &Global) -> anyhow::Result<()> {
        let backend = global.open().await?;
        let service = Service::new(backend.events.clone());
        let out = global.output();
        // The `api_keys` read model is brought up to date after a change and before a listing,
        // so the next `list` or `serve` sees it even when no server is running.
        let runner = backend.projection_runner();
        let catch_up = || async {
            runner
                .catch_up(None, &|_, _| {})
                .await
                .context("bringing the read models up to date")
        };
        match self {
            Self::Create(c) => {
                let actor = Actor::parse(&c.actor).map_err(|m| anyhow::anyhow!("--actor: {m}"))?;
                let roles = c
                    .roles
                    .iter()
                    .map(|r| {
                        r.parse::<Role>()
                            .map_err(|m| anyhow::anyhow!("--role: {m}"))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                eventfold_domain::validate_id("--tenant", &c.tenant).map_err(anyhow::Error::msg)?;
                let created =
                    create_key(&service, &c.tenant, actor.clone(), roles.clone(), by(c.by)?)
                        .await
                        .context("creating the key")?;
                catch_up().await?;
                let report = Created {
                    id: created.id,
                    key: created.key,
                    tenant: c.tenant,
                    actor: actor.to_string(),
                    roles,
                };
                out.print(&report, || {
                    format!(
                        "key {} for {} in tenant {} ({}):\n{}\n(shown once: keep it; send it as Authorization: Bearer <key>)",
                        report.id,
                        report.actor,
                        report.tenant,
                        report.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", "),
                        report.key
                    )
                })
            }
            Self::List => {
                catch_up().await?;
                let keys: Vec<Listed> = list_keys(backend.read_models.as_ref())
                    .await?
                    .into_iter()
                    .map(|d| {
                        let (t, id) = tenant::split(&d.key_id);
                        Listed {
                            id: id.to_owned(),
                            tenant: t.to_owned(),
                            actor: d.grant.actor.to_string(),
                            roles: d.grant.roles,
                            created_by: d.created_by,
                            created_at: d.created_at,
                            revoked_by: d.revoked_by,
                            revoked_at: d.revoked_at,
                        }
                    })
                    .collect();
                out.print(&keys, || {
                    if keys.is_empty() {
                        return "no keys".into();
                    }
                    keys.iter()
                        .map(|k| {
                            format!(
                                "{}  tenant {}  {}  [{}]  created {} by {}{}",
                                k.id,
                                k.tenant,
                                k.actor,
                                k.roles
                                    .iter()
                                    .map(|r| r.as_str())
                                    .collect::<Vec<_>>()
                                    .join(","),
                                k.created_at.to_rfc3339(),
                                k.created_by,
                                k.revoked_at.map_or(String::new(), |t| format!(
                                    "  REVOKED {} by {}",
                                    t.to_rfc3339(),
                                    k.revoked_by.as_deref().unwrap_or("?")
                                ))
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                })
            }
            Self::Revoke(r) => {
                eventfold_domain::validate_id("--tenant", &r.tenant).map_err(anyhow::Error::msg)?;
                eventfold_domain::validate_id("key id", &r.id).map_err(anyhow::Error::msg)?;
                revoke_key(&service, &r.tenant, &r.id, r.reason, by(r.by)?)
                    .await
                    .with_context(|| format!("revoking key {} of tenant {}", r.id, r.tenant))?;
                catch_up().await?;
                let report = serde_json::json!({"id": r.id, "tenant": r.tenant, "revoked": true});
                out.print(&report, || format!("key {} revoked", r.id))
            }
        }
    }
}
