//! Faults of the outbox relay that must lose nothing: the relay *process* is killed with SIGKILL 20
//! times at random moments while 100,000 events are appended; afterwards every event is on the
//! topic at least once, the first arrivals of each key are in stream order, and an inbox that
//! applies one effect per message (a deposit keyed by the message's event id) applies each exactly
//! once. And relays sharing the work in a group: one is SIGKILLed, the other takes over its shards.

use std::collections::{HashMap, HashSet};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventfold_app::service::{AsOf, CommandContext, Executed, Service};
use eventfold_core::{
    testkit, Actor, AppendRequest, EventStore, ExpectedVersion, NewEvent, StoredResponse,
};
use eventfold_domain::account::{Account, AccountCommand};
use eventfold_domain::{Currency, Money};
use eventfold_kafka::testing::broker;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::ClientConfig;

use crate::KillOnDrop;

const EVENTS: u64 = 100_000;
const STREAMS: u64 = 500;

fn event(n: u64) -> NewEvent {
    testkit::event(
        "Happened",
        Actor::system("kill-test"),
        format!("{{\"n\":{n}}}"),
    )
}

/// (event id, stream id, stream version) of every message on `topic`, in partition order.
fn read_topic(bootstrap: &str, topic: &str, at_least: usize) -> Vec<(String, String, u64)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set(
            "group.id",
            format!("kill-reader-{}", uuid::Uuid::now_v7().simple()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let started = Instant::now();
    let mut idle = 0;
    while started.elapsed() < Duration::from_secs(120) && (out.len() < at_least || idle < 20) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                idle = 0;
                let mut h: HashMap<&str, String> = HashMap::new();
                for header in m.headers().unwrap().iter() {
                    if matches!(header.key, "event_id" | "stream_id" | "stream_version") {
                        h.insert(
                            header.key,
                            String::from_utf8_lossy(header.value.unwrap()).into_owned(),
                        );
                    }
                }
                out.push((
                    h["event_id"].clone(),
                    h["stream_id"].clone(),
                    h["stream_version"].parse().unwrap(),
                ));
            }
            _ => idle += 1,
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_killed_20_times_loses_nothing_and_the_inbox_applies_each_effect_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kill.db");
    let url = format!("sqlite://{}", path.display());
    let store: Arc<dyn EventStore> = Arc::new(eventfold_sqlite::SqliteStore::open(&path).unwrap());
    let prefix = format!("kill{}", uuid::Uuid::now_v7().simple());
    let relay = |once: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_eventfold"));
        c.args([
            "relay",
            "--kafka-brokers",
            &broker(),
            "--kafka-topic-prefix",
            &prefix,
        ])
        .env("EVENTFOLD_STORE", &url)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if once {
            c.arg("--once");
        }
        c
    };

    // Appends: 100,000 events over 500 streams, in the background.
    let appender = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut versions = vec![0u64; STREAMS as usize];
            let mut n = 0;
            while n < EVENTS {
                let batch: Vec<AppendRequest> = (0..2_000)
                    .map(|i| {
                        let s = ((n + i) % STREAMS) as usize;
                        let expected = if versions[s] == 0 {
                            ExpectedVersion::NoStream
                        } else {
                            ExpectedVersion::Exact(versions[s])
                        };
                        versions[s] += 1;
                        AppendRequest::new(format!("kill-{s}"), expected, vec![event(n + i)])
                    })
                    .collect();
                n += 2_000;
                for r in store.append_many(batch).await.unwrap() {
                    r.unwrap();
                }
                // Spread the appends over the whole kill phase (about 12 s).
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    // Kill the relay 20 times at random moments.
    let mut kills = 0;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    for i in 0..20u64 {
        let mut child = KillOnDrop(relay(false).spawn().expect("start the relay"));
        let wait = 300
            + (seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(i.wrapping_mul(1442695040888963407))
                >> 33)
                % 700;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        child.0.kill().expect("SIGKILL the relay");
        child.0.wait().unwrap();
        kills += 1;
    }
    appender.await.unwrap();
    assert_eq!(kills, 20);
    // The killed relays made progress (the kills hit working relays, not just starting ones).
    let mut progressed = 0;
    for shard in 0..16 {
        let name = format!("relay:{prefix}:pk:{shard}");
        progressed += store.load_checkpoint(&name).await.unwrap().unwrap_or(0);
    }
    assert!(
        progressed > 0,
        "no relay got to publish before it was killed"
    );
    let done = relay(true).output().unwrap();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );

    let messages = tokio::task::spawn_blocking({
        let topic = format!("{prefix}.kill");
        move || read_topic(&broker(), &topic, EVENTS as usize)
    })
    .await
    .unwrap();
    let mut first = HashSet::new();
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut violations = 0;
    for (id, stream, version) in &messages {
        if first.insert(id.clone()) {
            let previous = last.insert(stream.clone(), *version).unwrap_or(0);
            if *version != previous + 1 {
                violations += 1;
            }
        }
    }
    println!(
        "{} messages for {EVENTS} events after 20 kills ({} republished)",
        messages.len(),
        messages.len() as u64 - first.len() as u64
    );
    assert_eq!(first.len() as u64, EVENTS, "every event at least once");
    assert_eq!(violations, 0, "first arrivals per key in stream order");

    // The inbox: one deposit of 0.01 per message, keyed by its event id; duplicates change nothing.
    let effects = tempfile::tempdir().unwrap();
    let service = Service::new(Arc::new(
        eventfold_sqlite::SqliteStore::open(effects.path().join("effects.db")).unwrap(),
    ));
    let render = || {
        Box::new(|_: &Account, _: u64| StoredResponse {
            status: 200,
            body: String::new(),
        })
    };
    let ctx = CommandContext::new(Actor::system("inbox"));
    let open = AccountCommand::Open {
        owner: "effects".into(),
        currency: Currency::USD,
        actor: Actor::system("inbox"),
    };
    service
        .execute::<Account>("effects", open, &ctx, render())
        .await
        .unwrap();
    let cent = Money::parse("0.01", Currency::USD).unwrap();
    let messages = Arc::new(messages);
    let workers: Vec<_> = (0..16)
        .map(|w| {
            let (service, messages) = (service.clone(), messages.clone());
            tokio::spawn(async move {
                let mut applied = 0u64;
                for (id, _, _) in messages.iter().skip(w).step_by(16) {
                    let mut ctx = CommandContext::new(Actor::system("inbox"));
                    ctx.idempotency = Some((format!("inbox:effects:{id}"), "deposit".into()));
                    let deposit = AccountCommand::Deposit {
                        amount: cent,
                        actor: Actor::system("inbox"),
                    };
                    let render = Box::new(|_: &Account, _: u64| StoredResponse {
                        status: 200,
                        body: String::new(),
                    });
                    match service
                        .execute::<Account>("effects", deposit, &ctx, render)
                        .await
                        .unwrap()
                    {
                        Executed::Applied { events: 1, .. } => applied += 1,
                        Executed::Replayed(_) => {}
                        other => panic!("{other:?}"),
                    }
                }
                applied
            })
        })
        .collect();
    let mut applied = 0;
    for w in workers {
        applied += w.await.unwrap();
    }
    assert_eq!(applied, EVENTS, "one effect per event");
    let account = service
        .load::<Account>("effects", AsOf::Latest)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        account.state.balance,
        Some(Money::parse("1000.00", Currency::USD).unwrap())
    );
    assert_eq!(account.version, EVENTS + 1);
}

