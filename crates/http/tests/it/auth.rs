//! Identity and tenancy over HTTP, on both stores: API keys, tenants that cannot see each other,
//! actors taken from the credential (a forged `X-Actor` is refused; a service acts on behalf of
//! a user), customers that reach only their own accounts and orders, every role against every
//! route, and a revoked key refused by a running server within a second.

use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use eventfold_domain::identity::Role;
use serde_json::{json, Value};

use eventfold_http::on_both_stores;
use eventfold_http::testing::{assert_error, TestApp};

async fn events_of(app: &TestApp, stream: &str) -> Vec<eventfold_core::RecordedEvent> {
    app.backend
        .events
        .read_stream(stream, 1, usize::MAX)
        .await
        .unwrap()
}

/// The cross-tenant withdrawal, forged actor and same-id-in-two-tenants cases.
async fn tenants_are_apart(app: &TestApp) {
    let alice = app.key("tenant-a", "user:alice", &[Role::Customer]).await;
    let mallory = app
        .key("tenant-b", "user:mallory", &[Role::Customer, Role::Support])
        .await;
    let r = app
        .send_as(
            &alice,
            Method::POST,
            "/accounts",
            &[],
            Some(json!({"account_id": "acc-1", "owner": "alice", "currency": "USD"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["account_id"], "acc-1");
    let r = app
        .send_as(
            &alice,
            Method::POST,
            "/accounts/acc-1/deposit",
            &[],
            Some(json!({"amount": "100.00", "currency": "USD"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let head = app.head().await;

    // Another tenant's id answers 404, as an id that does not exist, and changes nothing.
    for (uri, body) in [
        (
            "/accounts/acc-1/withdraw",
            Some(json!({"amount": "50.00", "currency": "USD"})),
        ),
        ("/accounts/acc-1", None),
        ("/balances/acc-1", None),
    ] {
        let method = if body.is_some() {
            Method::POST
        } else {
            Method::GET
        };
        let r = app
            .send_as(&mallory, method, uri, &[("x-tenant-id", "tenant-b")], body)
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{uri}: {}", r.body);
        assert_eq!(r.body["code"], "account_not_found", "{uri}");
    }
    // Naming the other tenant in X-Tenant-Id is refused, naming an actor not its own too.
    let r = app
        .send_as(
            &mallory,
            Method::POST,
            "/accounts/acc-1/withdraw",
            &[("x-tenant-id", "tenant-a")],
            Some(json!({"amount": "50.00", "currency": "USD"})),
        )
        .await;
    assert_error(&r, StatusCode::FORBIDDEN, "forbidden", "X-Tenant-Id");
    let r = app
        .send_as(
            &mallory,
            Method::POST,
            "/accounts",
            &[("x-actor", "admin:support-001")],
            Some(json!({"account_id": "m-1", "owner": "mallory", "currency": "USD"})),
        )
        .await;
    assert_error(&r, StatusCode::FORBIDDEN, "forbidden", "X-Actor");
    assert_eq!(app.head().await, head, "refused requests appended nothing");
    let a = events_of(app, "tenant-a/account-acc-1").await;
    assert_eq!(a.len(), 2);
    assert!(a
        .iter()
        .all(|e| e.metadata.tenant_id == "tenant-a" && e.metadata.actor.as_str() == "user:alice"));

    // The same id in another tenant is another account.
    let r = app
        .send_as(
            &mallory,
            Method::POST,
            "/accounts",
            &[],
            Some(json!({"account_id": "acc-1", "owner": "mallory", "currency": "EUR"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    app.project().await;
    let r = app
        .send_as(&alice, Method::GET, "/balances/acc-1", &[], None)
        .await;
    assert_eq!(
        (
            r.body["account_id"].as_str(),
            r.body["balance"]["amount"].as_str()
        ),
        (Some("acc-1"), Some("100.00")),
        "{}",
        r.body
    );
    let r = app
        .send_as(&mallory, Method::GET, "/accounts/acc-1", &[], None)
        .await;
    assert_eq!(
        (r.body["owner"].as_str(), r.body["currency"].as_str()),
        (Some("mallory"), Some("EUR"))
    );
    let b = events_of(app, "tenant-b/account-acc-1").await;
    assert!(b.iter().all(|e| e.metadata.tenant_id == "tenant-b"));
    // Nothing of either tenant landed in the default tenant.
    assert!(events_of(app, "account-acc-1").await.is_empty());
}
on_both_stores!([] tenants_are_apart_on_sqlite, tenants_are_apart_on_postgres, &tenants_are_apart);

/// Without credentials configured the server runs open, and the tenant header still scopes ids.
#[tokio::test]
async fn an_open_server_scopes_ids_by_the_tenant_header() {
    let app = TestApp::new().await;
    let open = |tenant: &'static str| {
        let app = &app;
        async move {
            app.send(
                Method::POST,
                "/accounts",
                &[("x-tenant-id", tenant)],
                Some(json!({"account_id": "a-1", "owner": "c", "currency": "USD"})),
            )
            .await
        }
    };
    assert_eq!(open("tenant-a").await.status, StatusCode::CREATED);
    let r = app
        .send(
            Method::POST,
            "/accounts/a-1/withdraw",
            &[("x-tenant-id", "tenant-b"), ("x-actor", "user:mallory")],
            Some(json!({"amount": "50.00", "currency": "USD"})),
        )
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "account_not_found", "");
    assert_eq!(open("tenant-b").await.status, StatusCode::CREATED);
    assert_eq!(app.head().await, 2);
}

async fn credentials_are_checked(app: &TestApp) {
    let key = app.key("default", "admin:ops", &[Role::Operator]).await;
    for (authorization, mentions) in [
        (None, "needs a credential"),
        (Some("Basic abc"), "Bearer"),
        (Some("Bearer efk_0000"), "unknown or revoked"),
        (Some("Bearer not-a-key"), "not an API key"),
    ] {
        let headers: Vec<(&str, &str)> = authorization
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        let r = app.send(Method::GET, "/projections", &headers, None).await;
        assert_error(&r, StatusCode::UNAUTHORIZED, "unauthenticated", mentions);
        assert_eq!(
            r.headers["www-authenticate"], "Bearer realm=\"eventfold\"",
            "{authorization:?}"
        );
    }
    let r = app
        .send_as(&key, Method::GET, "/projections", &[], None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // Liveness, readiness and the API document need no credential.
    for uri in ["/healthz", "/ready", "/openapi.json"] {
        assert_eq!(app.get(uri).await.status, StatusCode::OK, "{uri}");
    }
}
on_both_stores!([] credentials_are_checked_on_sqlite, credentials_are_checked_on_postgres, &credentials_are_checked);

async fn customers_reach_only_their_own(app: &TestApp) {
    let alice = app.key("shop", "user:alice", &[Role::Customer]).await;
    let bob = app.key("shop", "user:bob", &[Role::Customer]).await;
    let support = app.key("shop", "admin:s-1", &[Role::Support]).await;
    let post = |key: &str, uri: &str, body: Value| {
        let (key, uri) = (key.to_owned(), uri.to_owned());
        async move { app.send_as(&key, Method::POST, &uri, &[], Some(body)).await }
    };
    let r = post(
        &alice,
        "/accounts",
        json!({"account_id": "al", "owner": "alice", "currency": "USD"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = post(
        &bob,
        "/accounts",
        json!({"account_id": "b2", "owner": "alice", "currency": "USD"}),
    )
    .await;
    assert_error(&r, StatusCode::FORBIDDEN, "forbidden", "owner");
    let r = post(
        &bob,
        "/accounts/al/deposit",
        json!({"amount": "1.00", "currency": "USD"}),
    )
    .await;
    assert_error(&r, StatusCode::NOT_FOUND, "account_not_found", "");
    let r = app
        .send_as(&bob, Method::GET, "/accounts/al", &[], None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let order = json!({"order_id": "o-1", "customer_id": "alice", "store_id": "s", "currency": "USD",
        "lines": [{"sku": "cd", "quantity": 1, "amount": "9.99"}]});
    let r = post(&bob, "/orders", order.clone()).await;
    assert_error(&r, StatusCode::FORBIDDEN, "forbidden", "customer_id");
    assert_eq!(
        post(&alice, "/orders", order).await.status,
        StatusCode::CREATED
    );
    app.project().await;
    for uri in ["/orders/o-1", "/orders/o-1/history"] {
        let r = app.send_as(&bob, Method::GET, uri, &[], None).await;
        assert_error(&r, StatusCode::NOT_FOUND, "order_not_found", "");
        let r = app.send_as(&support, Method::GET, uri, &[], None).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}: {}", r.body);
    }
    let r = post(&bob, "/orders/o-1/cancel", json!({"reason": "x"})).await;
    assert_error(&r, StatusCode::NOT_FOUND, "order_not_found", "");
    let r = post(&support, "/orders/o-1/cancel", json!({"reason": "asked"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["last_actor"], "admin:s-1");
}
on_both_stores!([] customers_reach_only_their_own_on_sqlite, customers_reach_only_their_own_on_postgres, &customers_reach_only_their_own);

/// A service acts on behalf of a user: the user is the events' actor.
async fn a_service_acts_on_behalf_of_a_user(app: &TestApp) {
    let shop = app.key("shop", "service:shop-web", &[Role::Service]).await;
    let r = app
        .send_as(
            &shop,
            Method::POST,
            "/accounts",
            &[("x-actor", "user:789")],
            Some(json!({"account_id": "u789", "owner": "789", "currency": "USD"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let e = events_of(app, "shop/account-u789").await;
    assert_eq!(e[0].metadata.actor.as_str(), "user:789");
    assert_eq!(
        e[0].metadata.via.as_ref().map(|a| a.as_str()),
        Some("service:shop-web"),
        "the envelope records the service the user acted through"
    );
    // A principal acting itself leaves `via` empty.
    let teller = app.key("shop", "admin:teller", &[Role::Support]).await;
    let r = app
        .send_as(
            &teller,
            Method::POST,
            "/accounts",
            &[],
            Some(json!({"account_id": "t1", "owner": "1", "currency": "USD"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let t = events_of(app, "shop/account-t1").await;
    assert_eq!(t[0].metadata.actor.as_str(), "admin:teller");
    assert_eq!(t[0].metadata.via, None);
    // `via` is part of the hash chain: the stream verifies, and its stored row carries it.
    let rows = app
        .backend
        .events
        .read_stream_chain("shop/account-u789", 1, 10)
        .await
        .unwrap();
    assert_eq!(rows[0].via.as_deref(), Some(&b"service:shop-web"[..]));
    let report = eventfold_app::integrity::verify::verify(
        app.backend.events.clone(),
        &eventfold_app::integrity::verify::Target::All,
        None,
        &|_| {},
    )
    .await
    .unwrap();
    assert!(report.ok, "{report:?}");
    // On behalf of a user, the service reaches only that user's accounts.
    let r = app
        .send_as(
            &shop,
            Method::GET,
            "/accounts/u789",
            &[("x-actor", "user:790")],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = app
        .send_as(
            &shop,
            Method::GET,
            "/accounts/u789",
            &[("x-actor", "admin:root")],
            None,
        )
        .await;
    assert_error(&r, StatusCode::FORBIDDEN, "forbidden", "end users");
}
on_both_stores!([] a_service_acts_on_behalf_of_a_user_on_sqlite, a_service_acts_on_behalf_of_a_user_on_postgres, &a_service_acts_on_behalf_of_a_user);

/// Every route, every role: 403 exactly when the route does not accept the role.
async fn every_role_against_every_route(app: &TestApp) {
    let t = "roles";
    let mut keys = Vec::new();
    for role in Role::ALL {
        keys.push((
            role,
            app.key(t, &format!("user:{}", role.as_str()), &[role])
                .await,
        ));
    }
    use Role::{Auditor, Customer, Finance, Operator, Service, Support};
    let amount = json!({"amount": "1.00", "currency": "USD"});
    let routes: Vec<(Method, &str, Option<Value>, Vec<Role>)> = vec![
        (
            Method::POST,
            "/accounts",
            Some(json!({"owner": "nobody", "currency": "USD"})),
            vec![Customer, Service, Support],
        ),
        (
            Method::POST,
            "/accounts/x/deposit",
            Some(amount.clone()),
            vec![Customer, Service],
        ),
        (
            Method::POST,
            "/accounts/x/withdraw",
            Some(amount.clone()),
            vec![Customer, Service],
        ),
        (
            Method::GET,
            "/accounts/x",
            None,
            vec![Customer, Service, Support, Finance, Auditor],
        ),
        (
            Method::GET,
            "/accounts/x/history",
            None,
            vec![Customer, Service, Support, Finance, Auditor],
        ),
        (
            Method::GET,
            "/balances/x",
            None,
            vec![Customer, Service, Support, Finance, Auditor],
        ),
        (
            Method::POST,
            "/orders",
            Some(json!({"customer_id": "nobody", "store_id": "s", "currency": "USD", "lines": []})),
            vec![Customer, Service, Support],
        ),
        (
            Method::POST,
            "/orders/x/pay",
            Some(amount),
            vec![Customer, Service],
        ),
        (
            Method::POST,
            "/orders/x/confirm",
            Some(json!({})),
            vec![Support],
        ),
        (
            Method::POST,
            "/orders/x/ship",
            Some(json!({})),
            vec![Support],
        ),
        (
            Method::POST,
            "/orders/x/complete",
            Some(json!({})),
            vec![Support],
        ),
        (
            Method::POST,
            "/orders/x/cancel",
            Some(json!({})),
            vec![Customer, Service, Support],
        ),
        (
            Method::POST,
            "/orders/x/refund",
            Some(json!({})),
            vec![Support],
        ),
        (
            Method::GET,
            "/orders/x",
            None,
            vec![Customer, Service, Support, Finance, Auditor],
        ),
        (
            Method::GET,
            "/orders/x/history",
            None,
            vec![Customer, Service, Support, Finance, Auditor],
        ),
        (
            Method::POST,
            "/flash-sales",
            Some(
                json!({"sku": "x", "stock": 1, "per_buyer_limit": 1, "unit_price": "1.00", "currency": "USD"}),
            ),
            vec![Operator],
        ),
        (Method::GET, "/flash-sales/x", None, Role::ALL.to_vec()),
        (
            Method::POST,
            "/flash-sales/x/purchases",
            Some(json!({"buyer": "nobody", "quantity": 1})),
            vec![Customer, Service],
        ),
        (
            Method::GET,
            "/sales/daily?store=s",
            None,
            vec![Finance, Auditor, Operator],
        ),
        (
            Method::GET,
            "/sales/realtime?store=s",
            None,
            vec![Finance, Auditor, Operator],
        ),
        (
            Method::GET,
            "/sales/corrections?store=s",
            None,
            vec![Finance, Auditor, Operator],
        ),
        (
            Method::GET,
            "/sales/corrections/stream?store=s&follow=false",
            None,
            vec![Finance, Auditor, Operator],
        ),
        (
            Method::POST,
            "/stores/x/uploads",
            None,
            vec![Service, Operator],
        ),
        (Method::GET, "/projections", None, vec![Operator, Auditor]),
        (
            Method::POST,
            "/projections/x/activate",
            Some(json!({"version": 1, "reason": "roll back"})),
            vec![Operator],
        ),
        (Method::GET, "/metrics", None, vec![Operator]),
        (
            Method::GET,
            "/sales/daily/explain?store=s&date=2020-01-01",
            None,
            vec![Finance, Auditor, Operator],
        ),
        (
            Method::POST,
            "/projections/x/rebuild",
            Some(json!({"reason": "rebuild"})),
            vec![Operator],
        ),
        (Method::GET, "/whoami", None, Role::ALL.to_vec()),
        (Method::GET, "/operations", None, vec![Operator, Auditor]),
        (
            Method::POST,
            "/chain/verify",
            Some(json!({})),
            vec![Operator, Auditor],
        ),
        (
            Method::GET,
            "/stores/x/periods",
            None,
            vec![Finance, Auditor, Operator],
        ),
        (
            Method::POST,
            "/stores/x/periods",
            Some(json!({"from": "2020-01"})),
            vec![Finance],
        ),
        (
            Method::POST,
            "/stores/x/periods/2020-01/soft-close",
            Some(json!({"reason": "month end"})),
            vec![Finance],
        ),
        (
            Method::POST,
            "/stores/x/periods/2020-01/reopen",
            Some(json!({"reason": "late invoices"})),
            vec![Finance],
        ),
        (
            Method::POST,
            "/stores/x/periods/2020-01/close",
            Some(json!({"reason": "month end"})),
            vec![Finance],
        ),
        (Method::GET, "/exceptions", None, vec![Finance, Auditor]),
        (
            Method::GET,
            "/stores/x/calendar",
            None,
            vec![Finance, Auditor, Operator],
        ),
        (
            Method::POST,
            "/stores/x/calendar",
            Some(json!({"zone": "UTC"})),
            vec![Operator, Finance],
        ),
        (
            Method::GET,
            "/trending?store=s",
            None,
            vec![Finance, Auditor, Operator, Support],
        ),
        (
            Method::POST,
            "/exceptions/x/approve",
            Some(json!({"reason": "paid"})),
            vec![Finance],
        ),
        (
            Method::POST,
            "/exceptions/x/reject",
            Some(json!({"reason": "duplicate"})),
            vec![Finance],
        ),
    ];
    for (method, uri, body, allowed) in &routes {
        for (role, key) in &keys {
            let r = app
                .send_as(
                    key,
                    method.clone(),
                    uri,
                    &[("idempotency-key", "k-1")],
                    body.clone(),
                )
                .await;
            let message = r.body["message"].as_str().unwrap_or_default();
            if allowed.contains(role) {
                // Let in (a customer may still be refused a resource that is not its own).
                assert!(
                    r.status != StatusCode::UNAUTHORIZED
                        && !(r.status == StatusCode::FORBIDDEN
                            && message.contains("needs the role")),
                    "{method} {uri} as {role}: {} {}",
                    r.status,
                    r.body
                );
            } else {
                assert_eq!(
                    r.status,
                    StatusCode::FORBIDDEN,
                    "{method} {uri} as {role}: {}",
                    r.body
                );
                assert!(message.contains("needs the role"), "{message}");
                for needed in allowed {
                    assert!(message.contains(needed.as_str()), "{message}");
                }
            }
        }
    }
    // The OpenAPI document names exactly these roles for every route, and lists every route.
    let doc = app.get("/openapi.json").await.body;
    let mut documented = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if let Some(roles) = op.get("x-eventfold-roles") {
                documented += 1;
                let (m, _, _, allowed) = routes
                    .iter()
                    .find(|(m, uri, _, _)| {
                        m.as_str().eq_ignore_ascii_case(method) && template(uri) == *path
                    })
                    .unwrap_or_else(|| panic!("{method} {path} is not in this test's table"));
                let mut want: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
                let mut got: Vec<&str> = roles
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r.as_str().unwrap())
                    .collect();
                want.sort_unstable();
                got.sort_unstable();
                assert_eq!(got, want, "{m} {path}");
                assert!(op["security"][0].get("bearer").is_some(), "{m} {path}");
            }
        }
    }
    assert_eq!(
        documented,
        routes.len(),
        "every route of the table is documented with roles"
    );
}

/// `/accounts/x/deposit?store=s` -> `/accounts/{id}/deposit` (`{sku}` under `/flash-sales`,
/// `{store}` under `/stores`, `{name}` under `/projections`, and a month segment such as
/// `2020-01` -> `{period}`).
fn template(uri: &str) -> String {
    let path = uri.split('?').next().unwrap_or(uri);
    let param = if path.starts_with("/flash-sales") {
        "{sku}"
    } else if path.starts_with("/stores") {
        "{store}"
    } else if path.starts_with("/projections") {
        "{name}"
    } else {
        "{id}"
    };
    path.split('/')
        .map(|s| match s {
            "x" => param,
            s if s.len() == 7 && s.as_bytes()[4] == b'-' => "{period}",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}
on_both_stores!([] every_role_against_every_route_on_sqlite, every_role_against_every_route_on_postgres, &every_role_against_every_route);

/// A key revoked while a server runs is refused by it within a second.
async fn a_revoked_key_is_refused_within_a_second(app: &TestApp) {
    let key = app.key("default", "admin:ops", &[Role::Operator]).await;
    let served = app.serve(eventfold_app::runtime::Config::default()).await;
    let client = reqwest::Client::new();
    let get = || {
        client
            .get(format!("{}/projections", served.base))
            .bearer_auth(&key)
            .send()
    };
    assert_eq!(get().await.unwrap().status(), StatusCode::OK);
    let id = eventfold_app::identity::list_keys(app.backend.read_models.as_ref())
        .await
        .unwrap()
        .into_iter()
        .next()
        .unwrap()
        .key_id;
    let revoked_at = Instant::now();
    eventfold_app::identity::revoke_key(
        &app.app.service,
        "default",
        &id,
        Some("leaked".into()),
        eventfold_core::Actor::parse("admin:test").unwrap(),
    )
    .await
    .unwrap();
    loop {
        let status = get().await.unwrap().status();
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert_eq!(status, StatusCode::OK);
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "the revoked key still worked after a second"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Its lifecycle is on record: who created and who revoked it, never the key.
    let events = events_of(app, &format!("apikey-{id}")).await;
    let who: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.event_type.as_str(), e.metadata.actor.as_str()))
        .collect();
    assert_eq!(
        who,
        [
            ("ApiKeyCreated", "admin:test"),
            ("ApiKeyRevoked", "admin:test")
        ]
    );
    assert!(events.iter().all(|e| !e.payload.contains(&key)));
    served.stop().await;
}
on_both_stores!([] a_revoked_key_is_refused_within_a_second_on_sqlite, a_revoked_key_is_refused_within_a_second_on_postgres, &a_revoked_key_is_refused_within_a_second);

/// A principal over its role's rate gets 429 with `Retry-After`; another principal, and a role
/// without a limit, are not held back; purchases have their own limit.
async fn rate_limits_hold_each_principal_to_its_role(app: TestApp) {
    use eventfold_http::rate_limit::{RateLimitConfig, RateLimits};
    use std::num::NonZeroU32;
    let alice = app.key("shop", "user:alice", &[Role::Customer]).await;
    let bob = app.key("shop", "user:bob", &[Role::Customer]).await;
    let ops = app.key("shop", "admin:ops", &[Role::Operator]).await;
    let n = |v| NonZeroU32::new(v).unwrap();
    let app = app.with_auth(eventfold_http::AuthConfig {
        limits: Some(std::sync::Arc::new(RateLimits::new(&RateLimitConfig {
            per_role: vec![(Role::Customer, n(3))],
            purchase: Some(n(1)),
        }))),
        ..Default::default()
    });
    let get = |key: &str| {
        let key = key.to_owned();
        let app = &app;
        async move {
            app.send_as(&key, Method::GET, "/accounts/none", &[], None)
                .await
        }
    };
    for _ in 0..3 {
        assert_eq!(get(&alice).await.status, StatusCode::NOT_FOUND);
    }
    let r = get(&alice).await;
    assert_error(
        &r,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "retry after",
    );
    let wait: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait), "{wait}");
    assert_eq!(
        get(&bob).await.status,
        StatusCode::NOT_FOUND,
        "bob has his own bucket"
    );
    for _ in 0..10 {
        let r = app
            .send_as(&ops, Method::GET, "/projections", &[], None)
            .await;
        assert_eq!(r.status, StatusCode::OK, "operators have no limit here");
    }
    let purchase = |attempt: &'static str| {
        let app = &app;
        let bob = bob.clone();
        async move {
            app.send_as(
                &bob,
                Method::POST,
                "/flash-sales/none/purchases",
                &[("idempotency-key", attempt)],
                Some(json!({"buyer": "bob", "quantity": 1})),
            )
            .await
        }
    };
    assert_eq!(purchase("a-1").await.status, StatusCode::NOT_FOUND);
    let r = purchase("a-2").await;
    assert_error(
        &r,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "purchase attempts",
    );
    assert_eq!(
        app.head().await,
        3,
        "only the three keys were ever appended"
    );
}
on_both_stores!([] rate_limits_hold_each_principal_to_its_role_on_sqlite, rate_limits_hold_each_principal_to_its_role_on_postgres, rate_limits_hold_each_principal_to_its_role);

/// The second fence on PostgreSQL: inside a tenant's fence, a query that forgets the tenant
/// filter still sees only that tenant's events and read-model rows, and the store's own reads
/// of another tenant's stream or documents find nothing.
#[tokio::test]
async fn postgres_row_level_security_fences_a_query_that_forgets_the_tenant() {
    use eventfold_app::backend::StoreUrl;
    use eventfold_core::{tenant, EventStore, ReadModelStore};
    let app = TestApp::postgres().await;
    let a = app.key("tenant-a", "admin:a", &[Role::Support]).await;
    let b = app.key("tenant-b", "admin:b", &[Role::Support]).await;
    for key in [&a, &b] {
        let r = app
            .send_as(
                key,
                Method::POST,
                "/accounts",
                &[],
                Some(json!({"account_id": "same", "owner": "o", "currency": "USD"})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    app.project().await;
    let StoreUrl::Postgres(url) = &app.backend.url else {
        panic!("a postgres app")
    };
    let store = eventfold_postgres::PostgresStore::connect(url)
        .await
        .unwrap();

    let mut tx = store.fenced("tenant-a").await.unwrap();
    let tenants: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT tenant_id FROM events ORDER BY 1")
            .fetch_all(&mut *tx)
            .await
            .unwrap();
    assert_eq!(tenants, ["tenant-a"]);
    let keys: Vec<String> = sqlx::query_scalar("SELECT key FROM read_models ORDER BY key")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert!(!keys.is_empty());
    assert!(keys.iter().all(|k| k.starts_with("tenant-a/")), "{keys:?}");
    drop(tx);
    // Unfenced, the same query sees both tenants (and the fence was what hid one).
    let all: Vec<String> = sqlx::query_scalar("SELECT DISTINCT tenant_id FROM events ORDER BY 1")
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert_eq!(all, ["tenant-a", "tenant-b"]);

    let read = |stream: &'static str| {
        let store = store.clone();
        async move {
            tenant::fenced("tenant-a", async move {
                store.read_stream(stream, 1, 100).await.unwrap().len()
            })
            .await
        }
    };
    assert_eq!(read("tenant-a/account-same").await, 1);
    assert_eq!(
        read("tenant-b/account-same").await,
        0,
        "another tenant's stream"
    );
    let docs = tenant::fenced(
        "tenant-a",
        store.range_docs("api_keys", "", "\u{10FFFF}", 100),
    )
    .await
    .unwrap();
    assert!(!docs.is_empty());
    assert!(
        docs.iter().all(|(k, _)| k.starts_with("tenant-a/")),
        "{docs:?}"
    );
}
