//! The doorbell and the living-room lights, on Tern's async client.
//!
//! - The lights announce themselves with a retained `online` on
//!   `home/lights/presence`, and leave a will that clears it (an empty
//!   retained message) if they vanish.
//! - They subscribe to every button press with a wildcard, `home/+/pressed`.
//! - The doorbell publishes once, at QoS 1, and leaves.
//! - A phone watching `home/+/presence` sees the lights come and go.
//!
//! Run with `cargo run --example doorbell`: it starts a `tern` broker in the
//! process on a free port. `cargo run --example doorbell -- 127.0.0.1:1883`
//! uses a broker already running there (`tern broker`, or Mosquitto).

use std::time::Duration;

use tern::client::{ClientConfig, Message};
use tern::codec::{
    Disconnect, ProtocolVersion, QoS, ReasonCode, SubscribeFilter, SubscriptionOptions,
    TopicFilter, TopicName, Will,
};
use tern::tokio::{AsyncClient, AsyncEvent, ClientOptions, Events, Server, ServerConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (host, port) = match std::env::args().nth(1) {
        Some(addr) => {
            let (h, p) = addr
                .rsplit_once(':')
                .ok_or("give the broker as host:port")?;
            (h.to_owned(), p.parse()?)
        }
        None => {
            let config = ServerConfig {
                tcp: vec!["127.0.0.1:0".parse()?],
                ..ServerConfig::default()
            };
            let server = Server::bind(config).await?;
            let port = server.local_addrs()?[0].port();
            tokio::spawn(server.run(std::future::pending()));
            println!("broker: tern, in this process, on 127.0.0.1:{port}");
            ("127.0.0.1".to_owned(), port)
        }
    };
    let options = |id: &str| {
        let config = ClientConfig::new(id).with_version(ProtocolVersion::V5);
        ClientOptions::new(config, host.clone(), port)
    };
    let presence = TopicName::new("home/lights/presence")?;

    // The phone: watches presence.
    let (phone, mut phone_rx) = AsyncClient::start(options("phone"))?;
    tokio::time::timeout(Duration::from_secs(10), phone_rx.first_connection()).await??;
    phone
        .subscribe(vec![filter("home/+/presence", QoS::AtLeastOnce)?])
        .await?;

    // The lights: a will that clears their presence, then "online".
    let mut lights_options = options("living-room-lights");
    lights_options.config.will = Some(Will {
        topic: presence.clone(),
        payload: Default::default(),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: Default::default(),
    });
    let (lights, mut lights_rx) = AsyncClient::start(lights_options)?;
    tokio::time::timeout(Duration::from_secs(10), lights_rx.first_connection()).await??;
    lights
        .subscribe(vec![filter("home/+/pressed", QoS::AtLeastOnce)?])
        .await?;
    let online = Message::new(presence.clone(), "online")
        .with_qos(QoS::AtLeastOnce)
        .with_retain(true);
    lights.publish(online).await?;
    println!("phone: lights are {}", presence_of(&mut phone_rx).await?);

    // The doorbell: one press, acknowledged, then it leaves.
    let (doorbell, mut doorbell_rx) = AsyncClient::start(options("doorbell"))?;
    tokio::time::timeout(Duration::from_secs(10), doorbell_rx.first_connection()).await??;
    let press =
        Message::new(TopicName::new("home/doorbell/pressed")?, "1").with_qos(QoS::AtLeastOnce);
    let reason = doorbell.publish(press).await?;
    println!("doorbell: pressed ({})", reason.description());
    doorbell.disconnect().await;

    // The lights see the press.
    let pressed = loop {
        match tokio::time::timeout(Duration::from_secs(10), lights_rx.recv()).await? {
            Some(AsyncEvent::Message(m)) => break m,
            Some(_) => {}
            None => return Err("the lights stopped".into()),
        }
    };
    println!("lights: {} -> flash twice", pressed.message.topic);

    // The lights lose power: the server publishes their will (asked for
    // here with reason 0x04; a dropped connection does the same).
    lights
        .disconnect_with(Disconnect::new(ReasonCode::DisconnectWithWillMessage))
        .await;
    let state = presence_of(&mut phone_rx).await?;
    println!(
        "phone: lights are {}",
        if state.is_empty() { "gone" } else { &state }
    );
    phone.disconnect().await;
    Ok(())
}

fn filter(f: &str, qos: QoS) -> Result<SubscribeFilter, Box<dyn std::error::Error>> {
    Ok(SubscribeFilter {
        filter: TopicFilter::new(f)?,
        options: SubscriptionOptions::new(qos),
    })
}

async fn presence_of(rx: &mut Events) -> Result<String, Box<dyn std::error::Error>> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await? {
            Some(AsyncEvent::Message(m)) => {
                return Ok(String::from_utf8_lossy(&m.message.payload).into_owned())
            }
            Some(_) => {}
            None => return Err("the phone stopped".into()),
        }
    }
}
