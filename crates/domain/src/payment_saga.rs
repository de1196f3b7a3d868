//! The payment saga (orchestration): ReserveFunds -> CapturePayment -> SendReceipt, with the
//! compensations ReleaseFunds and RefundPayment. Stream `paysaga-{order_id}`: the saga's state is
//! its events, so a restarted orchestrator picks every saga up where it stood.
//!
//! The state is a set of facts reported by the provider (funds reserved, reservation failed,
//! captured, declined, released, refunded, receipt sent) plus the orchestrator's own records
//! (which step is being tried, which attempt, until when). A fact reported twice is recorded once,
//! and [`next_action`] decides from the facts, not from the order they arrived in, so a provider
//! callback that comes twice, late or before the request it answers leaves the same outcome. Two
//! reports that contradict each other are settled in favour of the money: funds reported reserved
//! after the saga failed are released, a charge reported after the order was cancelled is refunded.
//!
//! Time never comes from a clock here: commands carry `now_ms` (ms since the Unix epoch, UTC).
//!
//! One file (about 700 lines besides its tests) because the state, its events and the decision
//! ([`next_action`]) are read together: each rule of the decision refers to the facts the events
//! record.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use eventfold_core::Aggregate;

use crate::money::Money;
use crate::{validate_id, validate_reason, DomainError, Refusal};

/// A step of the saga: three forward steps and two compensations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SagaStep {
    /// Ask the provider to hold the order's amount; the buyer's authorization arrives by callback.
    ReserveFunds,
    /// Take the held amount.
    CapturePayment,
    /// Send the buyer a receipt.
    SendReceipt,
    /// Compensation of ReserveFunds: let the held amount go.
    ReleaseFunds,
    /// Compensation of CapturePayment: pay the amount back.
    RefundPayment,
}

impl SagaStep {
    /// The step's name in idempotency keys and metrics, e.g. `capture`.
    pub fn key_prefix(self) -> &'static str {
        match self {
            Self::ReserveFunds => "reserve",
            Self::CapturePayment => "capture",
            Self::SendReceipt => "receipt",
            Self::ReleaseFunds => "release",
            Self::RefundPayment => "refund",
        }
    }

    /// How many attempts the step gets before it fails for good. Compensations never give up
    /// (money the shop holds wrongly must go back); their attempts are spaced by the backoff cap.
    pub fn max_attempts(self) -> Option<u32> {
        match self {
            Self::ReserveFunds | Self::CapturePayment | Self::SendReceipt => Some(5),
            Self::ReleaseFunds | Self::RefundPayment => None,
        }
    }
}

/// How a saga ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaOutcome {
    /// Charged, receipt sent (or given up on), the order paid.
    Completed,
    /// Nothing was charged and nothing is held: the order is cancelled.
    Failed,
    /// Money was held or taken and has been given back: the order is cancelled.
    Compensated,
}

/// What the provider reports (by callback, or in the reply to a step's call).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProviderReport {
    /// The buyer authorized the payment: the amount is held.
    FundsReserved {
        /// The provider's authorization id.
        authorization_id: String,
    },
    /// The buyer's authorization failed (declined card, abandoned page).
    ReservationFailed {
        /// The provider's reason.
        reason: String,
    },
    /// The held amount was taken.
    Captured {
        /// The provider's charge id.
        charge_id: String,
    },
}

/// One try of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Attempt {
    /// The step.
    pub step: SagaStep,
    /// 1 for the first try.
    pub attempt: u32,
    /// When the try counts as timed out (ms since the Unix epoch).
    pub deadline_ms: i64,
}

/// The saga's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PaymentSaga {
    /// Set when started.
    pub order_id: Option<String>,
    /// The buyer.
    pub customer_id: String,
    /// The order's total.
    pub amount: Option<Money>,
    /// Steps done, with the provider's reference (authorization, charge, receipt... id).
    pub done: BTreeMap<SagaStep, String>,
    /// Steps the provider accepted and will answer by callback (ReserveFunds).
    pub accepted: BTreeMap<SagaStep, String>,
    /// Steps that failed for good, with the reason.
    pub failed_for_good: BTreeMap<SagaStep, String>,
    /// Attempts made per step.
    pub attempts: BTreeMap<SagaStep, u32>,
    /// When a failed step may be tried again (ms), per step.
    pub retry_at_ms: BTreeMap<SagaStep, i64>,
    /// The try in flight, if any.
    pub in_flight: Option<Attempt>,
    /// `PaymentCompleted` was recorded.
    pub completed: bool,
    /// `PaymentFailed` was recorded, with its reason.
    pub failed: Option<String>,
    /// Set when the saga ended.
    pub ended: Option<SagaOutcome>,
}

