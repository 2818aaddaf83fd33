//! The async client against real brokers over real sockets: the Debian
//! `mosquitto` broker (started here on a free port) and tern's own server,
//! over TCP, TLS and WebSocket, with a proxy the tests can cut.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_client::{ClientConfig, DisconnectReason, Message};
use tern_codec::{
    ProtocolVersion, QoS, ReasonCode, SubscribeFilter, SubscriptionOptions, TopicFilter, TopicName,
};
use tern_tokio::{
    AsyncClient, AsyncEvent, Backoff, ClientError, ClientOptions, Events, Server, ServerConfig,
    TlsSettings, Transport,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::timeout;

use tern_peers::{make_ca, make_pki, scratch, Mosquitto};

/// Every wait in these tests is for an event; this only bounds a broken one.
const LIMIT: Duration = Duration::from_secs(20);

/// Tern's server in this process, on free ports: TCP, WebSocket, and TLS
/// when given settings.
struct Tern {
    tcp: SocketAddr,
    ws: SocketAddr,
    tls: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
}

impl Tern {
    async fn start(tls: Option<TlsSettings>) -> Tern {
        let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
        let mut config = ServerConfig {
            tcp: vec![any],
            ws: vec![(any, "/mqtt".into())],
            shards: 1,
            ..ServerConfig::default()
        };
        if let Some(t) = tls {
            config.tls = vec![(any, t)];
        }
        let has_tls = !config.tls.is_empty();
        let server = Server::bind(config).await.expect("bound");
        let addrs = server.local_addrs().expect("addresses");
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Tern {
            tcp: addrs[0],
            tls: has_tls.then(|| addrs[1]),
            ws: addrs[if has_tls { 2 } else { 1 }],
            stop: Some(stop),
        }
    }
}

impl Drop for Tern {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A TCP proxy whose connections a test can cut.
struct Proxy {
    port: u16,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    async fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bound");
        let port = listener.local_addr().expect("address").port();
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let c = conns.clone();
        tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                let task = tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                });
                c.lock().expect("lock").push(task.abort_handle());
            }
        });
        Proxy { port, conns }
    }

    /// Drops every connection through the proxy (both sockets close).
    fn cut(&self) {
        for c in self.conns.lock().expect("lock").drain(..) {
            c.abort();
        }
    }
}

fn options(id: &str, version: ProtocolVersion, port: u16) -> ClientOptions {
    let mut o = ClientOptions::new(
        ClientConfig::new(id).with_version(version),
        "127.0.0.1",
        port,
    );
    o.reconnect = Some(Backoff {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(100),
    });
    o
}

fn filter(f: &str, qos: QoS) -> SubscribeFilter {
    SubscribeFilter {
        filter: TopicFilter::new(f).expect("filter"),
        options: SubscriptionOptions::new(qos),
    }
}

fn message(t: &str, payload: &str, qos: QoS) -> Message {
    Message::new(TopicName::new(t).expect("topic"), payload.to_owned()).with_qos(qos)
}

async fn next_message(m: &mut Events) -> tern_client::Delivery {
    loop {
        match timeout(LIMIT, m.recv()).await.expect("a message in time") {
            Some(AsyncEvent::Message(d)) => return d,
            Some(_) => {}
            None => panic!("the client stopped"),
        }
    }
}

async fn connected(m: &mut Events) -> bool {
    loop {
        match timeout(LIMIT, m.recv()).await.expect("connected in time") {
            Some(AsyncEvent::Connected {
                session_present, ..
            }) => return session_present,
            Some(AsyncEvent::Message(d)) => panic!("message before connected: {d:?}"),
            Some(_) => {}
            None => panic!("the client stopped"),
        }
    }
}

