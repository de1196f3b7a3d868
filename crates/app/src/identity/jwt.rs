//! JWT bearer tokens from an identity provider (RFC 7519), verified with the `jsonwebtoken`
//! crate against configured public keys (PEM files) or a JWKS file (RFC 7517).
//!
//! Accepted: `alg` `EdDSA` (Ed25519) or `RS256` only (`none` and every HMAC algorithm are
//! refused, so a public key can never be used as a shared secret). Checked: the signature, `iss`
//! and `aud` (both required and equal to the configured ones), `exp` (required) and `nbf` (when
//! present), with [`LEEWAY_SECS`] of clock skew. The claims map to a principal:
//!
//! | claim | principal |
//! |---|---|
//! | `tenant` (required) | the tenant |
//! | `actor` (`kind:id`), else `sub` as `user:{sub}` | the actor |
//! | `roles` (array of role names, at least one) | the roles |
//!
//! A key with a `kid` in the JWKS is chosen by the token's `kid`; a token without one is tried
//! against every configured key of its algorithm.

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use eventfold_core::Actor;
use eventfold_domain::identity::Role;

use super::Principal;

/// Clock skew accepted on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 30;

/// Where the verifier's keys and expectations come from.
#[derive(Debug, Clone, Default)]
pub struct JwtConfig {
    /// The issuer tokens must name (`iss`).
    pub issuer: String,
    /// The audience tokens must name (`aud`).
    pub audience: String,
    /// Public keys, PEM text (Ed25519 or RSA `PUBLIC KEY`).
    pub public_keys_pem: Vec<String>,
    /// A JWKS document (JSON text), if any.
    pub jwks: Option<String>,
}

/// Why a verifier could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum JwtConfigError {
    /// A PEM key did not parse as Ed25519 or RSA.
    #[error("public key {index}: not an Ed25519 or RSA public key in PEM: {message}")]
    BadPem {
        /// Which key (0-based, in the order given).
        index: usize,
        /// What the parser said.
        message: String,
    },
    /// The JWKS did not parse, or holds a key of another type.
    #[error("JWKS: {0}")]
    BadJwks(String),
    /// No key at all, or no issuer or audience.
    #[error("{0}")]
    Incomplete(&'static str),
}

struct Key {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// Verifies JWT bearer tokens (see the module docs).
pub struct JwtVerifier {
    issuer: String,
    audience: String,
    keys: Vec<Key>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("keys", &self.keys.len())
            .finish()
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    tenant: Option<String>,
    actor: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
}

impl JwtVerifier {
    /// A verifier for `config`.
    ///
    /// # Errors
    /// [`JwtConfigError`] naming the key or field that is wrong.
    pub fn new(config: &JwtConfig) -> Result<Self, JwtConfigError> {
        if config.issuer.is_empty() || config.audience.is_empty() {
            return Err(JwtConfigError::Incomplete(
                "JWT verification needs an issuer and an audience",
            ));
        }
        let mut keys = Vec::new();
        for (index, pem) in config.public_keys_pem.iter().enumerate() {
            let bad = |e: jsonwebtoken::errors::Error| JwtConfigError::BadPem {
                index,
                message: e.to_string(),
            };
            // A PEM public key is Ed25519 or RSA: the parser tells them apart by their OID.
            let key = match DecodingKey::from_ed_pem(pem.as_bytes()) {
                Ok(key) => Key {
                    kid: None,
                    algorithm: Algorithm::EdDSA,
                    key,
                },
                Err(_) => Key {
                    kid: None,
                    algorithm: Algorithm::RS256,
                    key: DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(bad)?,
                },
            };
            keys.push(key);
        }
        if let Some(jwks) = &config.jwks {
            let set: JwkSet =
                serde_json::from_str(jwks).map_err(|e| JwtConfigError::BadJwks(e.to_string()))?;
            for jwk in &set.keys {
                let algorithm = match &jwk.algorithm {
                    jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
                    jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                    _ => {
                        return Err(JwtConfigError::BadJwks(format!(
                            "key {:?}: only Ed25519 (OKP) and RSA keys are accepted",
                            jwk.common.key_id
                        )))
                    }
                };
                let key = DecodingKey::from_jwk(jwk).map_err(|e| {
                    JwtConfigError::BadJwks(format!("key {:?}: {e}", jwk.common.key_id))
                })?;
                keys.push(Key {
                    kid: jwk.common.key_id.clone(),
                    algorithm,
                    key,
                });
            }
        }
        if keys.is_empty() {
            return Err(JwtConfigError::Incomplete(
                "JWT verification needs at least one public key or a JWKS",
            ));
        }
        Ok(Self {
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            keys,
        })
    }

    /// The principal of `token`.
    ///
    /// # Errors
    /// A message saying what did not hold (shown to the caller with a 401): a malformed token,
    /// an algorithm other than EdDSA or RS256, no key, a bad signature, a wrong issuer or
    /// audience, an expired or not yet valid token, missing or bad claims.
    pub fn verify(&self, token: &str) -> Result<Principal, String> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| format!("the bearer token is not a JWT: {e}"))?;
        if !matches!(header.alg, Algorithm::EdDSA | Algorithm::RS256) {
            return Err(format!(
                "JWT algorithm {:?} is not accepted (EdDSA or RS256)",
                header.alg
            ));
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;
        let candidates = self.keys.iter().filter(|k| {
            k.algorithm == header.alg
                && match (&header.kid, &k.kid) {
                    (Some(want), Some(have)) => want == have,
                    _ => true,
                }
        });
        let mut last = "no configured key matches the token's algorithm and kid".to_owned();
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => return principal(data.claims),
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind;
                    let message = match e.kind() {
                        ErrorKind::InvalidSignature => "the JWT's signature does not verify".into(),
                        ErrorKind::ExpiredSignature => "the JWT has expired".into(),
                        ErrorKind::ImmatureSignature => "the JWT is not valid yet (nbf)".into(),
                        ErrorKind::InvalidIssuer => "the JWT's issuer is not accepted".into(),
                        ErrorKind::InvalidAudience => "the JWT's audience is not accepted".into(),
                        ErrorKind::MissingRequiredClaim(c) => format!("the JWT has no {c} claim"),
                        _ => format!("the JWT does not verify: {e}"),
                    };
                    // Another key may still verify a signature; any other failure is final.
                    if !matches!(e.kind(), ErrorKind::InvalidSignature) {
                        return Err(message);
                    }
                    last = message;
                }
            }
        }
        Err(last)
    }
}

fn principal(claims: Claims) -> Result<Principal, String> {
    let tenant = claims
        .tenant
        .ok_or_else(|| "the JWT has no tenant claim".to_owned())?;
    eventfold_domain::validate_id("JWT claim tenant", &tenant)?;
    let actor = match claims.actor {
        Some(a) => Actor::parse(&a).map_err(|m| format!("JWT claim actor: {m}"))?,
        None => Actor::parse(&format!("user:{}", claims.sub))
            .map_err(|m| format!("JWT claim sub: {m}"))?,
    };
    let mut roles = claims
        .roles
        .iter()
        .map(|r| {
            r.parse::<Role>()
                .map_err(|m| format!("JWT claim roles: {m}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if roles.is_empty() {
        return Err("the JWT's roles claim names no role".into());
    }
    roles.sort();
    roles.dedup();
    Ok(Principal {
        tenant,
        actor,
        roles,
        via: None,
        credential: format!("jwt:{}", claims.sub),
    })
}