/// What the orchestrator (or a provider callback) asks of a saga.
#[derive(Debug, Clone, PartialEq)]
pub enum PaymentSagaCommand {
    /// Starts the saga for an order (a no-op when started for the same order and amount).
    Start {
        /// The order it is for.
        order_id: String,
        /// The buyer.
        customer_id: String,
        /// The order's total.
        amount: Money,
    },
    /// Records a provider report; a fact already known is a no-op.
    Report(ProviderReport),
    /// Records that a try of `step` begins now and times out at `now_ms + timeout_ms`.
    BeginStep {
        /// The saga step.
        step: SagaStep,
        /// Now (ms since the Unix epoch).
        now_ms: i64,
        /// How long the try may take.
        timeout_ms: i64,
    },
    /// Records what a try of `step` came to; a result for a try that is no longer in flight
    /// (it timed out, another worker tried again) is ignored.
    EndStep {
        /// The saga step.
        step: SagaStep,
        /// Which try of the step (1 for the first).
        attempt: u32,
        /// What the provider answered (done, accepted, refused, or no answer).
        result: StepResult,
        /// Now (ms since the Unix epoch).
        now_ms: i64,
    },
    /// Records `PaymentCompleted`.
    Complete,
    /// Records `PaymentFailed`.
    Fail {
        /// Why, as the actor gave it (at most 500 characters, no control characters).
        reason: String,
    },
    /// Records the end.
    End {
        /// How it ended.
        outcome: SagaOutcome,
    },
}

/// What one try of a step came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepResult {
    /// Done; the provider's reference.
    Done(String),
    /// The provider took the request and will answer by callback; its reference.
    Accepted(String),
    /// The provider refused for good (a declined capture).
    Refused(String),
    /// It may work later (timeout, provider unavailable).
    Transient(String),
}

/// What happened in a payment saga.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaymentSagaEvent {
    /// The saga began.
    PaymentSagaStarted {
        /// The order it is for.
        order_id: String,
        /// The buyer.
        customer_id: String,
        /// The amount to charge.
        amount: Money,
    },
    /// A try of a step began.
    StepStarted {
        /// The saga step.
        step: SagaStep,
        /// 1 for the first try.
        attempt: u32,
        /// When it times out (ms since the Unix epoch).
        deadline_ms: i64,
    },
    /// The provider took a request and will answer by callback.
    StepAccepted {
        /// The saga step.
        step: SagaStep,
        /// The provider's reference.
        reference: String,
    },
    /// A step is done.
    StepSucceeded {
        /// The saga step.
        step: SagaStep,
        /// The provider's reference.
        reference: String,
    },
    /// A try of a step failed.
    StepFailed {
        /// The saga step.
        step: SagaStep,
        /// The try (0 for a failure the provider reported by callback).
        attempt: u32,
        /// Why, as the actor gave it (at most 500 characters, no control characters).
        reason: String,
        /// When to try again (ms since the Unix epoch); `None`: failed for good.
        retry_at_ms: Option<i64>,
    },
    /// The payment is complete (choreography: the order is paid next).
    PaymentCompleted {
        /// The amount charged.
        amount: Money,
    },
    /// The payment failed (choreography: the order is cancelled and its stock released next).
    PaymentFailed {
        /// Why, as the actor gave it (at most 500 characters, no control characters).
        reason: String,
    },
    /// The saga is over.
    PaymentSagaEnded {
        /// How it ended: completed, or failed and compensated.
        outcome: SagaOutcome,
    },
}

/// Why a saga command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PaymentSagaError {
    /// Any command but `Start` or `Report` before the saga started.
    #[error("the payment saga has not started")]
    NotStarted,
    /// `Start` again for another order or amount.
    #[error("the payment saga was started on other terms")]
    StartedDifferently,
    /// A step or end the saga's state does not allow.
    #[error("{0}")]
    NotNow(String),
    /// A bad value; the message names the field.
    #[error("{0}")]
    Invalid(String),
}

impl DomainError for PaymentSagaError {
    fn code(&self) -> &'static str {
        match self {
            Self::NotStarted => "saga_not_started",
            Self::StartedDifferently => "saga_started_differently",
            Self::NotNow(_) => "saga_step_not_allowed",
            Self::Invalid(_) => "invalid_saga_command",
        }
    }
    fn refusal(&self) -> Refusal {
        match self {
            Self::NotStarted => Refusal::NotFound,
            Self::StartedDifferently | Self::NotNow(_) => Refusal::Conflict,
            Self::Invalid(_) => Refusal::Invalid,
        }
    }
}

/// Backoff before try `attempt + 1`: 200 ms doubling, at most 10 s.
pub fn backoff_ms(attempt: u32) -> i64 {
    200_i64
        .saturating_mul(1_i64 << attempt.saturating_sub(1).min(6))
        .min(10_000)
}

impl PaymentSaga {
    /// Whether the provider reported `step` done.
    pub fn is_done(&self, step: SagaStep) -> bool {
        self.done.contains_key(&step)
    }