async fn round_trip(port: u16, version: ProtocolVersion) {
    let (sub, mut sub_rx) =
        AsyncClient::start(options("rt-sub", version, port)).expect("a valid configuration");
    connected(&mut sub_rx).await;
    let granted = sub
        .subscribe(vec![filter("home/+/pressed", QoS::ExactlyOnce)])
        .await
        .expect("subscribed");
    assert_eq!(granted, [ReasonCode::GrantedQoS2]);
    let (publ, _pub_rx) =
        AsyncClient::start(options("rt-pub", version, port)).expect("a valid configuration");
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let m = message("home/doorbell/pressed", &i.to_string(), qos);
        let r = timeout(LIMIT, publ.publish(m)).await.expect("in time");
        assert!(
            matches!(r, Ok(c) if !c.is_error()),
            "{version} {qos:?}: {r:?}"
        );
    }
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let d = next_message(&mut sub_rx).await;
        assert_eq!(d.message.payload, i.to_string().as_bytes(), "{version}");
        assert_eq!(d.message.qos, qos);
        assert_eq!(d.ack, None, "acknowledged by taking it");
    }
    publ.disconnect().await;
    sub.disconnect().await;
    assert!(sub_rx
        .recv()
        .await
        .is_some_and(|i| matches!(i, AsyncEvent::Disconnected(DisconnectReason::Local))));
    assert_eq!(sub_rx.recv().await, None, "the stream ends with the client");
    assert_eq!(
        publ.publish(message("t", "late", QoS::AtMostOnce)).await,
        Err(ClientError::Closed)
    );
}

#[tokio::test]
async fn qos_0_1_2_through_mosquitto_on_both_versions() {
    let m = Mosquitto::start();
    for v in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        round_trip(m.port, v).await;
    }
}

#[tokio::test]
async fn qos_0_1_2_through_tern_on_both_versions() {
    let t = Tern::start(None).await;
    for v in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        round_trip(t.tcp.port(), v).await;
    }
}

/// A handler that publishes (and waits for the acknowledgement) for every
/// message it takes, with every queue at its smallest, must not deadlock.
async fn publish_from_the_handler(port: u16) {
    let mut o = options("echo", ProtocolVersion::V5, port);
    o.capacity = 1;
    o.config.max_inflight = 1;
    o.config.max_queued = 1;
    o.config.receive_maximum = 1;
    let (echo, mut rx) = AsyncClient::start(o).expect("a valid configuration");
    connected(&mut rx).await;
    echo.subscribe(vec![filter("ping", QoS::AtLeastOnce)])
        .await
        .expect("subscribed");
    let handler = tokio::spawn(async move {
        for _ in 0..200 {
            let d = next_message(&mut rx).await;
            let reply = message(
                "pong",
                std::str::from_utf8(&d.message.payload).expect("utf8"),
                QoS::AtLeastOnce,
            );
            echo.publish(reply).await.expect("reply acknowledged");
        }
        echo.disconnect().await;
    });
    let (sink, mut sink_rx) = AsyncClient::start(options("sink", ProtocolVersion::V5, port))
        .expect("a valid configuration");
    connected(&mut sink_rx).await;
    sink.subscribe(vec![filter("pong", QoS::AtLeastOnce)])
        .await
        .expect("subscribed");
    let (publ, _p) = AsyncClient::start(options("pinger", ProtocolVersion::V5, port))
        .expect("a valid configuration");
    let sender = tokio::spawn(async move {
        for i in 0..200 {
            publ.publish(message("ping", &i.to_string(), QoS::AtLeastOnce))
                .await
                .expect("ping acknowledged");
        }
    });
    for i in 0..200 {
        let d = next_message(&mut sink_rx).await;
        assert_eq!(d.message.payload, i.to_string().as_bytes());
    }
    timeout(LIMIT, handler)
        .await
        .expect("no deadlock")
        .expect("handler");
    sender.await.expect("sender");
}

#[tokio::test]
async fn publishing_from_the_message_handler_does_not_deadlock() {
    let t = Tern::start(None).await;
    publish_from_the_handler(t.tcp.port()).await;
    let m = Mosquitto::start();
    publish_from_the_handler(m.port).await;
}

