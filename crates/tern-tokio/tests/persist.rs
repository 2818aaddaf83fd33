//! The server with persistence, over real sockets: what it acknowledged is
//! there after a restart, and a store that cannot write gets clients
//! disconnected with Quota exceeded rather than acknowledgements.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_broker::durable::{Change, StoredDelivery};
use tern_client::{ClientConfig, DisconnectReason, Message};
use tern_codec::{
    MqttString, ProtocolVersion, QoS, ReasonCode, SubscribeFilter, SubscriptionOptions,
    TopicFilter, TopicName,
};
use tern_store::{KvStore, Loaded, MemEngine, Store, StoreError};
use tern_tokio::{
    AsyncClient, AsyncEvent, ClientOptions, Events, Persistence, Server, ServerConfig,
};
use tokio::sync::oneshot;
use tokio::time::timeout;

/// Every wait is for an event; this only bounds a broken one.
const LIMIT: Duration = Duration::from_secs(20);

/// A store in memory that outlives the servers of one test, and whose
/// disk can fill up.
struct Shared {
    inner: KvStore<MemEngine>,
    full: Arc<AtomicBool>,
}

impl Store for Shared {
    fn commit(&mut self, changes: &[(u64, Change)], sync: bool) -> Result<(), StoreError> {
        self.inner.engine_mut().full = self.full.load(Ordering::SeqCst);
        self.inner.commit(changes, sync)
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.inner.sync()
    }

    fn load(&mut self, window: usize) -> Result<Loaded, StoreError> {
        self.inner.load(window)
    }

    fn fetch(
        &mut self,
        client_id: &MqttString,
        from: u64,
        max: usize,
    ) -> Result<Vec<StoredDelivery>, StoreError> {
        self.inner.fetch(client_id, from, max)
    }
}

/// A server on a free port with `store`; stopped (gracefully) by the
/// sender, which the returned future's end follows.
async fn serve(
    store: &Arc<Mutex<Box<dyn Store>>>,
) -> (
    u16,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let config = ServerConfig {
        tcp: vec!["127.0.0.1:0".parse().expect("address")],
        shards: 2,
        persistence: Some(Persistence {
            store: store.clone(),
            relaxed: None,
        }),
        // A small window: a long queue comes back in many fetches.
        broker: tern_broker::Config {
            queue_window: 16,
            ..tern_broker::Config::default()
        },
        ..ServerConfig::default()
    };
    let server = Server::bind(config).await.expect("bound");
    let port = server.local_addrs().expect("address")[0].port();
    let (stop, stopped) = oneshot::channel();
    let run = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    (port, stop, run)
}

fn persistent(id: &str, port: u16) -> ClientOptions {
    let mut c = ClientConfig::new(id).with_version(ProtocolVersion::V5);
    c.session_expiry_interval = 3600;
    let mut o = ClientOptions::new(c, "127.0.0.1", port);
    o.reconnect = None;
    o
}

async fn next_message(events: &mut Events) -> String {
    loop {
        match timeout(LIMIT, events.recv()).await.expect("in time") {
            Some(AsyncEvent::Message(d)) => {
                return String::from_utf8_lossy(&d.message.payload).into_owned()
            }
            Some(_) => {}
            None => panic!("the client stopped"),
        }
    }
}

#[tokio::test]
async fn what_was_acknowledged_is_there_after_a_restart() {
    let full = Arc::new(AtomicBool::new(false));
    let store: Arc<Mutex<Box<dyn Store>>> = Arc::new(Mutex::new(Box::new(Shared {
        inner: KvStore::new(MemEngine::default()),
        full: full.clone(),
    })));
    let (port, stop, run) = serve(&store).await;
    let (s, mut se) = AsyncClient::start(persistent("sub", port)).expect("valid");
    timeout(LIMIT, se.first_connection())
        .await
        .expect("in time")
        .expect("connected");
    let f = SubscribeFilter {
        filter: TopicFilter::new("home/#").expect("valid"),
        options: SubscriptionOptions::new(QoS::ExactlyOnce),
    };
    s.subscribe(vec![f]).await.expect("subscribed");
    s.disconnect().await;
    let (p, mut pe) = AsyncClient::start(persistent("pub", port)).expect("valid");
    timeout(LIMIT, pe.first_connection())
        .await
        .expect("in time")
        .expect("connected");
    for (i, qos) in [QoS::AtLeastOnce, QoS::ExactlyOnce].into_iter().enumerate() {
        let m = Message::new(TopicName::new("home/door").expect("valid"), format!("m{i}"))
            .with_qos(qos)
            .with_retain(i == 1);
        p.publish(m).await.expect("acknowledged");
    }
    p.disconnect().await;
    let _ = stop.send(());
    run.await.expect("joined").expect("stopped");

    // A new server on the same store: the session, its subscription, the
    // two messages queued for it and the retained one.
    let (port, stop, run) = serve(&store).await;
    let mut o = persistent("sub", port);
    o.config.clean_start = false;
    let (s, mut se) = AsyncClient::start(o).expect("valid");
    let c = timeout(LIMIT, se.first_connection())
        .await
        .expect("in time")
        .expect("connected");
    assert!(c.session_present);
    assert_eq!(next_message(&mut se).await, "m0");
    assert_eq!(next_message(&mut se).await, "m1");
    s.disconnect().await;
    let (late, mut le) = AsyncClient::start(persistent("late", port)).expect("valid");
    timeout(LIMIT, le.first_connection())
        .await
        .expect("in time")
        .expect("connected");
    let f = SubscribeFilter {
        filter: TopicFilter::new("home/door").expect("valid"),
        options: SubscriptionOptions::new(QoS::AtMostOnce),
    };
    late.subscribe(vec![f]).await.expect("subscribed");
    assert_eq!(next_message(&mut le).await, "m1", "the retained message");
    late.disconnect().await;
    let _ = stop.send(());
    run.await.expect("joined").expect("stopped");
}

