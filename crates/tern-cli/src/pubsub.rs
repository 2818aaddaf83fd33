//! `tern pub` and `tern sub`: mosquitto_pub and mosquitto_sub on Tern's
//! async client, with the flags their users know.
//!
//! Exit codes: 0 done; 1 the connection was refused or lost, or the server
//! refused a message or a subscription; 2 usage errors (a bad flag, an
//! unreadable file); 27 `tern sub -W` ran out of time (as mosquitto_sub).

use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, ValueEnum};
use tern_client::{ClientConfig, Message};
use tern_codec::{
    MqttString, ProtocolVersion, PublishProperties, QoS, SubscribeFilter, SubscribeProperties,
    SubscriptionOptions, TopicFilter, TopicName, UserProperty, Will,
};
use tern_tokio::{AsyncClient, AsyncEvent, Backoff, ClientError, ClientOptions, Events, Transport};

/// The protocol version flag's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Version {
    /// MQTT 3.1.
    #[value(name = "mqttv31", alias = "31")]
    V31,
    /// MQTT 3.1.1 (the default, as mosquitto's).
    #[value(name = "mqttv311", alias = "311")]
    V311,
    /// MQTT 5.0.
    #[value(name = "mqttv5", alias = "5")]
    V5,
}

impl Version {
    fn protocol(self) -> ProtocolVersion {
        match self {
            Version::V31 => ProtocolVersion::V3_1,
            Version::V311 => ProtocolVersion::V3_1_1,
            Version::V5 => ProtocolVersion::V5,
        }
    }
}

/// Connection flags shared by `tern pub` and `tern sub`.
#[derive(Debug, Clone, Args)]
pub struct ConnArgs {
    /// Broker host.
    #[arg(short = 'h', long, default_value = "localhost")]
    pub host: String,
    /// Broker port (1883, or 8883 with TLS).
    #[arg(short = 'p', long)]
    pub port: Option<u16>,
    /// Client id (default: tern-pub-PID / tern-sub-PID).
    #[arg(short = 'i', long = "id")]
    pub id: Option<String>,
    /// User name.
    #[arg(short = 'u', long)]
    pub username: Option<String>,
    /// Password.
    #[arg(short = 'P', long)]
    pub pw: Option<String>,
    /// Keep alive in seconds.
    #[arg(short = 'k', long, default_value_t = 60)]
    pub keepalive: u16,
    /// Protocol version: mqttv31, mqttv311 or mqttv5.
    #[arg(
        short = 'V',
        long = "protocol-version",
        value_enum,
        default_value = "mqttv311"
    )]
    pub version: Version,
    /// Keep the session (clean session off); needs -i.
    #[arg(short = 'c', long = "disable-clean-session")]
    pub keep_session: bool,
    /// Session Expiry Interval in seconds (MQTT 5).
    #[arg(short = 'x', long = "session-expiry-interval")]
    pub session_expiry: Option<u32>,
    /// MQTT 5 properties: `-D connect|publish|subscribe user-property KEY VALUE`,
    /// `-D publish content-type VALUE`, `-D publish message-expiry-interval SECONDS`,
    /// `-D publish response-topic TOPIC`, `-D publish payload-format-indicator 0|1`.
    #[arg(short = 'D', long = "property", num_args = 3..=4, action = clap::ArgAction::Append,
          value_names = ["COMMAND", "NAME", "VALUE"])]
    pub properties: Vec<String>,
    /// Will topic.
    #[arg(long = "will-topic")]
    pub will_topic: Option<String>,
    /// Will payload.
    #[arg(long = "will-payload", requires = "will_topic")]
    pub will_payload: Option<String>,
    /// Will QoS.
    #[arg(long = "will-qos", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2), requires = "will_topic")]
    pub will_qos: u8,
    /// Retain the will.
    #[arg(long = "will-retain", requires = "will_topic")]
    pub will_retain: bool,
    /// CA certificates (PEM) to check the broker's certificate: turns TLS on.
    #[arg(long)]
    pub cafile: Option<PathBuf>,
    /// Client certificate (PEM): turns TLS on.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// Client key (PEM).
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Print connection details and errors to standard error.
    #[arg(short = 'd', long)]
    pub debug: bool,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