    fn report(&self, report: ProviderReport) -> Result<Vec<PaymentSagaEvent>, PaymentSagaError> {
        let check = |field: &str, v: &str| {
            if v.is_empty() || v.len() > 200 || v.chars().any(char::is_control) {
                Err(PaymentSagaError::Invalid(format!(
                    "{field} must be 1 to 200 characters without control characters"
                )))
            } else {
                Ok(())
            }
        };
        Ok(match report {
            ProviderReport::FundsReserved { authorization_id } => {
                check("authorization_id", &authorization_id)?;
                if self.is_done(SagaStep::ReserveFunds) {
                    vec![]
                } else {
                    vec![PaymentSagaEvent::StepSucceeded {
                        step: SagaStep::ReserveFunds,
                        reference: authorization_id,
                    }]
                }
            }
            ProviderReport::ReservationFailed { reason } => {
                validate_reason(&reason).map_err(PaymentSagaError::Invalid)?;
                // Funds reported held win over a failure reported after (or before) them.
                if self.is_done(SagaStep::ReserveFunds)
                    || self.failed_for_good.contains_key(&SagaStep::ReserveFunds)
                {
                    vec![]
                } else {
                    vec![PaymentSagaEvent::StepFailed {
                        step: SagaStep::ReserveFunds,
                        attempt: 0,
                        reason,
                        retry_at_ms: None,
                    }]
                }
            }
            ProviderReport::Captured { charge_id } => {
                check("charge_id", &charge_id)?;
                if self.is_done(SagaStep::CapturePayment) {
                    vec![]
                } else {
                    vec![PaymentSagaEvent::StepSucceeded {
                        step: SagaStep::CapturePayment,
                        reference: charge_id,
                    }]
                }
            }
        })
    }

    fn end_step(
        &self,
        step: SagaStep,
        attempt: u32,
        result: StepResult,
        now_ms: i64,
    ) -> Vec<PaymentSagaEvent> {
        let current = self
            .in_flight
            .is_some_and(|a| a.step == step && a.attempt == attempt);
        match result {
            // A success is a fact whenever it arrives (a late answer to a timed-out try).
            StepResult::Done(reference) if !self.is_done(step) => {
                vec![PaymentSagaEvent::StepSucceeded { step, reference }]
            }
            StepResult::Done(_) => vec![],
            _ if !current => vec![],
            StepResult::Accepted(reference) => {
                vec![PaymentSagaEvent::StepAccepted { step, reference }]
            }
            StepResult::Refused(reason) => vec![PaymentSagaEvent::StepFailed {
                step,
                attempt,
                reason,
                retry_at_ms: None,
            }],
            StepResult::Transient(reason) => {
                let out_of_tries = step.max_attempts().is_some_and(|max| attempt >= max);
                vec![PaymentSagaEvent::StepFailed {
                    step,
                    attempt,
                    reason,
                    retry_at_ms: (!out_of_tries).then(|| now_ms + backoff_ms(attempt)),
                }]
            }
        }
    }
}

impl Aggregate for PaymentSaga {
    type Command = PaymentSagaCommand;
    type Event = PaymentSagaEvent;
    type Error = PaymentSagaError;
    const CATEGORY: &'static str = "paysaga";

    fn handle(
        &self,
        command: PaymentSagaCommand,
    ) -> Result<Vec<PaymentSagaEvent>, PaymentSagaError> {
        use PaymentSagaCommand as C;
        use PaymentSagaEvent as E;
        if let C::Report(report) = command {
            // A callback may arrive before the saga's start is recorded: the fact is kept.
            return self.report(report);
        }
        let C::Start {
            order_id,
            customer_id,
            amount,
        } = command
        else {
            if self.order_id.is_none() {
                return Err(PaymentSagaError::NotStarted);
            }
            return self.handle_started(command);
        };
        validate_id("order_id", &order_id).map_err(PaymentSagaError::Invalid)?;
        if amount.amount.is_sign_negative() {
            return Err(PaymentSagaError::Invalid(
                "amount must not be negative".into(),
            ));
        }
        match &self.order_id {
            Some(o) if *o == order_id && self.amount == Some(amount) => Ok(vec![]),
            Some(_) => Err(PaymentSagaError::StartedDifferently),
            None => Ok(vec![E::PaymentSagaStarted {
                order_id,
                customer_id,
                amount,
            }]),
        }
    }