/// The link drops: the client reconnects by itself; without a session on
/// the server it subscribes again, with one it resumes and gets what was
/// queued for it meanwhile.
async fn reconnects(port: u16) {
    let proxy = Proxy::start(port).await;
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        // Clean session: resubscribed after the cut.
        let (sub, mut rx) = AsyncClient::start(options("clean", version, proxy.port))
            .expect("a valid configuration");
        assert!(!connected(&mut rx).await);
        sub.subscribe(vec![filter("r/clean", QoS::AtLeastOnce)])
            .await
            .expect("subscribed");
        proxy.cut();
        assert!(!connected(&mut rx).await, "{version}: no session kept");
        match timeout(LIMIT, rx.recv()).await.expect("in time") {
            Some(AsyncEvent::Resubscribed(r)) => {
                assert_eq!(
                    r,
                    [(
                        TopicFilter::new("r/clean").expect("filter"),
                        ReasonCode::GrantedQoS1
                    )]
                )
            }
            other => panic!("{version}: expected the resubscription, got {other:?}"),
        }
        let (publ, _p) =
            AsyncClient::start(options("rpub", version, port)).expect("a valid configuration");
        publ.publish(message("r/clean", "after", QoS::AtLeastOnce))
            .await
            .expect("published");
        let got = next_message(&mut rx).await;
        assert_eq!(got.message.topic.as_str(), "r/clean");
        sub.disconnect().await;

        // Persistent session: messages published while it is away arrive.
        let mut o = options("kept", version, proxy.port);
        if version == ProtocolVersion::V5 {
            o.config.session_expiry_interval = 60;
        } else {
            o.config.clean_start = false;
        }
        o.reconnect = Some(Backoff {
            initial: Duration::from_millis(300),
            max: Duration::from_millis(300),
        });
        let (kept, mut krx) = AsyncClient::start(o).expect("a valid configuration");
        connected(&mut krx).await;
        kept.subscribe(vec![filter("r/kept", QoS::AtLeastOnce)])
            .await
            .expect("subscribed");
        proxy.cut();
        for i in 0..5 {
            publ.publish(message("r/kept", &i.to_string(), QoS::AtLeastOnce))
                .await
                .expect("published");
        }
        assert!(connected(&mut krx).await, "{version}: session resumed");
        for i in 0..5 {
            assert_eq!(
                next_message(&mut krx).await.message.payload,
                i.to_string().as_bytes()
            );
        }
        kept.disconnect().await;
        publ.disconnect().await;
    }
}

#[tokio::test]
async fn reconnects_to_mosquitto() {
    let m = Mosquitto::start();
    reconnects(m.port).await;
}

#[tokio::test]
async fn reconnects_to_tern() {
    let t = Tern::start(None).await;
    reconnects(t.tcp.port()).await;
}

#[tokio::test]
async fn websocket_transport() {
    let t = Tern::start(None).await;
    let mut o = options("ws", ProtocolVersion::V5, 0);
    o.transport = Transport::WebSocket {
        url: format!("ws://127.0.0.1:{}/mqtt", t.ws.port()),
        tls: None,
    };
    let (c, mut rx) = AsyncClient::start(o).expect("a valid configuration");
    connected(&mut rx).await;
    c.subscribe(vec![filter("ws/#", QoS::AtLeastOnce)])
        .await
        .expect("subscribed");
    c.publish(message("ws/echo", "over websocket", QoS::AtLeastOnce))
        .await
        .expect("published");
    assert_eq!(
        next_message(&mut rx).await.message.payload,
        "over websocket".as_bytes()
    );
    c.disconnect().await;
}

/// Options for a TLS connection to `localhost:port` trusting the CA in
/// `dir`.
fn tls_options(id: &str, port: u16, dir: &std::path::Path) -> ClientOptions {
    let config =
        tern_tokio::tls_client_config(Some(&dir.join("ca.pem")), None, None).expect("client TLS");
    let mut o = options(id, ProtocolVersion::V5, port);
    o.transport = Transport::Tls {
        host: "localhost".into(),
        port,
        config,
    };
    o
}

#[tokio::test]
async fn tls_transport_checks_the_server_certificate() {
    let dir = scratch("client-tls");
    make_pki(&dir, "client");
    let settings = TlsSettings::load(
        &dir.join("server.pem"),
        &dir.join("server.key"),
        None,
        false,
    )
    .expect("server TLS");
    let t = Tern::start(Some(settings)).await;
    let port = t.tls.expect("TLS listener").port();

    let (c, mut rx) =
        AsyncClient::start(tls_options("tls", port, &dir)).expect("a valid configuration");
    connected(&mut rx).await;
    c.subscribe(vec![filter("tls", QoS::AtLeastOnce)])
        .await
        .expect("subscribed");
    c.publish(message("tls", "secret", QoS::ExactlyOnce))
        .await
        .expect("published");
    assert_eq!(
        next_message(&mut rx).await.message.payload,
        "secret".as_bytes()
    );
    c.disconnect().await;

    // A CA that did not sign the server's certificate: no connection.
    let other = scratch("client-tls-other");
    make_ca(&other, "Other CA");
    let mut o = tls_options("tls-bad", port, &other);
    o.reconnect = None;
    let (_c, mut rx) = AsyncClient::start(o).expect("a valid configuration");
    match timeout(LIMIT, rx.recv()).await.expect("in time") {
        Some(AsyncEvent::ConnectFailed(e)) => {
            assert!(e.contains("certificate") || e.contains("Unknown"), "{e}")
        }
        other => panic!("expected a failed connect, got {other:?}"),
    }
    assert_eq!(
        rx.recv().await,
        None,
        "no reconnect configured: the client stops"
    );
}

