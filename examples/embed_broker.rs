//! A broker inside your application.
//!
//! An application that is its own hub (a home controller, a gateway, a
//! test harness) can run Tern's broker on its own tokio runtime instead of
//! beside it: the server listens for the house's devices, and the
//! application's own parts talk to it with the async client in the same
//! process. Here a thermostat loop publishes readings, retained, and a
//! dashboard in the same process subscribes to every room; then the
//! application shuts the broker down gracefully, as it would on exit.
//!
//! Run with `cargo run --example embed_broker`; `cargo test` runs it too.

use std::time::Duration;

use tern::client::{ClientConfig, Message};
use tern::codec::{QoS, SubscribeFilter, SubscriptionOptions, TopicFilter, TopicName};
use tern::tokio::{AsyncClient, AsyncEvent, ClientOptions, Server, ServerConfig};
use tokio::sync::oneshot;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    for line in run().await? {
        println!("{line}");
    }
    Ok(())
}

/// Runs the broker and the application's two clients; returns what the
/// dashboard saw.
async fn run() -> Result<Vec<String>, Error> {
    // The broker: zero configuration but the address (a free port here;
    // a house would listen on 0.0.0.0:1883).
    let config = ServerConfig {
        tcp: vec!["127.0.0.1:0".parse()?],
        ..ServerConfig::default()
    };
    let server = Server::bind(config).await?;
    let port = server.local_addrs()?[0].port();
    let (stop, stopped) = oneshot::channel::<()>();
    let broker = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let options = |id: &str| ClientOptions::new(ClientConfig::new(id), "127.0.0.1", port);

    // The dashboard: every room's temperature.
    let (dashboard, mut seen) = AsyncClient::start(options("dashboard"))?;
    tokio::time::timeout(Duration::from_secs(10), seen.first_connection()).await??;
    let rooms = SubscribeFilter {
        filter: TopicFilter::new("home/+/temperature")?,
        options: SubscriptionOptions::new(QoS::AtLeastOnce),
    };
    dashboard.subscribe(vec![rooms]).await?;

    // The thermostat loop: readings, retained so that a dashboard opened
    // later sees the last one at once.
    let (thermostat, mut events) = AsyncClient::start(options("thermostat"))?;
    tokio::time::timeout(Duration::from_secs(10), events.first_connection()).await??;
    for (room, celsius) in [("living-room", "21.5"), ("kitchen", "19.0")] {
        let topic = TopicName::new(&format!("home/{room}/temperature"))?;
        let reading = Message::new(topic, celsius)
            .with_qos(QoS::AtLeastOnce)
            .with_retain(true);
        thermostat.publish(reading).await?; // resolves at PUBACK
    }

    let mut lines = Vec::new();
    while lines.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(10), seen.recv()).await? {
            Some(AsyncEvent::Message(m)) => {
                let value = String::from_utf8_lossy(&m.message.payload).into_owned();
                lines.push(format!("dashboard: {} = {value}", m.message.topic));
            }
            Some(_) => {}
            None => return Err("the dashboard stopped".into()),
        }
    }

    // On exit: the clients leave, then the broker shuts down gracefully
    // (5.0 clients get DISCONNECT 0x8B, wills go out, writes are flushed).
    thermostat.disconnect().await;
    dashboard.disconnect().await;
    let _ = stop.send(());
    broker.await??;
    Ok(lines)
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn the_dashboard_sees_every_reading_and_the_broker_stops() {
        let lines = super::run().await.expect("runs");
        assert_eq!(
            lines,
            [
                "dashboard: home/living-room/temperature = 21.5",
                "dashboard: home/kitchen/temperature = 19.0",
            ]
        );
    }
}
