//! The exactly-once worker on librdkafka's mock cluster (Tansu 0.6 has no transactions;
//! see `tansu_gaps.rs`). The mock runs the whole transactional protocol (InitProducerId with
//! epochs, AddPartitionsToTxn, AddOffsetsToTxn, TxnOffsetCommit with the group metadata, EndTxn)
//! and fences stale epochs, but it writes no transaction markers and does not store offsets
//! committed in a transaction (both shown below, so that we notice when a newer librdkafka does):
//! hence these tests count what the worker committed and what it aborted instead of asking a
//! `read_committed` reader, and a restart from committed offsets cannot be shown here.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use eventfold_kafka::exactly_once::{
    run_exactly_once, ExactlyOnceConfig, ExactlyOnceStats, Outbound, Transformed,
};
use eventfold_kafka::ConsumerConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio::sync::oneshot;

use crate::support::read_from_start;

const INPUTS: usize = 1_000;

fn produce_inputs(bootstrap: &str, from: usize, to: usize) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    for n in from..to {
        let (key, value) = (format!("k{}", n % 17), n.to_string());
        producer
            .send(BaseRecord::to("in").key(&key).payload(&value))
            .unwrap();
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

/// The value of every message of `topic` (3 partitions), from the beginning, read until
/// `expected` arrived or `within` passed, and whatever else is already there.
fn read_all(bootstrap: &str, topic: &str, expected: usize, within: Duration) -> Vec<String> {
    read_from_start(bootstrap, topic, within, Duration::from_millis(500), |m| {
        m.len() >= expected
    })
    .iter()
    .map(|m| String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned())
    .collect()
}

fn cluster() -> (
    MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    String,
) {
    let cluster = MockCluster::new(1).unwrap();
    for topic in ["in", "out", "in.dlq"] {
        cluster.create_topic(topic, 3, 1).unwrap();
    }
    let bootstrap = cluster.bootstrap_servers();
    (cluster, bootstrap)
}

fn config(bootstrap: &str, transactional_id: &str) -> ExactlyOnceConfig {
    let mut config = ExactlyOnceConfig::new(
        ConsumerConfig::new(bootstrap, "doubler", &["in"]),
        transactional_id,
    );
    config.max_batch = 100;
    config
}

/// Doubles n into `out`; inputs with n % 100 == 7 are poison; input 500 fails once (transiently).
fn doubler() -> impl FnMut(eventfold_kafka::Inbound) -> std::future::Ready<Transformed> {
    let mut failed_once = false;
    move |m| std::future::ready(double(&m, &mut failed_once))
}

fn double(m: &eventfold_kafka::Inbound, failed_once: &mut bool) -> Transformed {
    let n: usize = match std::str::from_utf8(&m.payload)
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(n) => n,
        None => return Transformed::Poison("value: not a number".into()),
    };
    if n % 100 == 7 {
        return Transformed::Poison(format!("{n}: refused"));
    }
    if n == 500 && !*failed_once {
        *failed_once = true;
        return Transformed::Retry("downstream hiccup".into());
    }
    Transformed::Emit(vec![Outbound {
        topic: "out".into(),
        key: m.key.clone(),
        headers: vec![("source_offset".into(), m.offset.to_string())],
        payload: format!("{n}->{}", n * 2).into_bytes(),
    }])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_input_is_committed_once_with_its_outputs_and_poison_is_dead_lettered() {
    let (cluster, bootstrap) = cluster();
    produce_inputs(&bootstrap, 0, INPUTS);
    // The group moved on (a rebalance, KIP-447) while the first transaction was open: its offset
    // commit is refused, the transaction aborted and the batch tried again.
    cluster.request_errors(
        RDKafkaApiKey::TxnOffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_ILLEGAL_GENERATION],
    );
    let (tx, rx) = oneshot::channel::<()>();
    let worker = {
        let config = config(&bootstrap, "doubler-1");
        tokio::spawn(async move {
            run_exactly_once(&config, doubler(), async {
                let _ = rx.await;
            })
            .await
        })
    };
    let poison = INPUTS / 100;
    let good = INPUTS - poison;
    let b = bootstrap.clone();
    let seen =
        tokio::task::spawn_blocking(move || read_all(&b, "out", good, Duration::from_secs(60)))
            .await
            .unwrap();
    let _ = tx.send(());
    let stats: ExactlyOnceStats = worker.await.unwrap().unwrap();
    println!("{stats:?}; {} messages on the output topic", seen.len());

    // Every input's offset was committed exactly once, in a transaction with its outputs.
    assert_eq!(stats.inputs, INPUTS as u64, "{stats:?}");
    assert_eq!(stats.outputs, good as u64, "{stats:?}");
    assert_eq!(stats.dead_lettered, poison as u64, "{stats:?}");
    // The refused offset commit and input 500's failure each aborted a batch, tried again.
    assert_eq!(stats.aborted, 2, "{stats:?}");
    assert!(stats.aborted_outputs > 0, "{stats:?}");
    // Every good input's output is there once from a committed transaction; the mock (no
    // transaction markers) may also show outputs of the aborted transactions that reached it
    // before the abort, which a real broker hides from read_committed readers: never more.
    let distinct: HashSet<&String> = seen.iter().collect();
    let expected: HashSet<String> = (0..INPUTS)
        .filter(|n| n % 100 != 7)
        .map(|n| format!("{n}->{}", n * 2))
        .collect();
    assert_eq!(distinct.len(), good);
    assert!(expected.iter().all(|v| distinct.contains(v)));
    assert!(
        seen.len() as u64 >= stats.outputs
            && seen.len() as u64 <= stats.outputs + stats.aborted_outputs
    );
    // Poison went to the dead-letter topic with its reason.
    let dead = read_all(&bootstrap, "in.dlq", poison, Duration::from_secs(20));
    let mut dead: Vec<usize> = dead.iter().map(|v| v.parse().unwrap()).collect();
    dead.sort_unstable();
    assert_eq!(
        dead,
        (0..INPUTS).filter(|n| n % 100 == 7).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_worker_stops_with_the_error() {
    let (cluster, bootstrap) = cluster();
    produce_inputs(&bootstrap, 0, 200);
    let (_keep, rx) = oneshot::channel::<()>();
    let zombie = {
        let config = config(&bootstrap, "doubler-fenced");
        tokio::spawn(async move {
            run_exactly_once(&config, doubler(), async {
                let _ = rx.await;
            })
            .await
        })
    };
    let b = bootstrap.clone();
    let before =
        tokio::task::spawn_blocking(move || read_all(&b, "out", 198, Duration::from_secs(30)))
            .await
            .unwrap();
    assert_eq!(before.len(), 198, "the worker committed its first inputs");
    // What a real broker answers a zombie once a newer incarnation initialised the same
    // transactional.id (the mock gives every incarnation its own producer id instead, see below).
    cluster.request_errors(
        RDKafkaApiKey::EndTxn,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_PRODUCER_FENCED],
    );
    let b = bootstrap.clone();
    tokio::task::spawn_blocking(move || produce_inputs(&b, 200, 300))
        .await
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(60), zombie)
        .await
        .expect("the fenced worker stops")
        .unwrap();
    let err = outcome.expect_err("a fenced worker cannot go on");
    assert!(
        matches!(&err, KafkaError::Transaction(t) if t.is_fatal())
            && matches!(
                err.rdkafka_error_code(),
                Some(RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced)
            ),
        "fenced, not {err:?}"
    );
}

