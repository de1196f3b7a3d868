//! Reads: the log and a stream through batched direct gets (up to 1,000 messages a request,
//! ADR-31) and, past the first 1,000, an ordered pull consumer; the log's head as appenders
//! announce it.

use async_nats::jetstream::{self, consumer};
use eventfold_core::chain::ChainRow;
use eventfold_core::StoreError;
use eventfold_store_support::head::{self, HeadSender};
use futures::StreamExt;
use jetstream_extra::batch_fetch::{
    BatchFetchError, BatchFetchErrorKind, BatchFetchExt, BatchStream,
};
use jetstream_extra::StreamMessage;

use crate::message::{self, Decoded};
use crate::{archive, fetch_failed, Names, NatsStore, MAX_BATCH};

/// Every message a batched direct get (by sequence or last per subject) answered, in order;
/// none when the server found none.
///
/// # Errors
/// [`StoreError::Unavailable`] when the request or a message fails.
pub(crate) async fn answered(
    sent: Result<BatchStream, BatchFetchError>,
) -> Result<Vec<StreamMessage>, StoreError> {
    let mut batch = match sent {
        Ok(batch) => batch,
        Err(e) if e.kind() == BatchFetchErrorKind::NoMessages => return Ok(Vec::new()),
        Err(e) => return Err(fetch_failed(e)),
    };
    let mut out = Vec::new();
    while let Some(m) = batch.next().await {
        match m {
            Ok(m) => out.push(m),
            Err(e) if e.kind() == BatchFetchErrorKind::NoMessages => break,
            Err(e) => return Err(fetch_failed(e)),
        }
    }
    Ok(out)
}

/// Refills `rows` with the chain rows of `read`, reusing the buffers of the rows there.
pub(crate) fn fill_rows(read: &[Decoded], rows: &mut Vec<ChainRow>) {
    rows.truncate(read.len());
    for (i, d) in read.iter().enumerate() {
        match rows.get_mut(i) {
            Some(row) => d.chain_row_into(row),
            None => rows.push(d.chain_row()),
        }
    }
}

impl NatsStore {
    /// Up to `max_count` messages after `after_position`, of `subject` only when given.
    ///
    /// The first 1,000 come from one batched direct get; a read that wants more goes on through
    /// an ordered pull consumer from there, which the server streams without a request per
    /// batch (a direct get answers at most 1,000 messages, each batch a round trip).
    pub(crate) async fn read_log(
        &self,
        after_position: u64,
        max_count: usize,
        subject: Option<&str>,
    ) -> Result<Vec<Decoded>, StoreError> {
        let next = after_position.saturating_add(1);
        let want = max_count.min(MAX_BATCH);
        let request = self.shared.js.get_batch(&self.shared.names.stream, want);
        let request = match subject {
            Some(s) => request.subject(s),
            None => request,
        };
        let mut out = answered(request.sequence(next).send().await)
            .await?
            .into_iter()
            .map(|m| message::decode(m.sequence, m.payload))
            .collect::<Result<Vec<_>, _>>()?;
        if out.len() < want || out.len() >= max_count {
            return Ok(out);
        }
        let from = out.last().map_or(next, |d| d.position + 1);
        self.stream_through_consumer(from, max_count - out.len(), subject, &mut out)
            .await?;
        Ok(out)
    }

