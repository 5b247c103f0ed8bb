//! Cron triggers: a schedule with seconds in a time zone (croner +
//! chrono-tz). Each tick queues one async invocation whose event names the
//! trigger, the schedule, the zone, the scheduled time and the fire time.
//!
//! **Catch-up rule.** The last tick fired is stored (per function and
//! trigger, with the schedule it belonged to). When the source starts and
//! ticks were due while flick was down, it fires *one* catch-up tick — the
//! latest one missed, with `catch_up: true` and how many were `missed` —
//! and then follows the schedule from now. A trigger that never fired, or
//! whose schedule or zone changed, starts from now without a catch-up.
//! Each tick is submitted with an idempotency key of the trigger and the
//! tick's time, so a tick queued just before a crash (and not yet recorded
//! as fired) is not queued twice by the catch-up after it.

use chrono::{DateTime, TimeZone as _};
use chrono_tz::Tz;
use flick_core::{Cause, now_ms};
use serde_json::json;
use tokio::sync::watch;

use crate::manager::{Ctx, Stop, sleep_or_stop};
use crate::status::TriggerState;

/// Most missed ticks counted for a catch-up's `missed` (a 1-second
/// schedule down for a week would otherwise be counted tick by tick).
const MAX_COUNTED: u64 = 10_000;

pub(crate) async fn run(ctx: Ctx, schedule: String, timezone: String, mut stop: watch::Receiver<Stop>) {
    let (cron, tz) = match (flick_core::trigger::parse_schedule(&schedule), timezone.parse::<Tz>()) {
        (Ok(c), Ok(tz)) => (c, tz),
        // Checked at deploy; a stored manifest that no longer parses (a
        // zone removed from the database) stays visible instead of panicking.
        (Err(e), _) => return ctx.tracker.broken(e),
        (_, Err(e)) => return ctx.tracker.broken(format!("time zone `{timezone}`: {e}")),
    };
    let key = format!("{schedule} {timezone}");
    // Ticks at or before this have been dealt with.
    let mut done_ms = now_ms();
    match ctx.sink.last_tick(&ctx.function, &ctx.trigger).await {
        Ok(Some((k, last))) if k == key => {
            let (latest, missed) = missed_ticks(&cron, tz, last, done_ms);
            if let Some(latest) = latest {
                tracing::info!(function = %ctx.function, trigger = %ctx.trigger, missed, "cron: one catch-up tick for the ticks missed while stopped");
                fire(&ctx, tz, &schedule, &timezone, &key, latest, Some(missed)).await;
            }
        }
        Ok(_) => {}
        Err(e) => ctx.tracker.failed(format!("reading the last tick: {e}")),
    }
    loop {
        ctx.tracker.set_state(TriggerState::Scheduled);
        let Some(next) = next_tick(&cron, tz, done_ms) else {
            ctx.tracker.broken("the schedule has no future tick");
            let _ = stop.wait_for(|s| *s != Stop::Run).await;
            return;
        };
        // Sleep in steps of at most a minute: the wall clock may be set
        // while waiting, and a tick is due by the wall clock.
        loop {
            let wait = next - now_ms();
            if wait <= 0 {
                break;
            }
            let step = std::time::Duration::from_millis(wait.min(60_000) as u64);
            if sleep_or_stop(step, &mut stop).await {
                return;
            }
        }
        fire(&ctx, tz, &schedule, &timezone, &key, next, None).await;
        done_ms = next;
    }
}

/// The first tick strictly after `after_ms`.
pub(crate) fn next_tick(cron: &croner::Cron, tz: Tz, after_ms: i64) -> Option<i64> {
    let from = tz.timestamp_millis_opt(after_ms).single()?;
    cron.find_next_occurrence(&from, false).ok().map(|t| t.timestamp_millis())
}

