//! Triggers that fire rules (OpenWhisk's event model, made through its API):
//! a [`RuleTrigger`] is a named channel of events, each active [`Rule`] on
//! it sends every event to one function. Firing a trigger is a platform
//! action, whatever fired it (a caller, an alarm feed): each active rule
//! becomes one durable async call through the same queue as any
//! non-blocking invoke (`Cause::Trigger`, the trigger's name, and the
//! trigger's activation id as the call's `parent`), its parameters merged as
//! OpenWhisk merges them: the function's defaults < the trigger's
//! parameters < the event's.
//!
//! An alarm feed ([`Alarm`], kept on its trigger) is a schedule that fires
//! the trigger; `flick_triggers::feeds` runs them, following
//! [`Platform::rule_changes`].

use std::sync::Arc;

use flick_core::{ActivationId, Cause, FunctionName, Invocation, Presentation, now_ms};
pub use flick_store::{Rule, RuleTrigger};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Caller, Platform, PlatformError};

/// What a create-or-replace did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Saved {
    Created,
    Replaced,
    /// It existed and no overwrite was asked for: nothing changed.
    Exists,
}

/// A fired trigger: its activation id and what each active rule did.
#[derive(Clone, Debug)]
pub struct Fired {
    pub id: ActivationId,
    pub rules: Vec<FiredRule>,
}

#[derive(Clone, Debug)]
pub struct FiredRule {
    pub rule: String,
    pub action: String,
    /// The queued call's activation id, or why none was queued.
    pub result: Result<ActivationId, String>,
}

/// A schedule that fires a trigger (OpenWhisk's `/whisk.system/alarms`
/// feeds), with the event each firing carries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alarm {
    pub schedule: AlarmSchedule,
    #[serde(default)]
    pub payload: Map<String, Value>,
    /// No firing before this (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_ms: Option<i64>,
    /// No firing after this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_ms: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum AlarmSchedule {
    /// A cron schedule (5 fields, or 6 with seconds) in a time zone.
    Cron { cron: String, timezone: String },
    /// Every `minutes` minutes, from the start (or from when it was made).
    Interval { minutes: u64 },
    /// Once, at `at_ms`.
    Once { at_ms: i64 },
}

impl Alarm {
    /// The feed as stored on its trigger.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// A stored feed; `None` for anything that is not an alarm.
    pub fn from_json(v: &Value) -> Option<Self> {
        serde_json::from_value(v.clone()).ok()
    }

    /// Checks what a caller sent, naming the field at fault.
    pub fn check(&self) -> Result<(), PlatformError> {
        match &self.schedule {
            AlarmSchedule::Cron { cron, timezone } => {
                flick_core::trigger::parse_schedule(cron)
                    .map_err(|e| PlatformError::BadRequest(format!("cron: {e}")))?;
                flick_core::trigger::check_timezone(timezone)
                    .map_err(|e| PlatformError::BadRequest(format!("timezone: {e}")))?;
            }
            AlarmSchedule::Interval { minutes } if *minutes == 0 => {
                return Err(PlatformError::BadRequest("minutes must be at least 1".into()));
            }
            AlarmSchedule::Interval { .. } => {}
            AlarmSchedule::Once { at_ms } if *at_ms <= now_ms() => {
                return Err(PlatformError::BadRequest("date must be in the future".into()));
            }
            AlarmSchedule::Once { .. } => {}
        }
        if let (Some(a), Some(b)) = (self.start_ms, self.stop_ms)
            && b <= a
        {
            return Err(PlatformError::BadRequest("stopDate must be after startDate".into()));
        }
        Ok(())
    }
}

/// A trigger's or rule's name: the rules of function names.
fn check_name(what: &str, name: &str) -> Result<(), PlatformError> {
    FunctionName::new(name)
        .map(drop)
        .map_err(|e| PlatformError::BadRequest(e.to_string().replacen("function name", &format!("{what} name"), 1)))
}

fn not_found(what: &'static str, name: &str) -> PlatformError {
    PlatformError::NotFound { what, name: name.to_string() }
}