    /// Reads up to `max_count` messages from sequence `from` (of `subject` when given) through
    /// an ordered pull consumer, appending them to `out`; stops at the end of the log as the
    /// consumer found it.
    async fn stream_through_consumer(
        &self,
        from: u64,
        max_count: usize,
        subject: Option<&str>,
        out: &mut Vec<Decoded>,
    ) -> Result<(), StoreError> {
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::Unavailable(format!("reading the NATS log ({what}): {e}").into())
        };
        let consumer = self
            .shared
            .stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subject
                    .map_or_else(|| format!("{}.>", self.shared.names.events), str::to_owned),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: from,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| failed("consumer", &e))?;
        if consumer.cached_info().num_pending == 0 {
            return Ok(());
        }
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| failed("consumer", &e))?;
        let limit = out.len() + max_count;
        while out.len() < limit {
            let m = match tokio::time::timeout(self.shared.config.request_timeout, messages.next())
                .await
            {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => return Err(failed("message", &e)),
                Ok(None) => break,
                Err(_) => return Err(failed("message", &"timed out")),
            };
            let info = m.info().map_err(|e| failed("message info", &e))?;
            let (sequence, pending) = (info.stream_sequence, info.pending);
            out.push(message::decode(sequence, m.payload.clone())?);
            if pending == 0 {
                break;
            }
        }
        Ok(())
    }

    /// Up to `max_count` events after `after_position` in the log, archived stubs and restored
    /// events included (see `archive.rs`), in position order; and whether the read stopped
    /// before the end of the log (full, or cut where the archive's read stopped).
    pub(crate) async fn read_log_with_archive(
        &self,
        after_position: u64,
        max_count: usize,
    ) -> Result<(Vec<Decoded>, bool), StoreError> {
        let hot = self.read_log(after_position, max_count, None).await?;
        // The archive's documents matter up to where this read stopped (to the end when it
        // reached the end).
        let upto = match hot.last() {
            Some(last) if hot.len() >= max_count => Some(last.position),
            _ => None,
        };
        let cap = max_count.min(archive::PAGE);
        let cold = self.shared.cold.in_log(after_position, upto, cap).await?;
        let cut = cold.len() >= cap;
        let mut all = archive::merge(hot, cold, cut, |d| d.position);
        all.truncate(max_count);
        let more = cut || all.len() >= max_count;
        Ok((all, more))
    }

    /// Up to `max_count` events of `stream_id` from version `from_version`, archived stubs and
    /// restored events included.
    pub(crate) async fn read_stream_messages(
        &self,
        stream_id: &str,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<Decoded>, StoreError> {
        let from_version = from_version.max(1);
        let cap = max_count.min(archive::PAGE);
        let cold = self
            .shared
            .cold
            .of_stream(stream_id, from_version, cap)
            .await?;
        let hot = self
            .read_hot_stream(stream_id, from_version, max_count, cold.is_empty())
            .await?;
        let cut = cold.len() >= cap;
        let mut all = archive::merge(hot, cold, cut, |d| d.head.v);
        all.truncate(max_count);
        Ok(all)
    }

    /// Up to `max_count` messages of `stream_id` from version `from_version`; with `may_end`,
    /// one lookup of the stream's last message first answers a read past its end.
    async fn read_hot_stream(
        &self,
        stream_id: &str,
        from_version: u64,
        max_count: usize,
        may_end: bool,
    ) -> Result<Vec<Decoded>, StoreError> {
        let subject = message::subject(&self.shared.names.events, stream_id);
        if may_end && from_version > 1 {
            // Nothing to read past the stream's end: one lookup instead of a scan.
            match self.last_of_stream(stream_id).await? {
                Some(last) if last.head.v >= from_version => {}
                _ => return Ok(Vec::new()),
            }
        }
        // JetStream cannot seek a subject by our version: skip the versions before it.
        let skip = usize::try_from(from_version - 1).unwrap_or(usize::MAX);
        let mut read = self
            .read_log(0, max_count.saturating_add(skip), Some(&subject))
            .await?;
        read.retain(|d| d.head.v >= from_version);
        read.truncate(max_count);
        Ok(read)
    }

    /// The last message of `stream_id`, if any (an archived last event is not there: see
    /// `archive.rs`).
    pub(crate) async fn last_of_stream(
        &self,
        stream_id: &str,
    ) -> Result<Option<Decoded>, StoreError> {
        let subject = message::subject(&self.shared.names.events, stream_id);
        match self
            .shared
            .stream
            .direct_get_last_for_subject(subject)
            .await
        {
            Ok(m) => Ok(Some(message::decode(m.sequence, m.payload)?)),
            Err(e) if e.kind() == jetstream::stream::DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Unavailable(
                format!("reading the head of stream {stream_id}: {e}").into(),
            )),
        }
    }
}

/// Raises the published head when an appender, this process's or another's, announces the
/// log's head on the core NATS subject `{NAME}.h` (one notice per group of appends it stored,
/// see the appender), so that `wait_for_append` wakes at once for appends by other processes.
/// A notice is a hint, never stored: one lost (a process that died between its publish and
/// its notice) is covered by `wait_for_append`'s poll. The client subscribes again by itself
/// after a reconnect; a subscription that cannot be made is tried again after a second.
///
/// An ordered push consumer on the events (headers only) did this before: it made the server
/// deliver every event once more, which cost a fifth of the append rate (16 clients, one
/// event per append: 8,900 events/s with it, 11,500 without).
pub(crate) async fn tail(client: async_nats::Client, names: Names, head_tx: HeadSender) {
    loop {
        match client.subscribe(names.head.clone()).await {
            Ok(mut notices) => {
                while let Some(m) = notices.next().await {
                    let position = std::str::from_utf8(&m.payload)
                        .ok()
                        .and_then(|p| p.parse::<u64>().ok());
                    if let Some(position) = position {
                        head::advance(&head_tx, position);
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot subscribe to the NATS head notices; trying again in 1 s");
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}