#[tokio::test]
async fn dropping_every_handle_disconnects_and_ends_the_task() {
    use tern_codec::Packet;

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bound");
    let port = listener.local_addr().expect("address").port();
    let mut o = options("dropped", ProtocolVersion::V5, port);
    o.reconnect = Some(Backoff::default());
    let (client, rx) = AsyncClient::start(o).expect("a valid configuration");
    let mut server = Scripted::accept(&listener, ProtocolVersion::V5).await;
    server.handshake(tern_codec::ConnAck::new(false)).await;
    let clone = client.clone();
    drop(client);
    drop(rx);
    // One handle is left: the client stays, and publishes.
    timeout(
        LIMIT,
        clone.publish(message("still", "here", QoS::AtMostOnce)),
    )
    .await
    .expect("in time")
    .expect("written");
    drop(clone);
    // Now DISCONNECT, then the end of the stream, and no reconnect.
    let mut rest = Vec::new();
    while let Some(p) = server.next().await {
        rest.push(p);
    }
    assert!(
        matches!(&rest[..], [Packet::Publish(p), Packet::Disconnect(_)] if p.topic.as_str() == "still"),
        "{rest:?}"
    );
    // The default backoff would have reconnected within 100 ms.
    let again = timeout(Duration::from_millis(500), listener.accept()).await;
    assert!(again.is_err(), "no reconnect after the last handle went");
}

/// A server played by the test, packet by packet.
struct Scripted {
    s: TcpStream,
    decoder: tern_codec::Decoder,
    buf: bytes::BytesMut,
    version: ProtocolVersion,
}

impl Scripted {
    async fn accept(listener: &TcpListener, version: ProtocolVersion) -> Scripted {
        let (s, _) = timeout(LIMIT, listener.accept())
            .await
            .expect("in time")
            .expect("accepted");
        let mut decoder = tern_codec::Decoder::server();
        decoder.set_version(version);
        Scripted {
            s,
            decoder,
            buf: bytes::BytesMut::new(),
            version,
        }
    }

    /// The next packet, `None` at the end of the stream.
    async fn next(&mut self) -> Option<tern_codec::Packet> {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some(p) = self.decoder.decode(&mut self.buf).expect("well-formed") {
                return Some(p);
            }
            let n = timeout(LIMIT, self.s.read_buf(&mut self.buf))
                .await
                .expect("in time")
                .expect("read");
            if n == 0 {
                return None;
            }
        }
    }

    async fn send(&mut self, p: tern_codec::Packet) {
        use tokio::io::AsyncWriteExt;
        let b = p.to_bytes(self.version).expect("encoded");
        self.s.write_all(&b).await.expect("written");
    }

    /// Reads CONNECT and answers with `connack`.
    async fn handshake(&mut self, connack: tern_codec::ConnAck) {
        assert!(matches!(
            self.next().await,
            Some(tern_codec::Packet::Connect(_))
        ));
        self.send(tern_codec::Packet::ConnAck(connack)).await;
    }
}

#[tokio::test]
async fn a_server_that_stops_reading_cannot_stall_keep_alive() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bound");
    let port = listener.local_addr().expect("address").port();
    let mut o = options("stalled", ProtocolVersion::V5, port);
    o.config.keep_alive = Duration::from_secs(1);
    o.config.ping_timeout = Duration::from_secs(1);
    o.reconnect = None;
    let (c, mut rx) = AsyncClient::start(o).expect("a valid configuration");
    let mut server = Scripted::accept(&listener, ProtocolVersion::V5).await;
    server.handshake(tern_codec::ConnAck::new(false)).await;
    assert!(!connected(&mut rx).await);
    // Far more than the socket buffers hold; the server reads none of it.
    let big = "x".repeat(64 * 1024);
    for _ in 0..400 {
        if c.try_publish(message("t", &big, QoS::AtMostOnce)).is_err() {
            break;
        }
    }
    match timeout(LIMIT, rx.recv()).await.expect("in time") {
        Some(AsyncEvent::Disconnected(DisconnectReason::KeepAliveTimeout)) => {}
        other => panic!("expected a keep-alive timeout, got {other:?}"),
    }
    assert_eq!(timeout(LIMIT, rx.recv()).await.expect("in time"), None);
    drop(server);
}

