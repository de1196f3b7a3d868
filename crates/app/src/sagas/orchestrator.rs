//! The payment saga's orchestrator: drives each saga that something happened to until it waits,
//! arming timers for retries and deadlines, and sweeps the sagas still in flight.

use std::time::Duration;

use eventfold_core::Actor;
use eventfold_domain::order::{Order, OrderStatus};
use eventfold_domain::payment_saga::{
    next_action, OrderStanding, PaymentSaga, PaymentSagaCommand, SagaAction, SagaStep, StepResult,
};

use super::{correlation, now_ms, Sagas};
use crate::service::{version_render, AsOf, CommandContext, ServiceError};
use crate::shop::payments::StepRequest;

impl Sagas {
    /// Schedules every saga still in flight (the `sagas_in_flight` projection). Returns how many.
    ///
    /// # Errors
    /// Read-model failures.
    pub async fn sweep(&self) -> Result<u64, ServiceError> {
        let mut n = 0;
        super::for_each_in_flight(self.inner.read_models.as_ref(), |key, _| {
            self.schedule(key);
            n += 1;
        })
        .await?;
        Ok(n)
    }

    pub(super) async fn work(&self, stop: tokio_util::sync::CancellationToken) {
        loop {
            let next = {
                let mut receiver = self.inner.receiver.lock().await;
                tokio::select! {
                    id = receiver.recv() => id,
                    () = stop.cancelled() => None,
                }
            };
            let Some(order_id) = next else { return };
            loop {
                if let Err(e) = self.drive(&order_id).await {
                    tracing::warn!(order_id, error = %crate::error_chain(&e), "payment saga step failed; again in 1 s");
                    self.arm_timer(&order_id, now_ms() + 1_000);
                }
                let Ok(mut scheduled) = self.inner.scheduled.lock() else {
                    return;
                };
                match scheduled.get_mut(&order_id) {
                    Some(again) if *again => *again = false,
                    _ => {
                        scheduled.remove(&order_id);
                        break;
                    }
                }
            }
        }
    }

    fn arm_timer(&self, order_id: &str, due_ms: i64) {
        {
            let Ok(mut timers) = self.inner.timers.lock() else {
                return;
            };
            match timers.get(order_id) {
                Some(at) if *at <= due_ms => return,
                _ => timers.insert(order_id.to_owned(), due_ms),
            };
        }
        let (me, id) = (self.clone(), order_id.to_owned());
        tokio::spawn(async move {
            let wait = u64::try_from(due_ms - now_ms()).unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(wait)).await;
            if let Ok(mut timers) = me.inner.timers.lock() {
                if timers.get(&id) == Some(&due_ms) {
                    timers.remove(&id);
                }
            }
            me.schedule(&id);
        });
    }

    async fn saga_command(
        &self,
        order_id: &str,
        command: PaymentSagaCommand,
    ) -> Result<bool, ServiceError> {
        let mut ctx = CommandContext::new(Actor::system("payment-saga"));
        ctx.correlation_id = Some(correlation(order_id));
        match self
            .inner
            .service
            .execute::<PaymentSaga>(order_id, command, &ctx, version_render(200))
            .await
        {
            Ok(_) => Ok(true),
            // Another orchestrator got there first: decide again from what it recorded.
            Err(ServiceError::Refused { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Drives the saga of `order_id` until it waits or ends.
    ///
    /// # Errors
    /// Store failures (the caller tries again later).
    pub async fn drive(&self, order_id: &str) -> Result<(), ServiceError> {
        let service = &self.inner.service;
        for _ in 0..64 {
            let Some(saga) = service.load::<PaymentSaga>(order_id, AsOf::Latest).await? else {
                return Ok(());
            };
            let saga = saga.state;
            let standing = match service
                .load::<Order>(order_id, AsOf::Latest)
                .await?
                .and_then(|o| o.state.status)
            {
                Some(OrderStatus::Cancelled | OrderStatus::Refunded) => OrderStanding::Cancelled,
                Some(OrderStatus::Pending) | None => OrderStanding::Pending,
                Some(_) => OrderStanding::Paid,
            };
            let now = now_ms();
            match next_action(&saga, standing, now) {
                SagaAction::Done | SagaAction::Wait(None) => return Ok(()),
                SagaAction::Wait(Some(at)) => {
                    self.arm_timer(order_id, at);
                    return Ok(());
                }
                SagaAction::Record(command) => {
                    self.saga_command(order_id, command).await?;
                }
                SagaAction::Call(step) => {
                    let timeout = self.inner.config.step_timeout;
                    let begin = PaymentSagaCommand::BeginStep {
                        step,
                        now_ms: now,
                        timeout_ms: i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX),
                    };
                    if !self.saga_command(order_id, begin).await? {
                        continue;
                    }
                    let attempt = saga.attempts.get(&step).copied().unwrap_or(0) + 1;
                    let reference = match step {
                        SagaStep::CapturePayment | SagaStep::ReleaseFunds => {
                            saga.done.get(&SagaStep::ReserveFunds).cloned()
                        }
                        SagaStep::RefundPayment => {
                            saga.done.get(&SagaStep::CapturePayment).cloned()
                        }
                        _ => None,
                    };
                    let Some(amount) = saga.amount else {
                        return Ok(());
                    };
                    let request =
                        StepRequest::new(step, order_id, &saga.customer_id, amount, reference);
                    let result =
                        match tokio::time::timeout(timeout, self.inner.provider.call(&request))
                            .await
                        {
                            Ok(r) => r,
                            Err(_) => StepResult::Transient(format!(
                                "no answer within {} ms",
                                timeout.as_millis()
                            )),
                        };
                    metrics::counter!("eventfold_saga_steps_total",
                    "step" => step.key_prefix(),
                    "result" => match &result {
                        StepResult::Done(_) => "done",
                        StepResult::Accepted(_) => "accepted",
                        StepResult::Refused(_) => "refused",
                        StepResult::Transient(_) => "transient",
                    })
                    .increment(1);
                    let end = PaymentSagaCommand::EndStep {
                        step,
                        attempt,
                        result,
                        now_ms: now_ms(),
                    };
                    self.saga_command(order_id, end).await?;
                }
            }
        }
        tracing::warn!(order_id, "payment saga did not settle in 64 decisions");
        Ok(())
    }
}
