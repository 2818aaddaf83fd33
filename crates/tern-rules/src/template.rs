//! Templates and expressions: Jinja (minijinja), what Home Assistant users
//! already write. Sandboxed (no file, network or process access) and
//! bounded: each evaluation has a fuel budget, so a runaway loop ends with
//! an error, and output over [`MAX_OUTPUT`] is refused. A template without
//! `{{` or `{%` is plain text and costs nothing to render.

use std::collections::BTreeMap;

use minijinja::{Environment, Value};
use serde::Serialize;

use crate::machine::Ctx;

/// Fuel for one evaluation: about that many template instructions.
pub const FUEL: u64 = 50_000;

/// The longest a rendered template may be.
pub const MAX_OUTPUT: usize = 256 * 1024;

/// A template of the rules file.
#[derive(Debug, Clone, PartialEq)]
pub enum Tpl {
    /// Plain text.
    Text(String),
    /// A Jinja template, by its name in the engine's environment.
    Jinja {
        /// Its name in the environment.
        name: String,
        /// Its text.
        source: String,
    },
}

impl Tpl {
    /// Whether it is plain text.
    pub fn text(&self) -> Option<&str> {
        match self {
            Tpl::Text(t) => Some(t),
            Tpl::Jinja { .. } => None,
        }
    }

    /// Its text.
    pub fn source(&self) -> &str {
        match self {
            Tpl::Text(t) => t,
            Tpl::Jinja { source, .. } => source,
        }
    }
}

/// The engine's templates, compiled once at load.
pub struct Templates {
    env: Environment<'static>,
    next: usize,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates")
            .field("count", &self.next)
            .finish()
    }
}

impl Default for Templates {
    fn default() -> Self {
        let mut env = Environment::new();
        env.set_fuel(Some(FUEL));
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
        Templates { env, next: 0 }
    }
}

impl Templates {
    /// Compiles `source` (checked now: a syntax error is a load error).
    pub fn add(&mut self, source: &str) -> Result<Tpl, String> {
        if !source.contains("{{") && !source.contains("{%") {
            return Ok(Tpl::Text(source.to_owned()));
        }
        let name = format!("t{}", self.next);
        self.next += 1;
        self.env
            .add_template_owned(name.clone(), source.to_owned())
            .map_err(|e| format!("template {source:?}: {e}"))?;
        Ok(Tpl::Jinja {
            name,
            source: source.to_owned(),
        })
    }

    /// Compiles an expression (a condition): true when it renders truthy.
    pub fn add_condition(&mut self, expr: &str) -> Result<Tpl, String> {
        let source = format!("{{% if {expr} %}}1{{% endif %}}");
        self.add(&source)
            .map_err(|e| format!("condition {expr:?}: {e}"))
    }

    /// Renders `t` for a firing.
    pub fn render(&self, t: &Tpl, scope: &Scope<'_>) -> Result<String, String> {
        match t {
            Tpl::Text(s) => Ok(s.clone()),
            Tpl::Jinja { name, .. } => {
                let tpl = self.env.get_template(name).map_err(|e| e.to_string())?;
                let out = tpl
                    .render(Value::from_serialize(scope))
                    .map_err(|e| format!("{e:#}"))?;
                if out.len() > MAX_OUTPUT {
                    return Err(format!("renders to more than {MAX_OUTPUT} bytes"));
                }
                Ok(out)
            }
        }
    }

    /// Evaluates a condition compiled by [`Templates::add_condition`].
    pub fn holds(&self, t: &Tpl, scope: &Scope<'_>) -> Result<bool, String> {
        self.render(t, scope).map(|s| s == "1")
    }
}

/// What a template sees.
#[derive(Debug, Serialize)]
pub struct Scope<'a> {
    /// The topic of the message that fired the rule (empty for a schedule).
    pub topic: &'a str,
    /// The topic's levels.
    pub levels: Vec<&'a str>,
    /// What the filter's wildcards matched, in order (`#` as one string).
    pub captures: Vec<String>,
    /// The payload as text.
    pub payload: &'a str,
    /// The payload as JSON, if it is.
    pub json: Option<serde_json::Value>,
    /// The value the rule tests: its `field` of the JSON, or the payload (a
    /// number if it reads as one).
    pub value: serde_json::Value,
    /// The client (presence rules).
    pub client: Option<&'a str>,
    /// The rule's own state (`set` actions).
    pub state: &'a BTreeMap<String, serde_json::Value>,
    /// When it fired (milliseconds since the epoch).
    pub now: u64,
    /// The rule's name.
    pub rule: &'a str,
}