/// Appends `n` events round-robin over `streams` streams named `{prefix}-{i}` (continuing their
/// versions in `versions`).
async fn append_round(store: &Arc<dyn EventStore>, prefix: &str, versions: &mut [u64], n: u64) {
    let streams = versions.len() as u64;
    let batch: Vec<AppendRequest> = (0..n)
        .map(|i| {
            let s = (i % streams) as usize;
            let expected = if versions[s] == 0 {
                ExpectedVersion::NoStream
            } else {
                ExpectedVersion::Exact(versions[s])
            };
            versions[s] += 1;
            AppendRequest::new(format!("{prefix}-{s}"), expected, vec![event(i)])
        })
        .collect();
    for r in store.append_many(batch).await.unwrap() {
        r.unwrap();
    }
}

/// Waits until every shard's checkpoint reached the head (at most `within`); the shards still
/// behind.
async fn caught_up(store: &Arc<dyn EventStore>, prefix: &str, within: Duration) -> Vec<u32> {
    let head = store.head_position().await.unwrap();
    let started = Instant::now();
    loop {
        let mut behind = Vec::new();
        for shard in 0..16 {
            let cp = store
                .load_checkpoint(&format!("relay:{prefix}:pk:{shard}"))
                .await
                .unwrap()
                .unwrap_or(0);
            if cp < head {
                behind.push(shard);
            }
        }
        if behind.is_empty() || started.elapsed() > within {
            return behind;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// On librdkafka's mock cluster, because Tansu 0.6 never evicts a group member that stopped
/// heartbeating (`tansu_gaps.rs` in eventfold-kafka): the relays are separate processes connected
/// to the mock's listener, and the topics are made beforehand (the mock has no CreateTopics).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_group_relays_shards_are_taken_over_by_the_other() {
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("group.db");
    let url = format!("sqlite://{}", path.display());
    let store: Arc<dyn EventStore> = Arc::new(eventfold_sqlite::SqliteStore::open(&path).unwrap());
    let prefix = format!("grp{}", uuid::Uuid::now_v7().simple());
    cluster
        .create_topic(&format!("{prefix}.order"), 3, 1)
        .unwrap();
    cluster
        .create_topic(&format!("{prefix}.relay-shards"), 16, 1)
        .unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let relay = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_eventfold"));
        c.args([
            "relay",
            "--kafka-brokers",
            &bootstrap,
            "--kafka-topic-prefix",
            &prefix,
            "--no-create-topics",
            "--group",
            &format!("{prefix}-relays"),
        ])
        .env("EVENTFOLD_STORE", &url)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        KillOnDrop(c.spawn().expect("start a relay"))
    };
    let topic = format!("{prefix}.order");
    let mut versions = vec![0u64; 64];
    let _a = relay();
    let mut b = relay();
    append_round(&store, "order", &mut versions, 1_000).await;
    let published = caught_up(&store, &prefix, Duration::from_secs(60)).await;
    assert!(published.is_empty(), "shards {published:?} never published");
    let (t, b2) = (topic.clone(), bootstrap.clone());
    let before = tokio::task::spawn_blocking(move || read_topic(&b2, &t, 1_000))
        .await
        .unwrap();
    let ids: HashSet<&String> = before.iter().map(|(id, _, _)| id).collect();
    assert_eq!(
        ids.len(),
        1_000,
        "both relays running: everything published"
    );

    b.0.kill().expect("SIGKILL relay b");
    b.0.wait().unwrap();
    let killed = Instant::now();
    append_round(&store, "order", &mut versions, 1_000).await;
    // Every shard's checkpoint reaches the head: the survivor publishes the dead relay's shards
    // once the group coordinator evicts it (session timeout, 10 s) and the group rebalances.
    let behind = caught_up(&store, &prefix, Duration::from_secs(40)).await;
    assert!(behind.is_empty(), "shards {behind:?} not taken over");
    let took = killed.elapsed();
    println!("the survivor published the killed relay's shards {took:?} after the kill");
    let all = tokio::task::spawn_blocking(move || read_topic(&bootstrap, &topic, 2_000))
        .await
        .unwrap();
    let ids: HashSet<&String> = all.iter().map(|(id, _, _)| id).collect();
    assert_eq!(ids.len(), 2_000, "every event reached the topic");
}