    fn apply(mut self, event: &PaymentSagaEvent) -> Self {
        use PaymentSagaEvent as E;
        match event {
            E::PaymentSagaStarted {
                order_id,
                customer_id,
                amount,
            } => {
                self.order_id = Some(order_id.clone());
                self.customer_id.clone_from(customer_id);
                self.amount = Some(*amount);
            }
            E::StepStarted {
                step,
                attempt,
                deadline_ms,
            } => {
                self.attempts.insert(*step, *attempt);
                self.retry_at_ms.remove(step);
                self.in_flight = Some(Attempt {
                    step: *step,
                    attempt: *attempt,
                    deadline_ms: *deadline_ms,
                });
            }
            E::StepAccepted { step, reference } => {
                self.accepted.insert(*step, reference.clone());
                self.clear_in_flight(*step);
            }
            E::StepSucceeded { step, reference } => {
                self.done.insert(*step, reference.clone());
                self.retry_at_ms.remove(step);
                self.clear_in_flight(*step);
            }
            E::StepFailed {
                step,
                reason,
                retry_at_ms,
                ..
            } => {
                match retry_at_ms {
                    Some(at) => {
                        self.retry_at_ms.insert(*step, *at);
                    }
                    None => {
                        self.failed_for_good.insert(*step, reason.clone());
                    }
                }
                self.clear_in_flight(*step);
            }
            E::PaymentCompleted { .. } => self.completed = true,
            E::PaymentFailed { reason } => self.failed = Some(reason.clone()),
            E::PaymentSagaEnded { outcome } => {
                self.ended = Some(*outcome);
                self.in_flight = None;
            }
        }
        self
    }
}

impl PaymentSaga {
    fn clear_in_flight(&mut self, step: SagaStep) {
        if self.in_flight.is_some_and(|a| a.step == step) {
            self.in_flight = None;
        }
    }

    fn handle_started(
        &self,
        command: PaymentSagaCommand,
    ) -> Result<Vec<PaymentSagaEvent>, PaymentSagaError> {
        use PaymentSagaCommand as C;
        use PaymentSagaEvent as E;
        let ended = |what: &str| PaymentSagaError::NotNow(format!("the saga has ended: {what}"));
        match command {
            C::BeginStep {
                step,
                now_ms,
                timeout_ms,
            } => {
                let compensation = matches!(step, SagaStep::ReleaseFunds | SagaStep::RefundPayment);
                if self.ended.is_some() && !compensation {
                    return Err(ended("only a compensation may begin"));
                }
                if self.is_done(step) {
                    return Err(PaymentSagaError::NotNow(format!("{step:?} is done")));
                }
                if let Some(a) = self.in_flight {
                    if now_ms < a.deadline_ms {
                        return Err(PaymentSagaError::NotNow(format!(
                            "{:?} attempt {} is in flight",
                            a.step, a.attempt
                        )));
                    }
                }
                let attempt = self.attempts.get(&step).copied().unwrap_or(0) + 1;
                Ok(vec![E::StepStarted {
                    step,
                    attempt,
                    deadline_ms: now_ms.saturating_add(timeout_ms.max(1)),
                }])
            }
            C::EndStep {
                step,
                attempt,
                result,
                now_ms,
            } => Ok(self.end_step(step, attempt, result, now_ms)),
            C::Complete => {
                if self.completed {
                    return Ok(vec![]);
                }
                if !self.is_done(SagaStep::CapturePayment) || self.failed.is_some() {
                    return Err(PaymentSagaError::NotNow(
                        "only a captured payment that has not failed completes".into(),
                    ));
                }
                Ok(vec![E::PaymentCompleted {
                    amount: self.amount.expect("started saga has an amount"),
                }])
            }
            C::Fail { reason } => {
                validate_reason(&reason).map_err(PaymentSagaError::Invalid)?;
                if self.failed.is_some() || self.completed {
                    return Ok(vec![]);
                }
                Ok(vec![E::PaymentFailed { reason }])
            }
            C::End { outcome } => match self.ended {
                Some(o) if o == outcome => Ok(vec![]),
                Some(_) => Err(ended("it ended otherwise")),
                None => Ok(vec![E::PaymentSagaEnded { outcome }]),
            },
            C::Start { .. } | C::Report(_) => unreachable!("handled by handle"),
        }
    }
}

/// Where the saga's order stands, as far as the saga cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderStanding {
    /// Created, not paid.
    Pending,
    /// Paid (or further along).
    Paid,
    /// Cancelled or refunded: nothing may be charged for it.
    Cancelled,
}

/// What the orchestrator should do next with a saga.
#[derive(Debug, Clone, PartialEq)]
pub enum SagaAction {
    /// Begin a try of the step (record `BeginStep`, call the provider, record `EndStep`).
    Call(SagaStep),
    /// Record this command.
    Record(PaymentSagaCommand),
    /// Nothing to do until this time (ms), or until the next event when `None`.
    Wait(Option<i64>),
    /// The saga has ended.
    Done,
}