impl Platform {
    /// A receiver that sees a new value after every change of a rule
    /// trigger (what the alarm feeds follow).
    pub fn rule_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.rule_changes.subscribe()
    }

    /// Moves [`Platform::rule_changes`]: a rule trigger changed, here or
    /// (with a shared store) on another node.
    pub(crate) fn rules_changed(&self) {
        self.rule_changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Creates (or with `overwrite`, replaces) a rule trigger.
    pub async fn put_rule_trigger(&self, trigger: RuleTrigger, overwrite: bool) -> Result<Saved, PlatformError> {
        check_name("trigger", &trigger.name)?;
        if let Some(alarm) = trigger.feed.as_ref().and_then(Alarm::from_json) {
            alarm.check()?;
        }
        let existed = overwrite && self.store.rule_trigger(&trigger.name).await?.is_some();
        if !self.store.put_rule_trigger(&trigger, overwrite).await? {
            return Ok(Saved::Exists);
        }
        self.rules_changed();
        Ok(if existed { Saved::Replaced } else { Saved::Created })
    }

    pub async fn rule_trigger(&self, name: &str) -> Result<RuleTrigger, PlatformError> {
        self.store.rule_trigger(name).await?.ok_or_else(|| not_found("trigger", name))
    }

    pub async fn rule_triggers(&self) -> Result<Vec<RuleTrigger>, PlatformError> {
        Ok(self.store.rule_triggers().await?)
    }

    /// Deletes a trigger (its feed stops; its rules stay, as OpenWhisk's).
    pub async fn delete_rule_trigger(&self, name: &str) -> Result<RuleTrigger, PlatformError> {
        let trigger = self.rule_trigger(name).await?;
        if !self.store.delete_rule_trigger(name).await? {
            return Err(not_found("trigger", name));
        }
        self.rules_changed();
        Ok(trigger)
    }

    /// Sets or clears a trigger's alarm feed.
    pub async fn set_alarm(&self, name: &str, alarm: Option<Alarm>) -> Result<RuleTrigger, PlatformError> {
        if let Some(a) = &alarm {
            a.check()?;
        }
        let trigger = self.rule_trigger(name).await?;
        let trigger = RuleTrigger { feed: alarm.map(|a| a.to_json()), updated_ms: now_ms(), ..trigger };
        self.store.put_rule_trigger(&trigger, true).await?;
        self.rules_changed();
        Ok(trigger)
    }

    /// Creates (or replaces) a rule; its trigger and function must exist.
    pub async fn put_rule(&self, rule: Rule, overwrite: bool) -> Result<Saved, PlatformError> {
        check_name("rule", &rule.name)?;
        self.rule_trigger(&rule.trigger).await?;
        if self.route(&rule.action).is_none() {
            return Err(PlatformError::FunctionNotFound(rule.action));
        }
        let existed = overwrite && self.store.rule(&rule.name).await?.is_some();
        if !self.store.put_rule(&rule, overwrite).await? {
            return Ok(Saved::Exists);
        }
        Ok(if existed { Saved::Replaced } else { Saved::Created })
    }

    pub async fn rule(&self, name: &str) -> Result<Rule, PlatformError> {
        self.store.rule(name).await?.ok_or_else(|| not_found("rule", name))
    }

    /// All rules, or a trigger's.
    pub async fn rules(&self, trigger: Option<&str>) -> Result<Vec<Rule>, PlatformError> {
        Ok(self.store.rules(trigger).await?)
    }

    pub async fn delete_rule(&self, name: &str) -> Result<Rule, PlatformError> {
        let rule = self.rule(name).await?;
        if !self.store.delete_rule(name).await? {
            return Err(not_found("rule", name));
        }
        Ok(rule)
    }

    pub async fn set_rule_active(&self, name: &str, active: bool) -> Result<(), PlatformError> {
        if self.store.set_rule_active(name, active).await? { Ok(()) } else { Err(not_found("rule", name)) }
    }

    /// Fires a trigger with an event: one durable async call per active
    /// rule. `None` when no rule is active (nothing ran). Errors: the
    /// trigger does not exist; or every call was refused (the queue is
    /// full, the disk is) — then the first refusal, so the caller retries.
    /// Each call is a span of `trace` (the firer's `traceparent`, else a
    /// new trace shared by the calls of this firing).
    pub async fn fire(
        self: &Arc<Self>,
        trigger: &str,
        event: Map<String, Value>,
        trace: Option<flick_core::Trace>,
    ) -> Result<Option<Fired>, PlatformError> {
        let t = self.rule_trigger(trigger).await?;
        let rules: Vec<Rule> = self.store.rules(Some(trigger)).await?.into_iter().filter(|r| r.active).collect();
        if rules.is_empty() {
            return Ok(None);
        }
        let id = ActivationId::generate();
        let trace = trace.unwrap_or_else(flick_core::Trace::start);
        let mut params = t.params;
        params.extend(event);
        let mut fired = Vec::with_capacity(rules.len());
        let mut refusal = None;
        for rule in rules {
            let result = match self.resolve(&rule.action).await {
                None => Err(format!("function `{}` not found", rule.action)),
                Some(route) => {
                    let mut merged: Map<String, Value> = route.revision.manifest.params.clone().into_iter().collect();
                    merged.extend(params.clone());
                    let body = serde_json::to_vec(&Value::Object(merged))
                        .map_err(|e| PlatformError::Internal(format!("event: {e}")))?;
                    let mut inv = Invocation::post(rule.action.clone(), Cause::Trigger, body);
                    // The parameters are the event: `main(params)` gets them alone.
                    inv.presentation = Presentation::Direct;
                    inv.trigger = Some(trigger.to_string());
                    inv.parent = Some(id.clone());
                    inv.trace = Some(trace.sibling());
                    match self.submit(route, Caller::Admin, inv, None).await {
                        Ok(s) => Ok(s.id),
                        Err(e) => {
                            let shown = e.to_string();
                            refusal.get_or_insert(e);
                            Err(shown)
                        }
                    }
                }
            };
            if let Err(e) = &result {
                tracing::warn!(trigger, rule = %rule.name, action = %rule.action, error = %e, "a rule's call was not queued");
            }
            fired.push(FiredRule { rule: rule.name, action: rule.action, result });
        }
        if let Some(e) = refusal
            && fired.iter().all(|f| f.result.is_err())
        {
            return Err(e);
        }
        Ok(Some(Fired { id, rules: fired }))
    }
}