#[tokio::test]
async fn a_long_queue_waits_in_the_store_and_comes_back_in_order() {
    let store: Arc<Mutex<Box<dyn Store>>> = Arc::new(Mutex::new(Box::new(Shared {
        inner: KvStore::new(MemEngine::default()),
        full: Arc::new(AtomicBool::new(false)),
    })));
    let (port, stop, run) = serve(&store).await;
    let (s, mut se) = AsyncClient::start(persistent("sub", port)).expect("valid");
    timeout(LIMIT, se.first_connection())
        .await
        .expect("in time")
        .expect("connected");
    let f = SubscribeFilter {
        filter: TopicFilter::new("q/#").expect("valid"),
        options: SubscriptionOptions::new(QoS::AtLeastOnce),
    };
    s.subscribe(vec![f]).await.expect("subscribed");
    s.disconnect().await;
    let (p, mut pe) = AsyncClient::start(persistent("pub", port)).expect("valid");
    timeout(LIMIT, pe.first_connection())
        .await
        .expect("in time")
        .expect("connected");
    // Offline, all of it is in the store only; back, the session takes it
    // in fetches of up to 16 (a window of 16 in memory).
    const N: usize = 900;
    for i in 0..N {
        let m = Message::new(TopicName::new("q/x").expect("valid"), format!("{i}"))
            .with_qos(QoS::AtLeastOnce);
        p.publish(m).await.expect("acknowledged");
    }
    p.disconnect().await;
    let _ = stop.send(());
    run.await.expect("joined").expect("stopped");
    // After a restart, the subscriber gets them all, in order, fetched as
    // its queue drains.
    let (port, stop, run) = serve(&store).await;
    let mut o = persistent("sub", port);
    o.config.clean_start = false;
    let (s, mut se) = AsyncClient::start(o).expect("valid");
    let c = timeout(LIMIT, se.first_connection())
        .await
        .expect("in time")
        .expect("connected");
    assert!(c.session_present);
    for i in 0..N {
        assert_eq!(next_message(&mut se).await, i.to_string());
    }
    s.disconnect().await;
    let _ = stop.send(());
    run.await.expect("joined").expect("stopped");
}

#[tokio::test]
async fn a_full_disk_gets_quota_exceeded_not_an_acknowledgement() {
    let full = Arc::new(AtomicBool::new(false));
    let store: Arc<Mutex<Box<dyn Store>>> = Arc::new(Mutex::new(Box::new(Shared {
        inner: KvStore::new(MemEngine::default()),
        full: full.clone(),
    })));
    let (port, stop, run) = serve(&store).await;
    let (p, mut pe) = AsyncClient::start(persistent("pub", port)).expect("valid");
    timeout(LIMIT, pe.first_connection())
        .await
        .expect("in time")
        .expect("connected");
    full.store(true, Ordering::SeqCst);
    // Retained: a change the store must keep before the PUBACK.
    let m = Message::new(TopicName::new("t").expect("valid"), "x")
        .with_qos(QoS::AtLeastOnce)
        .with_retain(true);
    let publish = tokio::spawn(async move { p.publish(m).await });
    loop {
        match timeout(LIMIT, pe.recv()).await.expect("in time") {
            Some(AsyncEvent::Disconnected(DisconnectReason::Server { reason, .. })) => {
                assert_eq!(reason, ReasonCode::QuotaExceeded);
                break;
            }
            Some(_) => {}
            None => panic!("stopped before the DISCONNECT"),
        }
    }
    // Not acknowledged: the client stopped (no reconnect) without one.
    let outcome = timeout(LIMIT, publish)
        .await
        .expect("in time")
        .expect("joined");
    assert!(outcome.is_err(), "{outcome:?}");
    full.store(false, Ordering::SeqCst);
    let _ = stop.send(());
    run.await.expect("joined").expect("stopped");
}