/// The latest tick in `(last_ms, now_ms]` and how many ticks fell in that
/// interval (at most [`MAX_COUNTED`]).
fn missed_ticks(cron: &croner::Cron, tz: Tz, last_ms: i64, now_ms: i64) -> (Option<i64>, u64) {
    let Some(now) = tz.timestamp_millis_opt(now_ms).single() else { return (None, 0) };
    let latest = cron.find_previous_occurrence(&now, true).ok().map(|t| t.timestamp_millis()).filter(|t| *t > last_ms);
    if latest.is_none() {
        return (None, 0);
    }
    let Some(last) = tz.timestamp_millis_opt(last_ms).single() else { return (latest, 1) };
    let missed =
        cron.iter_after(last).take_while(|t| t.timestamp_millis() <= now_ms).take(MAX_COUNTED as usize).count();
    (latest, missed.max(1) as u64)
}

fn rfc3339(tz: Tz, ms: i64) -> String {
    tz.timestamp_millis_opt(ms)
        .single()
        .map(|t: DateTime<Tz>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

#[allow(clippy::too_many_arguments)]
async fn fire(ctx: &Ctx, tz: Tz, schedule: &str, timezone: &str, key: &str, tick_ms: i64, missed: Option<u64>) {
    let fired_ms = now_ms();
    let mut event = json!({
        "trigger": ctx.trigger,
        "type": "cron",
        "schedule": schedule,
        "timezone": timezone,
        "scheduled_time": rfc3339(tz, tick_ms),
        "scheduled_ms": tick_ms,
        "fire_time": rfc3339(tz, fired_ms),
        "fire_ms": fired_ms,
        "catch_up": missed.is_some(),
    });
    if let Some(n) = missed {
        event["missed"] = n.into();
    }
    let inv = crate::event::invocation(&ctx.function, Cause::Cron, &ctx.trigger, event);
    let idempotency = format!("flick-cron:{}:{tick_ms}", ctx.trigger);
    match ctx.sink.submit(inv, Some(idempotency)).await {
        Ok(_) => {
            ctx.tracker.fired();
            if let Err(e) = ctx.sink.set_last_tick(&ctx.function, &ctx.trigger, key, tick_ms).await {
                ctx.tracker.failed(format!("recording the tick: {e}"));
            }
        }
        // A tick that cannot be queued is not retried: the next one comes.
        Err(e) => {
            tracing::warn!(function = %ctx.function, trigger = %ctx.trigger, error = %e, "cron tick not queued");
            ctx.tracker.failed(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missed_ticks_give_the_latest_and_a_count() {
        let cron = flick_core::trigger::parse_schedule("*/10 * * * * *").unwrap();
        let tz: Tz = "Europe/Rome".parse().unwrap();
        let base = 1_700_000_000_000; // a multiple of 10 s
        assert_eq!(missed_ticks(&cron, tz, base, base + 5_000), (None, 0));
        assert_eq!(missed_ticks(&cron, tz, base, base + 10_000), (Some(base + 10_000), 1));
        assert_eq!(missed_ticks(&cron, tz, base, base + 65_000), (Some(base + 60_000), 6));
        assert_eq!(missed_ticks(&cron, tz, base, base + 86_400_000 * 7).1, MAX_COUNTED);
        assert_eq!(next_tick(&cron, tz, base), Some(base + 10_000));
        assert_eq!(next_tick(&cron, tz, base + 1), Some(base + 10_000));
    }

    #[test]
    fn zones_shift_the_schedule() {
        // 09:00 every day in Rome is 08:00 UTC in winter.
        let cron = flick_core::trigger::parse_schedule("0 0 9 * * *").unwrap();
        let rome: Tz = "Europe/Rome".parse().unwrap();
        let jan_1 = 1_704_067_200_000; // 2024-01-01T00:00:00Z
        assert_eq!(next_tick(&cron, rome, jan_1), Some(jan_1 + 8 * 3_600_000));
        assert_eq!(rfc3339(rome, jan_1 + 8 * 3_600_000), "2024-01-01T09:00:00.000+01:00");
    }
}
