//! Webhook body templates: Jinja (minijinja), sandboxed (no file system,
//! no network: a template sees only the message) and bounded (each
//! rendering has a fuel budget of evaluation steps, and its output a size
//! limit), so a template cannot hang or flood a webhook.
//!
//! What a template sees:
//!
//! | name | |
//! |---|---|
//! | `topic` | the topic |
//! | `levels` | its levels, a list (`levels[1]`) |
//! | `payload` | the payload as text (UTF-8; invalid bytes replaced) |
//! | `json` | the payload parsed as JSON, if it is JSON (else none) |
//! | `qos`, `retain` | |
//! | `content_type`, `user_properties` | MQTT 5 properties (`user_properties.room`) |
//! | `webhook` | the webhook's name |
//! | `time` | when it is sent, milliseconds since the Unix epoch |
//!
//! ```toml
//! body = "template"
//! template = '{"text": "{{ levels[1] }} rang", "value": {{ json.temp | tojson }}}'
//! ```
//!
//! minijinja, of the three engines the project considers (minijinja, rhai,
//! cel-interpreter), is the one that is a template language, Jinja as Home
//! Assistant's users write it; it builds as one crate (8 s here).

use std::collections::BTreeMap;

use minijinja::{Environment, Value};
use tern_codec::Message;

/// Evaluation steps one rendering may take.
const FUEL: u64 = 50_000;
/// The largest body a template may make, bytes.
pub const MAX_OUTPUT: usize = 1024 * 1024;

/// A checked template.
#[derive(Debug)]
pub struct Template {
    env: Environment<'static>,
}

impl Template {
    /// Compiles `source`; the error says where it is wrong.
    pub fn new(source: &str) -> Result<Template, String> {
        let mut env = Environment::new();
        env.set_fuel(Some(FUEL));
        env.add_template_owned("body", source.to_owned())
            .map_err(|e| format!("template: {e}"))?;
        Ok(Template { env })
    }

    /// The body for `m`.
    pub fn render(&self, m: &Message, webhook: &str, time: u64) -> Result<String, String> {
        let payload = String::from_utf8_lossy(&m.payload).into_owned();
        let json: Option<serde_json::Value> = serde_json::from_slice(&m.payload).ok();
        let props: BTreeMap<&str, &str> = m
            .properties
            .user_properties
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let ctx = minijinja::context! {
            topic => m.topic.as_str(),
            levels => m.topic.levels().collect::<Vec<_>>(),
            payload => payload,
            json => json.map(|j| Value::from_serialize(&j)),
            qos => m.qos as u8,
            retain => m.retain,
            content_type => m.properties.content_type.as_ref().map(|c| c.as_str()),
            user_properties => props,
            webhook => webhook,
            time => time,
        };
        let t = self.env.get_template("body").map_err(|e| e.to_string())?;
        let out = t.render(ctx).map_err(|e| format!("template: {e}"))?;
        if out.len() > MAX_OUTPUT {
            return Err(format!("template: the body is over {MAX_OUTPUT} bytes"));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_codec::{MqttString, TopicName};

    fn msg(topic: &str, payload: &str) -> Message {
        let mut m = Message::new(TopicName::new(topic).expect("valid"), payload.to_owned());
        m.properties.user_properties.push((
            MqttString::from_static("room"),
            MqttString::from_static("hall"),
        ));
        m
    }

    #[test]
    fn a_template_sees_the_message() {
        let t = Template::new(
            r#"{"door": "{{ levels[1] }}", "t": {{ json.temp | tojson }}, "room": "{{ user_properties.room }}", "from": "{{ webhook }}", "raw": {{ payload | tojson }}}"#,
        )
        .expect("compiles");
        let out = t
            .render(&msg("home/front/bell", r#"{"temp": 21.5}"#), "vendor", 1)
            .expect("renders");
        let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
        assert_eq!(v["door"], "front");
        assert_eq!(v["t"], 21.5);
        assert_eq!(v["room"], "hall");
        assert_eq!(v["from"], "vendor");
        assert_eq!(v["raw"], r#"{"temp": 21.5}"#);
    }

    #[test]
    fn a_bad_template_is_refused_and_a_runaway_one_is_stopped() {
        let e = Template::new("{{ payload ").expect_err("refused");
        assert!(e.contains("template"), "{e}");
        // An endless loop runs out of fuel.
        let t = Template::new(
            "{% for i in range(1000000) %}{% for j in range(1000000) %}x{% endfor %}{% endfor %}",
        )
        .expect("compiles");
        let e = t.render(&msg("a", "1"), "w", 0).expect_err("stopped");
        assert!(e.contains("fuel") || e.contains("template"), "{e}");
    }
}
