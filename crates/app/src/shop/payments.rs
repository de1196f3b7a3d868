//! Payments: the provider port the payment saga calls, its HTTP client, and the signed
//! callbacks the provider sends back.
//!
//! **Provider API** (what [`HttpProvider`] calls; `eventfold simulate flash-sale` runs a sandbox
//! that implements it). Every call is a `POST` with an `Idempotency-Key` header
//! (`{step}:{order_id}`, e.g. `capture:flash-1a2b`; a provider must apply a key once) and a JSON
//! body `{order_id, customer_id, amount, currency, reference}` (`amount` a decimal string,
//! `reference` the authorization id for captures and releases, the charge id for refunds):
//!
//! | step | path | answers |
//! |---|---|---|
//! | ReserveFunds | `/authorizations` | 202 `{reference}`: the buyer authorizes; the result comes by callback |
//! | CapturePayment | `/captures` | 200 `{reference}` (charge id), or 402 `{reason}` declined |
//! | SendReceipt | `/receipts` | 200 |
//! | ReleaseFunds | `/releases` | 200 |
//! | RefundPayment | `/refunds` | 200 |
//!
//! 402, 409 and 422 are refusals for good; any other status, a timeout or a connection failure is
//! transient and the saga tries again.
//!
//! **Callbacks** arrive at `POST /payments/callbacks` with an `Idempotency-Key` (the provider's
//! event id) and the header `Eventfold-Signature: t={unix seconds},v1={hex HMAC-SHA256(secret,
//! "{t}.{body}")}` (the scheme Stripe uses). A signature that is missing, malformed or wrong is a
//! 401 and changes nothing; so is one more than [`SIGNATURE_TOLERANCE_SECS`] away from now (an old
//! callback replayed); a replay inside the window finds its idempotency key and changes nothing.

use std::time::Duration;

use async_trait::async_trait;
use eventfold_domain::payment_saga::{SagaStep, StepResult};
use eventfold_domain::Money;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// One call of a saga step to the provider.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRequest {
    /// The step (not sent: it picks the path).
    #[serde(skip)]
    pub step: SagaStep,
    /// The order it is for.
    pub order_id: String,
    /// The buyer.
    pub customer_id: String,
    /// The amount, a decimal string.
    pub amount: String,
    /// ISO 4217 code.
    pub currency: String,
    /// The authorization id (captures, releases) or charge id (refunds).
    pub reference: Option<String>,
    /// `{step}:{order_id}` (sent as the `Idempotency-Key` header).
    #[serde(skip)]
    pub idempotency_key: String,
}

impl StepRequest {
    /// The request for `step` of the order's saga.
    pub fn new(
        step: SagaStep,
        order_id: &str,
        customer_id: &str,
        amount: Money,
        reference: Option<String>,
    ) -> Self {
        Self {
            step,
            order_id: order_id.to_owned(),
            customer_id: customer_id.to_owned(),
            amount: amount.amount.to_string(),
            currency: amount.currency.code().to_owned(),
            reference,
            idempotency_key: format!("{}:{order_id}", step.key_prefix()),
        }
    }
}

/// The payment provider, as the saga sees it. Calls must be idempotent by
/// [`StepRequest::idempotency_key`].
#[async_trait]
pub trait PaymentProvider: Send + Sync + 'static {
    /// Runs one step; never fails otherwise than through the [`StepResult`].
    async fn call(&self, request: &StepRequest) -> StepResult;
}

/// The provider API over HTTP (see the module docs).
pub struct HttpProvider {
    client: reqwest::Client,
    base: String,
}

/// A provider's JSON answer.
#[derive(Debug, Default, Deserialize)]
struct ProviderAnswer {
    reference: Option<String>,
    reason: Option<String>,
}

/// The path of a step under the provider's base URL.
pub fn step_path(step: SagaStep) -> &'static str {
    match step {
        SagaStep::ReserveFunds => "/authorizations",
        SagaStep::CapturePayment => "/captures",
        SagaStep::SendReceipt => "/receipts",
        SagaStep::ReleaseFunds => "/releases",
        SagaStep::RefundPayment => "/refunds",
    }
}

impl HttpProvider {
    /// A client of the provider at `base_url` (e.g. `http://127.0.0.1:9000`); each call may take
    /// at most `timeout`.
    ///
    /// # Errors
    /// The HTTP client cannot be built.
    pub fn new(base_url: &str, timeout: Duration) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .pool_max_idle_per_host(64)
            .build()?;
        Ok(Self {
            client,
            base: base_url.trim_end_matches('/').to_owned(),
        })
    }
}