/// The mock cluster's gaps, shown so that we notice when a newer librdkafka closes them (and
/// then assert read_committed visibility, zombie fencing and restarts directly above).
#[test]
fn mock_gap_no_transaction_markers_no_zombie_fencing_no_transactional_offsets() {
    let (_cluster, bootstrap) = cluster();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("transactional.id", "gap")
        .create()
        .unwrap();
    producer.init_transactions(Duration::from_secs(10)).unwrap();
    producer.begin_transaction().unwrap();
    producer
        .send(BaseRecord::to("out").key("k").payload("aborted"))
        .unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();
    producer.abort_transaction(Duration::from_secs(10)).unwrap();

    // A second incarnation with the same transactional.id gets a producer id of its own: the
    // first is not fenced and still commits.
    let second: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("transactional.id", "gap")
        .create()
        .unwrap();
    second.init_transactions(Duration::from_secs(10)).unwrap();
    producer.begin_transaction().unwrap();
    producer
        .send(BaseRecord::to("out").key("k").payload("zombie"))
        .unwrap();
    assert!(
        producer.commit_transaction(Duration::from_secs(10)).is_ok(),
        "the mock fenced a zombie: test fencing by a second incarnation in exactly_once.rs"
    );

    let shown = read_all(&bootstrap, "out", 2, Duration::from_secs(5));
    assert_eq!(
        shown,
        ["aborted", "zombie"],
        "the mock hid an aborted message from a read_committed reader: it writes transaction markers \
         now; assert read_committed visibility in the exactly-once tests"
    );

    // Offsets sent in a committed transaction are not stored by the mock.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "gap-group")
        .create()
        .unwrap();
    consumer.subscribe(&["in"]).unwrap();
    let started = Instant::now();
    while consumer.assignment().map(|a| a.count()).unwrap_or(0) == 0 {
        let _ = consumer.poll(Duration::from_millis(100));
        assert!(started.elapsed() < Duration::from_secs(30), "no assignment");
    }
    producer.begin_transaction().unwrap();
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset("in", 0, Offset::Offset(5))
        .unwrap();
    producer
        .send_offsets_to_transaction(
            &offsets,
            &consumer.group_metadata().unwrap(),
            Duration::from_secs(10),
        )
        .unwrap();
    producer
        .commit_transaction(Duration::from_secs(10))
        .unwrap();
    let committed = consumer
        .committed_offsets(offsets, Duration::from_secs(10))
        .unwrap();
    let stored: HashMap<i32, Offset> = committed
        .elements()
        .iter()
        .map(|e| (e.partition(), e.offset()))
        .collect();
    assert_ne!(
        stored.get(&0),
        Some(&Offset::Offset(5)),
        "the mock stores transactional offset commits now: add a restart test to exactly_once.rs"
    );
}
