//! Alarm feeds: the schedules that fire rule triggers (OpenWhisk's
//! `/whisk.system/alarms` feeds, kept on their triggers by the platform).
//! [`run`] follows `Platform::rule_changes` and keeps one task per trigger
//! with an alarm: a cron schedule (with seconds, in a time zone, the same
//! parser and clock as cron triggers), every n minutes, or once. Each tick
//! fires the trigger (`Platform::fire`) with the alarm's payload; its active
//! rules then queue their calls. A changed alarm restarts its task; a
//! removed one (or its trigger) stops it. There is no catch-up after
//! downtime, as OpenWhisk's alarms have none.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono_tz::Tz;
use flick_core::now_ms;
use flick_platform::{Alarm, AlarmSchedule, Platform};
use tokio::task::JoinHandle;

/// How soon a failed read of the triggers is tried again.
const RETRY: Duration = Duration::from_secs(5);

/// Runs every trigger's alarm until `shutdown`.
pub async fn run(platform: Arc<Platform>, shutdown: impl std::future::Future<Output = ()>) {
    let mut changes = platform.rule_changes();
    let mut running: HashMap<String, (Alarm, JoinHandle<()>)> = HashMap::new();
    tokio::pin!(shutdown);
    loop {
        changes.borrow_and_update();
        let retry = match platform.rule_triggers().await {
            Ok(all) => {
                let wanted: HashMap<String, Alarm> = all
                    .into_iter()
                    .filter_map(|t| t.feed.as_ref().and_then(Alarm::from_json).map(|a| (t.name, a)))
                    .collect();
                reconcile(&platform, &mut running, wanted);
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "alarms: cannot read the triggers; trying again");
                Some(RETRY)
            }
        };
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep(retry.unwrap_or(RETRY)), if retry.is_some() => {}
            _ = &mut shutdown => break,
        }
    }
    for (_, (_, task)) in running {
        task.abort();
    }
}

fn reconcile(
    platform: &Arc<Platform>,
    running: &mut HashMap<String, (Alarm, JoinHandle<()>)>,
    wanted: HashMap<String, Alarm>,
) {
    running.retain(|name, (alarm, task)| {
        let keep = wanted.get(name) == Some(alarm) && !task.is_finished();
        if !keep {
            task.abort();
        }
        keep
    });
    for (name, alarm) in wanted {
        if let std::collections::hash_map::Entry::Vacant(slot) = running.entry(name) {
            let task = tokio::spawn(ring(platform.clone(), slot.key().clone(), alarm.clone()));
            slot.insert((alarm, task));
        }
    }
}

/// One trigger's alarm: fires it at each tick until the alarm ends.
async fn ring(platform: Arc<Platform>, trigger: String, alarm: Alarm) {
    let cron = match &alarm.schedule {
        AlarmSchedule::Cron { cron, timezone } => {
            match (flick_core::trigger::parse_schedule(cron), timezone.parse::<Tz>()) {
                (Ok(c), Ok(tz)) => Some((c, tz)),
                // Checked when it was set; a stored one that no longer parses is skipped, not a panic.
                _ => {
                    tracing::warn!(trigger, "alarm: the stored schedule does not parse; not firing");
                    return;
                }
            }
        }
        _ => None,
    };
    let begun = now_ms();
    let mut after = alarm.start_ms.map_or(begun, |s| s.max(begun) - 1);
    loop {
        let next = match (&alarm.schedule, &cron) {
            (AlarmSchedule::Cron { .. }, Some((c, tz))) => crate::cron::next_tick(c, *tz, after),
            (AlarmSchedule::Interval { minutes }, _) => {
                let period = (*minutes as i64).saturating_mul(60_000);
                let base = alarm.start_ms.unwrap_or(begun);
                Some(base + ((after - base).max(0) / period + 1) * period)
            }
            (AlarmSchedule::Once { at_ms }, _) => Some(*at_ms).filter(|at| *at > after),
            _ => None,
        };
        let Some(next) = next.filter(|n| alarm.stop_ms.is_none_or(|stop| *n <= stop)) else { return };
        // Sleep in steps of at most a minute: a tick is due by the wall clock.
        loop {
            let wait = next - now_ms();
            if wait <= 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(wait.min(60_000) as u64)).await;
        }
        match platform.fire(&trigger, alarm.payload.clone(), None).await {
            Ok(Some(fired)) => tracing::debug!(trigger, id = %fired.id, rules = fired.rules.len(), "alarm fired"),
            Ok(None) => tracing::debug!(trigger, "alarm fired; no active rule"),
            Err(e) => tracing::warn!(trigger, error = %e, "alarm could not fire its trigger"),
        }
        after = next;
    }
}