/// `tern pub` flags.
#[derive(Debug, Clone, Args)]
#[command(disable_help_flag = true)]
pub struct PubArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Topic to publish to.
    #[arg(short = 't', long)]
    topic: String,
    /// The message.
    #[arg(short = 'm', long, group = "payload")]
    message: Option<String>,
    /// Send the contents of a file as the message.
    #[arg(short = 'f', long, group = "payload")]
    file: Option<PathBuf>,
    /// Read the message from standard input, whole.
    #[arg(short = 's', long, group = "payload")]
    stdin_file: bool,
    /// Read messages from standard input, one per line.
    #[arg(short = 'l', long, group = "payload")]
    stdin_line: bool,
    /// Send an empty message.
    #[arg(short = 'n', long, group = "payload")]
    null_message: bool,
    /// QoS.
    #[arg(short = 'q', long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Retain the message.
    #[arg(short = 'r', long)]
    retain: bool,
    /// Publish the message this many times.
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    /// Seconds between repeats.
    #[arg(long = "repeat-delay", default_value_t = 0.0)]
    repeat_delay: f64,
}

/// `tern sub` flags.
#[derive(Debug, Clone, Args)]
#[command(disable_help_flag = true)]
pub struct SubArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Topic filter to subscribe to; repeat for several.
    #[arg(short = 't', long, required = true)]
    topic: Vec<String>,
    /// QoS of the subscriptions.
    #[arg(short = 'q', long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Print the topic before the payload.
    #[arg(short = 'v', long)]
    verbose: bool,
    /// Exit after this many messages.
    #[arg(short = 'C', long)]
    count: Option<u64>,
    /// Exit after this many seconds (exit code 27 if -C was not reached).
    #[arg(short = 'W', long)]
    timeout: Option<u64>,
    /// Output format: %t topic, %p payload, %q QoS, %r retain, %l payload
    /// length, %x payload in hex, %U Unix time, %%, and \n \t \\ escapes.
    #[arg(short = 'F', long)]
    format: Option<String>,
    /// No newline after each message.
    #[arg(short = 'N')]
    no_newline: bool,
    /// Skip retained messages (stale values).
    #[arg(short = 'R')]
    no_retained: bool,
    /// Exit once subscribed.
    #[arg(short = 'E')]
    exit_when_subscribed: bool,
}

/// A usage error or a failure, with its exit code.
struct Fail(u8, String);

fn usage(msg: impl Into<String>) -> Fail {
    Fail(2, msg.into())
}

fn failure(msg: impl Into<String>) -> Fail {
    Fail(1, msg.into())
}

fn qos(q: u8) -> QoS {
    QoS::from_u8(q).unwrap_or(QoS::AtMostOnce)
}

fn mqtt_string(s: &str, what: &str) -> Result<MqttString, Fail> {
    MqttString::from_str(s).map_err(|e| usage(format!("{what}: {e}")))
}

/// The `-D` values, one group per property: command, name, values
/// (`user-property` takes two, every other property one).
fn property_groups(c: &ConnArgs) -> Result<Vec<Vec<String>>, Fail> {
    let mut groups = Vec::new();
    let mut rest = c.properties.iter();
    while let Some(cmd) = rest.next() {
        let Some(name) = rest.next() else {
            return Err(usage(format!(
                "-D {cmd}: needs a property name and a value"
            )));
        };
        let n = if name == "user-property" { 2 } else { 1 };
        let mut g = vec![cmd.clone(), name.clone()];
        for _ in 0..n {
            match rest.next() {
                Some(v) => g.push(v.clone()),
                None => return Err(usage(format!("-D {cmd} {name}: missing value"))),
            }
        }
        groups.push(g);
    }
    Ok(groups)
}