/// A client that a scripted server refuses with Not authorized.
async fn refused(listener: &TcpListener) -> (AsyncClient, Events) {
    let port = listener.local_addr().expect("address").port();
    let (c, rx) = AsyncClient::start(options("refused", ProtocolVersion::V5, port)).expect("valid");
    let mut server = Scripted::accept(listener, ProtocolVersion::V5).await;
    let mut refusal = tern_codec::ConnAck::new(false);
    refusal.reason_code = ReasonCode::NotAuthorized;
    server.handshake(refusal).await;
    (c, rx)
}

#[tokio::test]
async fn a_refusal_for_good_stops_the_client() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bound");
    let (c, mut rx) = refused(&listener).await;
    match timeout(LIMIT, rx.recv()).await.expect("in time") {
        Some(AsyncEvent::Disconnected(DisconnectReason::Refused(ReasonCode::NotAuthorized))) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(timeout(LIMIT, rx.recv()).await.expect("in time"), None);
    assert_eq!(
        c.publish(message("t", "x", QoS::AtMostOnce)).await,
        Err(ClientError::Closed)
    );
}

#[tokio::test]
async fn an_invalid_configuration_is_an_error_at_start() {
    let mut o = options("bad", ProtocolVersion::V3_1_1, 1);
    o.config.password = Some(bytes::Bytes::from_static(b"pw"));
    assert_eq!(
        AsyncClient::start(o).err(),
        Some(tern_client::ConfigError::PasswordWithoutUsername)
    );
}

#[tokio::test]
async fn without_a_reader_messages_are_still_acknowledged() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bound");
    let port = listener.local_addr().expect("address").port();
    let (c, rx) = AsyncClient::start(options("deaf", ProtocolVersion::V5, port)).expect("valid");
    let mut server = Scripted::accept(&listener, ProtocolVersion::V5).await;
    server.handshake(tern_codec::ConnAck::new(false)).await;
    drop(rx);
    for i in 1..=3u16 {
        let pid = tern_codec::PacketId::new(i).expect("non-zero");
        server
            .send(tern_codec::Packet::Publish(tern_codec::Publish::new(
                TopicName::new("t").expect("topic"),
                tern_codec::QosPid::AtLeastOnce(pid),
                "x",
            )))
            .await;
        match server.next().await {
            Some(tern_codec::Packet::PubAck(a)) => assert_eq!(a.packet_id, pid),
            other => panic!("{other:?}"),
        }
    }
    drop(c);
}

#[tokio::test]
async fn first_connection_says_why_it_did_not_come() {
    // Refused by the server: the reason, in words.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bound");
    let port = listener.local_addr().expect("address").port();
    let (_c, mut rx) = refused(&listener).await;
    let e = timeout(LIMIT, rx.first_connection())
        .await
        .expect("in time")
        .expect_err("refused");
    assert_eq!(
        e,
        ClientError::Disconnected(DisconnectReason::Refused(ReasonCode::NotAuthorized))
    );
    assert_eq!(e.to_string(), "connection refused: Not authorized");
    // Nobody listening: the transport's error.
    drop(listener);
    let (_c, mut rx) =
        AsyncClient::start(options("nobody", ProtocolVersion::V5, port)).expect("valid");
    let e = timeout(LIMIT, rx.first_connection())
        .await
        .expect("in time")
        .expect_err("no server");
    assert!(matches!(e, ClientError::Connect(_)), "{e:?}");
    // Accepted: what CONNACK said.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bound");
    let port = listener.local_addr().expect("address").port();
    let (_c, mut rx) =
        AsyncClient::start(options("welcome", ProtocolVersion::V5, port)).expect("valid");
    let mut server = Scripted::accept(&listener, ProtocolVersion::V5).await;
    server.handshake(tern_codec::ConnAck::new(false)).await;
    let c = timeout(LIMIT, rx.first_connection())
        .await
        .expect("in time")
        .expect("connected");
    assert!(!c.session_present);
}