#[async_trait]
impl PaymentProvider for HttpProvider {
    async fn call(&self, request: &StepRequest) -> StepResult {
        let url = format!("{}{}", self.base, step_path(request.step));
        let sent = self
            .client
            .post(&url)
            .header("Idempotency-Key", &request.idempotency_key)
            .json(request)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => return StepResult::Transient(format!("POST {url}: {e}")),
        };
        let status = response.status().as_u16();
        let answer: ProviderAnswer = response.json().await.unwrap_or_default();
        let reason = || {
            answer
                .reason
                .clone()
                .unwrap_or_else(|| format!("provider answered {status}"))
        };
        match status {
            200 | 201 => StepResult::Done(
                answer
                    .reference
                    .clone()
                    .unwrap_or_else(|| request.idempotency_key.clone()),
            ),
            202 => StepResult::Accepted(
                answer
                    .reference
                    .clone()
                    .unwrap_or_else(|| request.idempotency_key.clone()),
            ),
            402 | 409 | 422 => StepResult::Refused(reason()),
            _ => StepResult::Transient(reason()),
        }
    }
}

/// The callback signature header.
pub const SIGNATURE_HEADER: &str = "eventfold-signature";

/// How far (seconds) a callback's signed time may be from now.
pub const SIGNATURE_TOLERANCE_SECS: i64 = 300;

/// Why a callback's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No signature header.
    #[error("the {SIGNATURE_HEADER} header is missing")]
    Missing,
    /// The header is not `t=...,v1=...`.
    #[error("the {SIGNATURE_HEADER} header is malformed: {0}")]
    Malformed(String),
    /// The HMAC does not match the body.
    #[error("the signature does not match the body")]
    Mismatch,
    /// Signed too long ago (or in the future): a replay.
    #[error(
        "the signature is {age_secs} s from now; at most {SIGNATURE_TOLERANCE_SECS} s is accepted"
    )]
    Stale {
        /// Seconds between the signed time and now.
        age_secs: i64,
    },
}

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC accepts any key");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The signature header's value for `body` signed at `timestamp` (Unix seconds).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let tag = mac(secret, timestamp, body).finalize().into_bytes();
    format!("t={timestamp},v1={}", hex::encode(tag))
}

/// Checks a callback's signature header against its body at `now_secs` (Unix seconds), in
/// constant time.
///
/// # Errors
/// [`SignatureError`] naming what is wrong.
pub fn verify(
    secret: &[u8],
    header: Option<&str>,
    body: &[u8],
    now_secs: i64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let (mut t, mut v1) = (None, None);
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v),
            Some(("v1", v)) => v1 = Some(v),
            _ => {}
        }
    }
    let t: i64 = t
        .ok_or_else(|| SignatureError::Malformed("no t=".into()))?
        .parse()
        .map_err(|_| SignatureError::Malformed("t is not a number of seconds".into()))?;
    let v1 = v1.ok_or_else(|| SignatureError::Malformed("no v1=".into()))?;
    let tag = hex::decode(v1)
        .ok()
        .filter(|t| t.len() == 32)
        .ok_or_else(|| SignatureError::Malformed("v1 is not 64 hex digits".into()))?;
    mac(secret, t, body)
        .verify_slice(&tag)
        .map_err(|_| SignatureError::Mismatch)?;
    let age_secs = now_secs.saturating_sub(t);
    if age_secs.abs() > SIGNATURE_TOLERANCE_SECS {
        return Err(SignatureError::Stale { age_secs });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_refuse_forgeries_tampering_and_replays() {
        let secret = b"whsec_test";
        let body = br#"{"type":"captured","order_id":"o-1","charge_id":"ch-1"}"#;
        let header = sign(secret, 1_000, body);
        assert_eq!(verify(secret, Some(&header), body, 1_010), Ok(()));
        assert_eq!(
            verify(b"other", Some(&header), body, 1_010),
            Err(SignatureError::Mismatch)
        );
        let mut tampered = body.to_vec();
        tampered[30] ^= 1;
        assert_eq!(
            verify(secret, Some(&header), &tampered, 1_010),
            Err(SignatureError::Mismatch)
        );
        // The time is signed too: moving it breaks the signature.
        let moved = header.replace("t=1000", "t=1400");
        assert_eq!(
            verify(secret, Some(&moved), body, 1_400),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(
                secret,
                Some(&header),
                body,
                1_000 + SIGNATURE_TOLERANCE_SECS + 1
            ),
            Err(SignatureError::Stale { age_secs: 301 })
        );
        assert_eq!(
            verify(secret, None, body, 1_000),
            Err(SignatureError::Missing)
        );
        for bad in ["v1=00", "t=x,v1=00", "t=1000", "t=1000,v1=zz"] {
            assert!(
                matches!(
                    verify(secret, Some(bad), body, 1_000),
                    Err(SignatureError::Malformed(_))
                ),
                "{bad}"
            );
        }
    }
}