/// The client's options from the shared flags.
fn options(
    c: &ConnArgs,
    props: &Properties,
    role: &str,
    reconnect: bool,
) -> Result<ClientOptions, Fail> {
    let version = c.version.protocol();
    let id = match &c.id {
        Some(id) => id.clone(),
        None if c.keep_session => {
            return Err(usage("-c (keep the session) needs a client id: -i ID"))
        }
        None => format!("tern-{role}-{}", std::process::id()),
    };
    let mut config = ClientConfig::new("").with_version(version);
    config.client_id = mqtt_string(&id, "client id")?;
    config.keep_alive = Duration::from_secs(c.keepalive.into());
    config.clean_start = !c.keep_session;
    if let Some(x) = c.session_expiry {
        if !version.is_v5() {
            return Err(usage("-x needs MQTT 5 (-V mqttv5)"));
        }
        config.session_expiry_interval = x;
    } else if c.keep_session && version.is_v5() {
        // As mosquitto: -c on MQTT 5 keeps the session after the connection.
        config.session_expiry_interval = u32::MAX;
    }
    config.username = c
        .username
        .as_deref()
        .map(|u| mqtt_string(u, "user name"))
        .transpose()?;
    config.password = c.pw.clone().map(Bytes::from);
    if let Some(t) = &c.will_topic {
        let topic = TopicName::new(t).map_err(|e| usage(format!("--will-topic {t:?}: {e}")))?;
        config.will = Some(Will {
            topic,
            payload: Bytes::from(c.will_payload.clone().unwrap_or_default()),
            qos: qos(c.will_qos),
            retain: c.will_retain,
            properties: Default::default(),
        });
    }
    config.user_properties = props.connect.clone();
    let tls = c.cafile.is_some() || c.cert.is_some();
    let port = c.port.unwrap_or(if tls { 8883 } else { 1883 });
    let mut o = ClientOptions::new(config, c.host.clone(), port);
    if tls {
        let config =
            tern_tokio::tls_client_config(c.cafile.as_deref(), c.cert.as_deref(), c.key.as_deref())
                .map_err(usage)?;
        o.transport = Transport::Tls {
            host: c.host.clone(),
            port,
            config,
        };
    }
    o.reconnect = reconnect.then(Backoff::default);
    Ok(o)
}

/// The `-D` properties, by the packet they go in.
#[derive(Debug, Default)]
struct Properties {
    connect: Vec<UserProperty>,
    publish: PublishProperties,
    subscribe: SubscribeProperties,
}

impl Properties {
    fn parse(c: &ConnArgs) -> Result<Properties, Fail> {
        let groups = property_groups(c)?;
        if !groups.is_empty() && !c.version.protocol().is_v5() {
            return Err(usage("-D (properties) needs MQTT 5 (-V mqttv5)"));
        }
        let mut props = Properties::default();
        for p in &groups {
            let bad = || usage(format!("-D {}: not supported", p.join(" ")));
            let user = |k: &str, v: &str| -> Result<UserProperty, Fail> {
                Ok((
                    mqtt_string(k, "user property")?,
                    mqtt_string(v, "user property")?,
                ))
            };
            let publish = &mut props.publish;
            match (p[0].as_str(), p[1].as_str(), &p[2..]) {
                ("connect", "user-property", [k, v]) => props.connect.push(user(k, v)?),
                ("subscribe", "user-property", [k, v]) => {
                    props.subscribe.user_properties.push(user(k, v)?)
                }
                ("publish", "user-property", [k, v]) => publish.user_properties.push(user(k, v)?),
                ("publish", "content-type", [v]) => {
                    publish.content_type = Some(mqtt_string(v, "content type")?)
                }
                ("publish", "message-expiry-interval", [v]) => {
                    publish.message_expiry_interval = Some(v.parse().map_err(|_| bad())?)
                }
                ("publish", "response-topic", [v]) => {
                    publish.response_topic =
                        Some(TopicName::new(v).map_err(|e| usage(format!("response topic: {e}")))?)
                }
                ("publish", "payload-format-indicator", [v]) => {
                    publish.payload_format_indicator = Some(match v.as_str() {
                        "0" => false,
                        "1" => true,
                        _ => return Err(bad()),
                    })
                }
                ("connect" | "publish" | "subscribe", _, _) => return Err(bad()),
                (cmd, _, _) => {
                    return Err(usage(format!(
                        "-D {cmd}: the command must be connect, publish or subscribe"
                    )))
                }
            }
        }
        Ok(props)
    }
}