impl<'a> Scope<'a> {
    /// The scope of a firing.
    pub fn new(
        ctx: &'a Ctx,
        captures: Vec<String>,
        field: Option<&str>,
        state: &'a BTreeMap<String, serde_json::Value>,
        now: u64,
        rule: &'a str,
    ) -> Scope<'a> {
        let json = serde_json::from_str::<serde_json::Value>(&ctx.payload).ok();
        let value = value_of(&ctx.payload, json.as_ref(), field);
        Scope {
            topic: &ctx.topic,
            levels: if ctx.topic.is_empty() {
                Vec::new()
            } else {
                ctx.topic.split('/').collect()
            },
            captures,
            payload: &ctx.payload,
            json,
            value,
            client: ctx.client.as_deref(),
            state,
            now,
            rule,
        }
    }
}

/// The value a rule tests: `field` (a JSON pointer) of the JSON payload,
/// or the whole payload, as a number when it reads as one.
pub fn value_of(
    payload: &str,
    json: Option<&serde_json::Value>,
    field: Option<&str>,
) -> serde_json::Value {
    if let Some(f) = field {
        return json
            .and_then(|j| j.pointer(f))
            .cloned()
            .unwrap_or(serde_json::Value::Null);
    }
    let t = payload.trim();
    if let Ok(n) = t.parse::<i64>() {
        return serde_json::json!(n);
    }
    if let Ok(n) = t.parse::<f64>() {
        if n.is_finite() {
            return serde_json::json!(n);
        }
    }
    serde_json::Value::String(payload.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(topic: &str, payload: &str) -> Ctx {
        Ctx {
            topic: topic.into(),
            payload: payload.into(),
            client: None,
            at: 0,
        }
    }

    #[test]
    fn templates_see_the_message_its_captures_and_the_state() {
        let mut t = Templates::default();
        let tpl = t
            .add("lights/{{ captures[0] }}/set {{ json.level * 2 }} {{ state.n }}")
            .expect("valid");
        let c = ctx("rooms/kitchen/motion", "{\"level\": 21}");
        let mut state = BTreeMap::new();
        state.insert("n".to_owned(), serde_json::json!(3));
        let scope = Scope::new(&c, vec!["kitchen".into()], None, &state, 5, "r");
        assert_eq!(
            t.render(&tpl, &scope).expect("renders"),
            "lights/kitchen/set 42 3"
        );
        assert_eq!(t.add("plain").expect("valid"), Tpl::Text("plain".into()));
        assert!(t.add("{{ unclosed").is_err());
    }

    #[test]
    fn a_condition_is_an_expression_over_the_value() {
        let mut t = Templates::default();
        let cond = t
            .add_condition("value > 25 and json.room == 'kitchen'")
            .expect("valid");
        let state = BTreeMap::new();
        let hot = ctx("t", "{\"room\": \"kitchen\", \"temp\": 26.5}");
        let scope = Scope::new(&hot, vec![], Some("/temp"), &state, 0, "r");
        assert_eq!(t.holds(&cond, &scope), Ok(true));
        let cold = ctx("t", "{\"room\": \"kitchen\", \"temp\": 20}");
        let scope = Scope::new(&cold, vec![], Some("/temp"), &state, 0, "r");
        assert_eq!(t.holds(&cond, &scope), Ok(false));
    }

    #[test]
    fn a_runaway_template_runs_out_of_fuel() {
        let mut t = Templates::default();
        let tpl = t
            .add(
                "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
            )
            .expect("valid");
        let state = BTreeMap::new();
        let c = ctx("t", "");
        let scope = Scope::new(&c, vec![], None, &state, 0, "r");
        let e = t.render(&tpl, &scope).expect_err("stopped");
        assert!(e.contains("fuel"), "{e}");
    }
}