/// The orchestrator's decision (pure): from the saga's facts, the order's standing and the time.
///
/// Forward path: ReserveFunds (the provider answers by callback) -> CapturePayment -> SendReceipt
/// (a receipt that fails for good does not undo a payment) -> `PaymentCompleted`, ended once the
/// order is paid. A reservation that fails or a capture that is refused or runs out of tries
/// records `PaymentFailed` (the order is cancelled by choreography). Once the order is cancelled
/// or the payment failed: RefundPayment if a charge stands, else ReleaseFunds if funds are held,
/// then the end (`Compensated` if anything was given back, else `Failed`).
pub fn next_action(saga: &PaymentSaga, order: OrderStanding, now_ms: i64) -> SagaAction {
    use SagaStep::*;
    if saga.order_id.is_none() {
        return SagaAction::Wait(None);
    }
    if let Some(a) = saga.in_flight {
        if now_ms < a.deadline_ms {
            return SagaAction::Wait(Some(a.deadline_ms));
        }
        // The try ran out of time without an answer (the worker died, or the call hung).
        return SagaAction::Record(PaymentSagaCommand::EndStep {
            step: a.step,
            attempt: a.attempt,
            result: StepResult::Transient("no answer before the step's deadline".into()),
            now_ms,
        });
    }
    let step = |s: SagaStep| match saga.retry_at_ms.get(&s) {
        Some(at) if *at > now_ms => SagaAction::Wait(Some(*at)),
        _ => SagaAction::Call(s),
    };
    // A capture tried without a known outcome (its worker died mid-call, or the try timed out)
    // may have charged: compensation refunds first, and the provider refuses a refund of
    // nothing (refused for good), after which the funds are released.
    let capture_in_doubt = saga.attempts.contains_key(&CapturePayment)
        && !saga.is_done(CapturePayment)
        && !saga.failed_for_good.contains_key(&CapturePayment)
        && !saga.failed_for_good.contains_key(&RefundPayment);
    let charged =
        (saga.is_done(CapturePayment) || capture_in_doubt) && !saga.is_done(RefundPayment);
    let held =
        saga.is_done(ReserveFunds) && !saga.is_done(CapturePayment) && !saga.is_done(ReleaseFunds);
    match saga.ended {
        Some(SagaOutcome::Completed) => return SagaAction::Done,
        // Money reported held or taken after a saga failed goes back.
        Some(_) if charged => return step(RefundPayment),
        Some(_) if held => return step(ReleaseFunds),
        Some(_) => return SagaAction::Done,
        None => {}
    }
    if order == OrderStanding::Cancelled || saga.failed.is_some() {
        if charged {
            return step(RefundPayment);
        }
        if held {
            return step(ReleaseFunds);
        }
        if order == OrderStanding::Pending {
            // The order participant cancels the order on PaymentFailed; end after that.
            return SagaAction::Wait(None);
        }
        let gave_back = saga.is_done(RefundPayment) || saga.is_done(ReleaseFunds);
        return SagaAction::Record(PaymentSagaCommand::End {
            outcome: if gave_back {
                SagaOutcome::Compensated
            } else {
                SagaOutcome::Failed
            },
        });
    }
    if saga.is_done(CapturePayment) {
        if !saga.is_done(SendReceipt) && !saga.failed_for_good.contains_key(&SendReceipt) {
            return step(SendReceipt);
        }
        if !saga.completed {
            return SagaAction::Record(PaymentSagaCommand::Complete);
        }
        return if order == OrderStanding::Paid {
            SagaAction::Record(PaymentSagaCommand::End {
                outcome: SagaOutcome::Completed,
            })
        } else {
            // The order participant pays the order on PaymentCompleted.
            SagaAction::Wait(None)
        };
    }
    if let Some(reason) = saga.failed_for_good.get(&CapturePayment) {
        return SagaAction::Record(PaymentSagaCommand::Fail {
            reason: format!("capture failed: {reason}"),
        });
    }
    if saga.is_done(ReserveFunds) {
        return step(CapturePayment);
    }
    if let Some(reason) = saga.failed_for_good.get(&ReserveFunds) {
        return SagaAction::Record(PaymentSagaCommand::Fail {
            reason: format!("reservation failed: {reason}"),
        });
    }
    if !saga.accepted.contains_key(&ReserveFunds) {
        return step(ReserveFunds);
    }
    // Waiting for the buyer: the callback, or the unpaid-order timeout cancelling the order.
    SagaAction::Wait(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::Currency;

    fn started() -> PaymentSaga {
        let amount = Money::parse("25.00", Currency::USD).unwrap();
        let cmd = PaymentSagaCommand::Start {
            order_id: "o-1".into(),
            customer_id: "c-1".into(),
            amount,
        };
        run(PaymentSaga::default(), cmd)
    }

    fn run(saga: PaymentSaga, cmd: PaymentSagaCommand) -> PaymentSaga {
        saga.handle(cmd)
            .unwrap()
            .iter()
            .fold(saga, |s, e| s.clone().apply(e))
    }

    /// Plays the orchestrator against a provider that answers every call with `answer`, until
    /// the saga waits or ends; returns the saga and the steps called in order.
    fn drive(
        mut saga: PaymentSaga,
        order: OrderStanding,
        now: i64,
        answer: &dyn Fn(SagaStep) -> StepResult,
    ) -> (PaymentSaga, Vec<SagaStep>) {
        let mut calls = vec![];
        for _ in 0..100 {
            match next_action(&saga, order, now) {
                SagaAction::Call(step) => {
                    calls.push(step);
                    saga = run(
                        saga,
                        PaymentSagaCommand::BeginStep {
                            step,
                            now_ms: now,
                            timeout_ms: 1_000,
                        },
                    );
                    let attempt = saga.attempts[&step];
                    saga = run(
                        saga,
                        PaymentSagaCommand::EndStep {
                            step,
                            attempt,
                            result: answer(step),
                            now_ms: now,
                        },
                    );
                }
                SagaAction::Record(cmd) => saga = run(saga, cmd),
                SagaAction::Wait(_) | SagaAction::Done => return (saga, calls),
            }
        }
        panic!("the saga did not settle");
    }

    fn happy(step: SagaStep) -> StepResult {
        match step {
            SagaStep::ReserveFunds => StepResult::Accepted("auth-1".into()),
            s => StepResult::Done(format!("{s:?}-ref")),
        }
    }

    fn reserved() -> PaymentSagaCommand {
        PaymentSagaCommand::Report(ProviderReport::FundsReserved {
            authorization_id: "auth-1".into(),
        })
    }

    #[test]
    fn happy_path_reserves_captures_sends_a_receipt_and_ends_once_the_order_is_paid() {
        let (saga, calls) = drive(started(), OrderStanding::Pending, 0, &happy);
        assert_eq!(calls, vec![SagaStep::ReserveFunds]);
        let saga = run(saga, reserved());
        let (saga, calls) = drive(saga, OrderStanding::Pending, 0, &happy);
        assert_eq!(calls, vec![SagaStep::CapturePayment, SagaStep::SendReceipt]);
        assert!(saga.completed);
        assert_eq!(saga.ended, None, "waits for the order to be paid");
        let (saga, _) = drive(saga, OrderStanding::Paid, 0, &happy);
        assert_eq!(saga.ended, Some(SagaOutcome::Completed));
    }

    #[test]
    fn callbacks_twice_late_or_early_give_the_same_saga() {
        // Early: the callback is recorded before the saga starts.
        let early = run(PaymentSaga::default(), reserved());
        let early = run(
            early,
            PaymentSagaCommand::Start {
                order_id: "o-1".into(),
                customer_id: "c-1".into(),
                amount: Money::parse("25.00", Currency::USD).unwrap(),
            },
        );
        let (early, calls) = drive(early, OrderStanding::Pending, 0, &happy);
        assert_eq!(calls, vec![SagaStep::CapturePayment, SagaStep::SendReceipt]);
        // Normal, then the same callback twice more and a contradicting failure late.
        let (normal, _) = drive(started(), OrderStanding::Pending, 0, &happy);
        let mut normal = run(normal, reserved());
        for cmd in [
            reserved(),
            PaymentSagaCommand::Report(ProviderReport::ReservationFailed {
                reason: "late duplicate".into(),
            }),
        ] {
            assert_eq!(normal.handle(cmd.clone()).unwrap(), vec![]);
            normal = run(normal, cmd);
        }
        let (normal, _) = drive(normal, OrderStanding::Pending, 0, &happy);
        assert_eq!(normal.done, early.done);
        assert!(normal.completed && early.completed);
    }

    #[test]
    fn a_failed_reservation_fails_the_payment_and_ends_after_the_order_is_cancelled() {
        let (saga, _) = drive(started(), OrderStanding::Pending, 0, &happy);
        let saga = run(
            saga,
            PaymentSagaCommand::Report(ProviderReport::ReservationFailed {
                reason: "card declined".into(),
            }),
        );
        let (saga, calls) = drive(saga, OrderStanding::Pending, 0, &happy);
        assert!(calls.is_empty());
        assert_eq!(
            saga.failed.as_deref(),
            Some("reservation failed: card declined")
        );
        assert_eq!(saga.ended, None);
        let (saga, _) = drive(saga, OrderStanding::Cancelled, 0, &happy);
        assert_eq!(saga.ended, Some(SagaOutcome::Failed));
    }

    #[test]
    fn a_refused_capture_releases_the_funds() {
        let (saga, _) = drive(started(), OrderStanding::Pending, 0, &happy);
        let saga = run(saga, reserved());
        let decline = |s: SagaStep| match s {
            SagaStep::CapturePayment => StepResult::Refused("insufficient funds".into()),
            s => happy(s),
        };
        let (saga, calls) = drive(saga, OrderStanding::Pending, 0, &decline);
        assert_eq!(
            calls,
            vec![SagaStep::CapturePayment, SagaStep::ReleaseFunds]
        );
        assert!(saga.failed.is_some());
        let (saga, _) = drive(saga, OrderStanding::Cancelled, 0, &decline);
        assert_eq!(saga.ended, Some(SagaOutcome::Compensated));
    }

    #[test]
    fn a_capture_in_doubt_on_a_cancelled_order_is_refunded_before_the_funds_are_released() {
        let (saga, _) = drive(started(), OrderStanding::Pending, 0, &happy);
        let saga = run(saga, reserved());
        // The capture's try gets no answer (the server was killed mid-call): it may have charged.
        let no_answer = |s: SagaStep| match s {
            SagaStep::CapturePayment => StepResult::Transient("no answer".into()),
            s => happy(s),
        };
        let (saga, calls) = drive(saga, OrderStanding::Pending, 0, &no_answer);
        assert_eq!(calls, vec![SagaStep::CapturePayment]);
        // The order is cancelled before the retry: the refund goes first.
        let (saga, calls) = drive(saga.clone(), OrderStanding::Cancelled, 0, &happy);
        assert_eq!(calls, vec![SagaStep::RefundPayment, SagaStep::ReleaseFunds]);
        assert_eq!(saga.ended, Some(SagaOutcome::Compensated));
    }

    #[test]
    fn a_capture_in_doubt_that_charged_nothing_ends_with_the_funds_released() {
        let (saga, _) = drive(started(), OrderStanding::Pending, 0, &happy);
        let saga = run(saga, reserved());
        let no_answer = |s: SagaStep| match s {
            SagaStep::CapturePayment => StepResult::Transient("no answer".into()),
            s => happy(s),
        };
        let (saga, _) = drive(saga, OrderStanding::Pending, 0, &no_answer);
        let nothing_charged = |s: SagaStep| match s {
            SagaStep::RefundPayment => StepResult::Refused("nothing to refund".into()),
            s => happy(s),
        };
        let (saga, calls) = drive(saga, OrderStanding::Cancelled, 0, &nothing_charged);
        assert_eq!(calls, vec![SagaStep::RefundPayment, SagaStep::ReleaseFunds]);
        assert_eq!(saga.ended, Some(SagaOutcome::Compensated));
    }

    #[test]
    fn a_charge_on_a_cancelled_order_is_refunded() {
        let (saga, _) = drive(started(), OrderStanding::Pending, 0, &happy);
        let saga = run(saga, reserved());
        let (saga, _) = drive(saga, OrderStanding::Pending, 0, &happy);
        assert!(saga.completed);
        // The unpaid-order timeout won the race against the order participant's payment.
        let (saga, calls) = drive(saga, OrderStanding::Cancelled, 0, &happy);
        assert_eq!(calls, vec![SagaStep::RefundPayment]);
        assert_eq!(saga.ended, Some(SagaOutcome::Compensated));
    }

    #[test]
    fn funds_reported_after_the_order_was_cancelled_are_released() {
        let (saga, _) = drive(started(), OrderStanding::Cancelled, 0, &happy);
        assert_eq!(saga.ended, Some(SagaOutcome::Failed));
        // The end is recorded; a reservation reported later is still a fact, and released.
        let late = run(saga, reserved());
        let (late, calls) = drive(late, OrderStanding::Cancelled, 0, &happy);
        assert_eq!(calls, vec![SagaStep::ReleaseFunds]);
        assert_eq!(
            next_action(&late, OrderStanding::Cancelled, 0),
            SagaAction::Done
        );
        // A charge reported after the end is refunded the same way.
        let charged = run(
            late,
            PaymentSagaCommand::Report(ProviderReport::Captured {
                charge_id: "ch-late".into(),
            }),
        );
        let (_, calls) = drive(charged, OrderStanding::Cancelled, 0, &happy);
        assert_eq!(calls, vec![SagaStep::RefundPayment]);
        // Waiting for the buyer when the order is cancelled: release, then end compensated.
        let (waiting, _) = drive(started(), OrderStanding::Pending, 0, &happy);
        let waiting = run(waiting, reserved());
        let (saga, calls) = drive(waiting, OrderStanding::Cancelled, 0, &happy);
        assert_eq!(calls, vec![SagaStep::ReleaseFunds]);
        assert_eq!(saga.ended, Some(SagaOutcome::Compensated));
    }

    #[test]
    fn transient_failures_retry_with_backoff_then_fail_for_good() {
        let (saga, _) = drive(started(), OrderStanding::Pending, 0, &happy);
        let mut saga = run(saga, reserved());
        let flaky = |_: SagaStep| StepResult::Transient("provider unavailable".into());
        let mut now = 0;
        for attempt in 1..=5 {
            let (s, calls) = drive(saga, OrderStanding::Pending, now, &flaky);
            let mut expected = vec![SagaStep::CapturePayment];
            if attempt == 5 {
                // Out of tries: the payment fails and the held funds are released (and that
                // compensation is tried again and again until it works).
                expected.push(SagaStep::ReleaseFunds);
            }
            assert_eq!(calls, expected, "attempt {attempt}");
            saga = s;
            now += backoff_ms(attempt);
            if attempt < 5 {
                assert_eq!(
                    next_action(&saga, OrderStanding::Pending, now - 1),
                    SagaAction::Wait(Some(now))
                );
            }
        }
        assert!(saga.failed_for_good.contains_key(&SagaStep::CapturePayment));
        assert!(saga.failed.is_some());
        let (saga, calls) = drive(saga, OrderStanding::Pending, now, &happy);
        assert_eq!(calls, vec![SagaStep::ReleaseFunds]);
        assert!(saga.is_done(SagaStep::ReleaseFunds));
    }

    #[test]
    fn a_try_past_its_deadline_times_out_and_a_late_success_still_counts() {
        let (saga, _) = drive(started(), OrderStanding::Pending, 0, &happy);
        let saga = run(saga, reserved());
        let saga = run(
            saga,
            PaymentSagaCommand::BeginStep {
                step: SagaStep::CapturePayment,
                now_ms: 0,
                timeout_ms: 1_000,
            },
        );
        assert_eq!(
            next_action(&saga, OrderStanding::Pending, 500),
            SagaAction::Wait(Some(1_000))
        );
        let SagaAction::Record(timeout) = next_action(&saga, OrderStanding::Pending, 1_000) else {
            panic!("expected a timeout record");
        };
        let saga = run(saga, timeout);
        assert_eq!(saga.in_flight, None);
        assert_eq!(saga.retry_at_ms[&SagaStep::CapturePayment], 1_200);
        // The first try's answer arrives after all: a capture is a fact, whenever it comes.
        let saga = run(
            saga,
            PaymentSagaCommand::EndStep {
                step: SagaStep::CapturePayment,
                attempt: 1,
                result: StepResult::Done("ch-1".into()),
                now_ms: 1_100,
            },
        );
        assert!(saga.is_done(SagaStep::CapturePayment));
        assert_eq!(
            next_action(&saga, OrderStanding::Pending, 1_100),
            SagaAction::Call(SagaStep::SendReceipt)
        );
    }

    proptest::proptest! {
        /// However the provider's reports of one paid order arrive (any order, any number of
        /// copies, interleaved with the orchestrator's steps), the payment is captured at most
        /// once, nothing is released or refunded, and the saga completes.
        #[test]
        fn reports_in_any_order_and_number_charge_once(
            reports in proptest::collection::vec(0_u8..3, 1..8),
            drives in proptest::collection::vec(proptest::bool::ANY, 8),
        ) {
            let mut reports = reports;
            if !reports.iter().any(|r| *r != 1) {
                reports.push(0);
            }
            let mut saga = started();
            let mut calls = vec![];
            for (i, r) in reports.iter().enumerate() {
                let report = match r {
                    1 => ProviderReport::Captured { charge_id: "ch-1".into() },
                    _ => ProviderReport::FundsReserved { authorization_id: "auth-1".into() },
                };
                saga = run(saga, PaymentSagaCommand::Report(report));
                if drives[i] {
                    let (s, c) = drive(saga, OrderStanding::Pending, 0, &happy);
                    saga = s;
                    calls.extend(c);
                }
            }
            let (saga, c) = drive(saga, OrderStanding::Pending, 0, &happy);
            calls.extend(c);
            let (saga, c) = drive(saga, OrderStanding::Paid, 0, &happy);
            calls.extend(c);
            let captures = calls.iter().filter(|s| **s == SagaStep::CapturePayment).count();
            proptest::prop_assert!(captures <= 1, "{calls:?}");
            proptest::prop_assert!(!calls.contains(&SagaStep::ReleaseFunds), "{calls:?}");
            proptest::prop_assert!(!calls.contains(&SagaStep::RefundPayment), "{calls:?}");
            proptest::prop_assert_eq!(saga.ended, Some(SagaOutcome::Completed));
        }
    }

    #[test]
    fn refuses_commands_out_of_place() {
        assert_eq!(
            PaymentSaga::default().handle(PaymentSagaCommand::Complete),
            Err(PaymentSagaError::NotStarted)
        );
        let saga = started();
        assert!(matches!(
            saga.handle(PaymentSagaCommand::Complete),
            Err(PaymentSagaError::NotNow(_))
        ));
        assert_eq!(
            saga.handle(PaymentSagaCommand::Start {
                order_id: "o-2".into(),
                customer_id: "c-1".into(),
                amount: Money::parse("25.00", Currency::USD).unwrap(),
            }),
            Err(PaymentSagaError::StartedDifferently)
        );
        assert!(matches!(
            saga.handle(PaymentSagaCommand::Report(ProviderReport::FundsReserved {
                authorization_id: String::new()
            })),
            Err(PaymentSagaError::Invalid(m)) if m.contains("authorization_id")
        ));
    }
}
