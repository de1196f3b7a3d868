//! Static membership (KIP-345) on librdkafka's mock cluster (Tansu's static members fetch
//! nothing; see `tansu_gaps.rs`): while a member with a `group.instance.id` restarts within the
//! session timeout, its partitions wait for it (nobody else is assigned them: no rebalance) and
//! it gets them back; a dynamic member's partitions move to the rest of the group at once.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::ClientConfig;

fn member(bootstrap: &str, instance: Option<&str>) -> BaseConsumer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "members")
        // The mock cluster implements static membership for the KIP-848 consumer protocol (its
        // classic-protocol group rebalances on every join); a real Kafka broker does it for both.
        .set("group.protocol", "consumer")
        .set("enable.auto.commit", "false");
    if let Some(id) = instance {
        config.set("group.instance.id", id);
    }
    let consumer: BaseConsumer = config.create().unwrap();
    consumer.subscribe(&["members"]).unwrap();
    consumer
}

fn assigned(c: &BaseConsumer) -> usize {
    c.assignment().map(|a| a.count()).unwrap_or(0)
}

/// Polls both members for `d`.
fn poll_both(a: &BaseConsumer, b: &BaseConsumer, d: Duration) {
    let started = Instant::now();
    while started.elapsed() < d {
        let _ = a.poll(Duration::from_millis(20));
        let _ = b.poll(Duration::from_millis(20));
    }
}

/// What member `b` held while member `a` was away and after it came back: (the most partitions
/// `b` held while `a` was gone, `a`'s partitions after its restart, `b`'s after).
fn b_while_a_restarts(static_a: bool) -> (usize, usize, usize) {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("members", 4, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let instance = static_a.then_some("member-a");
    let a = member(&bootstrap, instance);
    let b = member(&bootstrap, Some("member-b"));
    let started = Instant::now();
    while assigned(&a) != 2 || assigned(&b) != 2 {
        poll_both(&a, &b, Duration::from_millis(200));
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "group never settled"
        );
    }
    // `a` goes away for longer than the group's heartbeat interval (5 s), well within its
    // session timeout (45 s): a rolling restart.
    drop(a);
    let mut most = 0;
    let away = Instant::now();
    while away.elapsed() < Duration::from_secs(7) {
        let _ = b.poll(Duration::from_millis(50));
        most = most.max(assigned(&b));
    }
    let a = member(&bootstrap, instance);
    let started = Instant::now();
    while assigned(&a) == 0 || assigned(&a) + assigned(&b) != 4 {
        poll_both(&a, &b, Duration::from_millis(200));
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "restarted member got nothing"
        );
    }
    (most, assigned(&a), assigned(&b))
}

#[test]
fn a_static_member_restart_keeps_the_assignment_and_a_dynamic_one_moves_it() {
    let fixed = b_while_a_restarts(true);
    let dynamic = b_while_a_restarts(false);
    println!(
        "other member's partitions while a restarted (most while away, a after, b after): static {fixed:?}, dynamic {dynamic:?}"
    );
    assert_eq!(
        fixed,
        (2, 2, 2),
        "a static member's partitions waited for it"
    );
    assert_eq!(
        dynamic.0, 4,
        "a dynamic member's partitions moved to the other member"
    );
}
