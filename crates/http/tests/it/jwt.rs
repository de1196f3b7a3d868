//! JWT bearer tokens: a valid EdDSA or RS256 token (from a PEM key or a JWKS) is let in with the
//! tenant, actor and roles of its claims; expired, not yet valid, wrong audience or issuer,
//! wrong key, `alg: none` and HMAC tokens are 401 and change nothing.

use std::sync::Arc;

use axum::http::{Method, StatusCode};
use base64::Engine;
use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
use eventfold_app::identity::jwt::{JwtConfig, JwtVerifier};
use eventfold_http::testing::{assert_error, TestApp};
use eventfold_http::AuthConfig;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

struct Ed {
    private_pem: String,
    public_pem: String,
    public_raw: [u8; 32],
}

fn ed25519() -> Ed {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    Ed {
        private_pem: key.to_pkcs8_pem(Default::default()).unwrap().to_string(),
        public_pem: key
            .verifying_key()
            .to_public_key_pem(Default::default())
            .unwrap(),
        public_raw: key.verifying_key().to_bytes(),
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn claims(overrides: Value) -> Value {
    let mut c = json!({
        "iss": "https://id.example", "aud": "eventfold", "sub": "alice",
        "tenant": "acme", "roles": ["customer"], "exp": now() + 300, "nbf": now() - 10,
    });
    for (k, v) in overrides.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn ed_token(key: &Ed, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = kid.map(str::to_owned);
    encode(
        &header,
        claims,
        &EncodingKey::from_ed_pem(key.private_pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn app_with(app: TestApp, config: JwtConfig) -> TestApp {
    app.with_auth(AuthConfig {
        jwt: Some(Arc::new(JwtVerifier::new(&config).unwrap())),
        ..AuthConfig::default()
    })
}

fn config(public_keys_pem: Vec<String>, jwks: Option<String>) -> JwtConfig {
    JwtConfig {
        issuer: "https://id.example".into(),
        audience: "eventfold".into(),
        public_keys_pem,
        jwks,
    }
}

async fn open_account(app: &TestApp, token: &str) -> eventfold_http::testing::Reply {
    app.send_as(
        token,
        Method::POST,
        "/accounts",
        &[],
        Some(json!({"account_id": "a-1", "owner": "alice", "currency": "USD"})),
    )
    .await
}

async fn eddsa_tokens_from_a_pem_key(app: TestApp) {
    let key = ed25519();
    let other = ed25519();
    let app = app_with(app, config(vec![key.public_pem.clone()], None));
    let none_header =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let body =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims(json!({})).to_string());
    let hmac = encode(
        &Header::new(Algorithm::HS256),
        &claims(json!({})),
        &EncodingKey::from_secret(key.public_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    for (token, mentions) in [
        (
            ed_token(&key, None, &claims(json!({"exp": now() - 3600}))),
            "expired",
        ),
        (
            ed_token(&key, None, &claims(json!({"nbf": now() + 3600}))),
            "not valid yet",
        ),
        (
            ed_token(&key, None, &claims(json!({"aud": "another-api"}))),
            "audience",
        ),
        (
            ed_token(&key, None, &claims(json!({"iss": "https://evil.example"}))),
            "issuer",
        ),
        (ed_token(&key, None, &claims(json!({"exp": null}))), "exp"),
        (
            ed_token(&key, None, &claims(json!({"tenant": null}))),
            "tenant",
        ),
        (
            ed_token(&key, None, &claims(json!({"roles": ["root"]}))),
            "roles",
        ),
        (ed_token(&other, None, &claims(json!({}))), "signature"),
        (format!("{none_header}.{body}."), "not a JWT"),
        (hmac, "HS256"),
    ] {
        let r = open_account(&app, &token).await;
        assert_error(&r, StatusCode::UNAUTHORIZED, "unauthenticated", mentions);
    }
    assert_eq!(app.head().await, 0, "refused tokens appended nothing");

    let r = open_account(&app, &ed_token(&key, None, &claims(json!({})))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let events = app
        .backend
        .events
        .read_stream("acme/account-a-1", 1, 10)
        .await
        .unwrap();
    assert_eq!(events[0].metadata.actor.as_str(), "user:alice");
    assert_eq!(events[0].metadata.tenant_id, "acme");
    // The claims decide the roles and the actor.
    let support = ed_token(
        &key,
        None,
        &claims(json!({"sub": "s1", "actor": "admin:support-001", "roles": ["support"]})),
    );
    let r = app
        .send_as(
            &support,
            Method::POST,
            "/accounts/a-1/deposit",
            &[],
            Some(json!({"amount": "1.00", "currency": "USD"})),
        )
        .await;
    assert_error(&r, StatusCode::FORBIDDEN, "forbidden", "customer");
    let r = app
        .send_as(&support, Method::GET, "/accounts/a-1", &[], None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // Without any credential a JWT-configured server is not open.
    assert_eq!(
        app.get("/accounts/a-1").await.status,
        StatusCode::UNAUTHORIZED
    );
}

eventfold_http::on_both_stores!([] eddsa_tokens_from_a_pem_key_on_sqlite, eddsa_tokens_from_a_pem_key_on_postgres, eddsa_tokens_from_a_pem_key);

#[tokio::test]
async fn eddsa_tokens_from_a_jwks_chosen_by_kid() {
    let (k1, k2) = (ed25519(), ed25519());
    let x = |k: &Ed| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(k.public_raw);
    let jwks = json!({"keys": [
        {"kty": "OKP", "crv": "Ed25519", "kid": "k1", "alg": "EdDSA", "x": x(&k1)},
        {"kty": "OKP", "crv": "Ed25519", "kid": "k2", "alg": "EdDSA", "x": x(&k2)},
    ]});
    let app = app_with(TestApp::new().await, config(vec![], Some(jwks.to_string())));
    let r = open_account(&app, &ed_token(&k2, Some("k2"), &claims(json!({})))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = open_account(&app, &ed_token(&k2, Some("k1"), &claims(json!({})))).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "unauthenticated", "signature");
    let r = open_account(&app, &ed_token(&k1, Some("k9"), &claims(json!({})))).await;
    assert_error(
        &r,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        "no configured key",
    );
}

#[tokio::test]
async fn rs256_tokens_from_a_pem_key() {
    use rsa::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};
    let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
    let public_pem = private
        .to_public_key()
        .to_public_key_pem(Default::default())
        .unwrap();
    let private_pem = private.to_pkcs8_pem(Default::default()).unwrap();
    let app = app_with(TestApp::new().await, config(vec![public_pem], None));
    let token = encode(
        &Header::new(Algorithm::RS256),
        &claims(json!({})),
        &EncodingKey::from_rsa_pem(private_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(open_account(&app, &token).await.status, StatusCode::CREATED);
    let expired = encode(
        &Header::new(Algorithm::RS256),
        &claims(json!({"exp": now() - 3600})),
        &EncodingKey::from_rsa_pem(private_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    let r = open_account(&app, &expired).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "unauthenticated", "expired");
}

#[test]
fn a_verifier_refuses_an_incomplete_or_bad_configuration() {
    let e = JwtVerifier::new(&config(vec![], None)).unwrap_err();
    assert!(e.to_string().contains("at least one public key"), "{e}");
    let e = JwtVerifier::new(&config(vec!["not a pem".into()], None)).unwrap_err();
    assert!(e.to_string().contains("public key 0"), "{e}");
    let e = JwtVerifier::new(&config(vec![], Some("{".into()))).unwrap_err();
    assert!(e.to_string().contains("JWKS"), "{e}");
}