/// Waits for the first connection: Ok once connected, the failure otherwise.
async fn first_connection(rx: &mut Events, debug: bool) -> Result<(), Fail> {
    match rx.first_connection().await {
        Ok(c) => {
            if debug {
                eprintln!("connected (session present: {})", c.session_present);
            }
            Ok(())
        }
        Err(ClientError::Connect(e)) => Err(failure(format!("Error: {e}"))),
        Err(ClientError::Disconnected(r)) => Err(failure(format!("Connection error: {r}"))),
        Err(_) => Err(failure("Error: the client stopped")),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn exit(r: Result<(), Fail>, cmd: &str) -> u8 {
    match r {
        Ok(()) => 0,
        Err(Fail(code, msg)) => {
            eprintln!("tern {cmd}: {msg}");
            code
        }
    }
}

/// `tern pub`.
pub fn publish(a: PubArgs) -> u8 {
    exit(runtime().block_on(publish_async(a)), "pub")
}

async fn publish_async(a: PubArgs) -> Result<(), Fail> {
    let topic = TopicName::new(&a.topic).map_err(|e| usage(format!("-t {:?}: {e}", a.topic)))?;
    let payload: Option<Bytes> = if let Some(m) = &a.message {
        Some(Bytes::from(m.clone()))
    } else if let Some(f) = &a.file {
        Some(Bytes::from(
            std::fs::read(f).map_err(|e| usage(format!("{}: {e}", f.display())))?,
        ))
    } else if a.stdin_file {
        let mut v = Vec::new();
        std::io::stdin()
            .read_to_end(&mut v)
            .map_err(|e| usage(format!("standard input: {e}")))?;
        Some(Bytes::from(v))
    } else if a.null_message {
        Some(Bytes::new())
    } else if a.stdin_line {
        None
    } else {
        return Err(usage("give the message: -m, -f, -s, -l or -n"));
    };
    let props = Properties::parse(&a.conn)?;
    let properties = props.publish.clone();
    let (client, mut rx) = AsyncClient::start(options(&a.conn, &props, "pub", false)?)
        .map_err(|e| usage(e.to_string()))?;
    first_connection(&mut rx, a.conn.debug).await?;
    let make = |payload: Bytes| {
        let mut m = Message::new(topic.clone(), payload)
            .with_qos(qos(a.qos))
            .with_retain(a.retain);
        m.properties = properties.clone();
        m
    };
    let result = async {
        match payload {
            Some(p) => {
                for i in 0..a.repeat {
                    if i > 0 && a.repeat_delay > 0.0 {
                        tokio::time::sleep(Duration::from_secs_f64(a.repeat_delay)).await;
                    }
                    send(&client, make(p.clone()), a.conn.debug).await?;
                }
            }
            None => {
                // Line mode: lines are read on a blocking thread so that the
                // connection keeps being served while standard input waits.
                let (tx, mut lines) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
                std::thread::spawn(move || {
                    let stdin = std::io::stdin();
                    let mut stdin = stdin.lock();
                    let mut line = Vec::new();
                    loop {
                        line.clear();
                        match stdin.read_until(b'\n', &mut line) {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {
                                if line.last() == Some(&b'\n') {
                                    line.pop();
                                }
                                if tx.blocking_send(line.clone()).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                });
                while let Some(line) = lines.recv().await {
                    send(&client, make(Bytes::from(line)), a.conn.debug).await?;
                }
            }
        }
        Ok(())
    }
    .await;
    client.disconnect().await;
    result
}

async fn send(client: &AsyncClient, m: Message, debug: bool) -> Result<(), Fail> {
    let q = m.qos;
    match client.publish(m).await {
        Ok(code) => {
            if debug {
                eprintln!("published (QoS {}): {}", q as u8, code.description());
            }
            Ok(())
        }
        Err(e) => Err(failure(format!("Error: {e}"))),
    }
}

/// `tern sub`.
pub fn subscribe(a: SubArgs) -> u8 {
    exit(runtime().block_on(subscribe_async(a)), "sub")
}

async fn subscribe_async(a: SubArgs) -> Result<(), Fail> {
    let filters = a
        .topic
        .iter()
        .map(|t| {
            TopicFilter::new(t)
                .map(|filter| SubscribeFilter {
                    filter,
                    options: SubscriptionOptions::new(qos(a.qos)),
                })
                .map_err(|e| usage(format!("-t {t:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let props = Properties::parse(&a.conn)?;
    let properties = props.subscribe.clone();
    let format = a.format.as_deref().map(Format::parse).transpose()?;
    let (client, mut rx) = AsyncClient::start(options(&a.conn, &props, "sub", true)?)
        .map_err(|e| usage(e.to_string()))?;
    let deadline = a
        .timeout
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let run = async {
        first_connection(&mut rx, a.conn.debug).await?;
        let codes = client
            .subscribe_with(filters.clone(), properties)
            .await
            .map_err(|e| failure(format!("Error: {e}")))?;
        for (f, code) in filters.iter().zip(&codes) {
            if code.is_error() {
                return Err(failure(format!(
                    "subscription to {} refused: {}",
                    f.filter,
                    code.description()
                )));
            }
            if a.conn.debug {
                eprintln!("subscribed to {}: {}", f.filter, code.description());
            }
        }
        if a.exit_when_subscribed {
            return Ok(());
        }
        let mut seen = 0u64;
        let mut out = std::io::stdout().lock();
        while let Some(item) = rx.recv().await {
            match item {
                AsyncEvent::Message(d) => {
                    if a.no_retained && d.message.retain {
                        continue;
                    }
                    let m = &d.message;
                    let mut line = Vec::with_capacity(m.payload.len() + 64);
                    match &format {
                        Some(f) => f.write(m, &mut line),
                        None => {
                            if a.verbose {
                                line.extend_from_slice(m.topic.as_bytes());
                                line.push(b' ');
                            }
                            line.extend_from_slice(&m.payload);
                        }
                    }
                    if !a.no_newline {
                        line.push(b'\n');
                    }
                    if out.write_all(&line).and_then(|()| out.flush()).is_err() {
                        // Standard output closed (a pipe to head, say).
                        return Ok(());
                    }
                    seen += 1;
                    if a.count.is_some_and(|c| seen >= c) {
                        return Ok(());
                    }
                }
                AsyncEvent::Disconnected(r) if a.conn.debug => {
                    eprintln!("{}; reconnecting", r)
                }
                AsyncEvent::ConnectFailed(e) if a.conn.debug => eprintln!("{e}; retrying"),
                _ => {}
            }
        }
        Err(failure("Error: the client stopped"))
    };
    let result = tokio::select! {
        r = run => r,
        _ = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        } => Err(Fail(27, "timed out".into())),
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    client.disconnect().await;
    result
}

/// A parsed `-F` format.
#[derive(Debug)]
struct Format(Vec<Piece>);

#[derive(Debug)]
enum Piece {
    Text(Vec<u8>),
    Topic,
    Payload,
    Qos,
    Retain,
    Length,
    Hex,
    Unix,
}

impl Format {
    fn parse(s: &str) -> Result<Format, Fail> {
        let mut pieces = Vec::new();
        let mut text = Vec::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            let piece = match c {
                '%' => match chars.next() {
                    Some('t') => Piece::Topic,
                    Some('p') => Piece::Payload,
                    Some('q') => Piece::Qos,
                    Some('r') => Piece::Retain,
                    Some('l') => Piece::Length,
                    Some('x') => Piece::Hex,
                    Some('U') => Piece::Unix,
                    Some('%') => {
                        text.push(b'%');
                        continue;
                    }
                    other => {
                        return Err(usage(format!(
                            "-F: unknown field %{}",
                            other.map(String::from).unwrap_or_default()
                        )))
                    }
                },
                '\\' => {
                    match chars.next() {
                        Some('n') => text.push(b'\n'),
                        Some('t') => text.push(b'\t'),
                        Some('\\') => text.push(b'\\'),
                        other => {
                            return Err(usage(format!(
                                "-F: unknown escape \\{}",
                                other.map(String::from).unwrap_or_default()
                            )))
                        }
                    }
                    continue;
                }
                c => {
                    let mut b = [0; 4];
                    text.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
                    continue;
                }
            };
            if !text.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut text)));
            }
            pieces.push(piece);
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(Format(pieces))
    }

    fn write(&self, m: &Message, out: &mut Vec<u8>) {
        for p in &self.0 {
            match p {
                Piece::Text(t) => out.extend_from_slice(t),
                Piece::Topic => out.extend_from_slice(m.topic.as_bytes()),
                Piece::Payload => out.extend_from_slice(&m.payload),
                Piece::Qos => out.extend_from_slice((m.qos as u8).to_string().as_bytes()),
                Piece::Retain => out.push(if m.retain { b'1' } else { b'0' }),
                Piece::Length => out.extend_from_slice(m.payload.len().to_string().as_bytes()),
                Piece::Hex => {
                    for b in m.payload.iter() {
                        out.extend_from_slice(format!("{b:02x}").as_bytes());
                    }
                }
                Piece::Unix => {
                    let t = std::time::SystemTime::UNIX_EPOCH
                        .elapsed()
                        .unwrap_or_default()
                        .as_secs_f64();
                    out.extend_from_slice(format!("{t:.6}").as_bytes());
                }
            }
        }
    }
}
