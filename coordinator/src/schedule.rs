//! JobSchedule: operators give `DaysOfWeek` (digits 1 = Sunday … 7 = Saturday,
//! any separators) and `TimeOfDay`, in the organization's `TimeZoneOffset`
//! (hours from UTC; UTC without an organization). The coordinator computes the
//! next fire time (`NextRunAt`, UTC) in the application, and when it is due
//! inserts the JobHistory row and advances `NextRunAt` in the same transaction,
//! under `FOR UPDATE SKIP LOCKED`, so:
//!
//! * a slot fires exactly once, whatever the number of coordinators;
//! * there is no 12-hour cap: any number of slots per day, one per row;
//! * slots just after midnight are not missed (no time-of-day window arithmetic);
//! * a slot missed while every coordinator was down fires once on return, not
//!   once per missed slot.
//!
//! Changing `DaysOfWeek`, `TimeOfDay` or `ConfigID` with SQL clears `NextRunAt`
//! (a trigger), and the coordinator computes it again from now.

use std::sync::LazyLock;

use aegis_shared::model::job_history::{self, NewJob};
use chrono::{DateTime, Duration, NaiveTime, Utc};
use sqlx::{Acquire, MySqlPool};

pub static FIRED: LazyLock<prometheus::IntCounterVec> = LazyLock::new(|| {
    aegis_shared::metrics::counter_vec(
        "aegis_schedules_fired_total",
        "JobSchedule slots that created a JobHistory row",
        &["job"],
    )
});

/// The days a DaysOfWeek value names, as chrono weekdays counted from Sunday (0..=6).
pub fn days_of(days_of_week: &str) -> Vec<u32> {
    let mut days: Vec<u32> = days_of_week
        .chars()
        .filter_map(|c| c.to_digit(10))
        .filter(|d| (1..=7).contains(d))
        .map(|d| d - 1)
        .collect();
    days.sort_unstable();
    days.dedup();
    days
}

/// The first fire time strictly after `after`, or `None` when no valid day is named.
pub fn next_fire_after(
    after: DateTime<Utc>,
    days_of_week: &str,
    time_of_day: NaiveTime,
    offset_hours: f64,
) -> Option<DateTime<Utc>> {
    let days = days_of(days_of_week);
    if days.is_empty() {
        return None;
    }
    let offset = Duration::seconds((offset_hours * 3600.0).round() as i64);
    let local_now = after.naive_utc() + offset;
    for d in 0..=7 {
        let date = local_now.date() + Duration::days(d);
        let weekday_from_sunday = date.format("%w").to_string().parse::<u32>().ok()?;
        if !days.contains(&weekday_from_sunday) {
            continue;
        }
        let candidate = (date.and_time(time_of_day) - offset).and_utc();
        if candidate > after {
            return Some(candidate);
        }
    }
    None
}

#[derive(sqlx::FromRow)]
struct DueSchedule {
    #[sqlx(rename = "ID")]
    id: String,
    #[sqlx(rename = "ConfigID")]
    config_id: String,
    #[sqlx(rename = "Struct")]
    job: String,
    #[sqlx(rename = "DaysOfWeek")]
    days: Option<String>,
    #[sqlx(rename = "TimeOfDay")]
    time: Option<NaiveTime>,
    #[sqlx(rename = "NextRunAt")]
    next_run_at: Option<DateTime<Utc>>,
    #[sqlx(rename = "TimeZoneOffset")]
    offset: f64,
    #[sqlx(rename = "Now")]
    now: DateTime<Utc>,
}

/// Evaluates schedules: fires the due ones, computes missing next fire times.
/// Returns how many JobHistory rows were created. (MariaDB has no
/// `FOR UPDATE OF`, so JobSchedule rows are locked alone and the rest is read
/// without locks.)
pub async fn run_due_schedules(pool: &MySqlPool) -> anyhow::Result<usize> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        .execute(&mut *conn)
        .await?;
    let mut tx = conn.begin().await?;
    tracing::debug!("Job Runner: Checking for scheduled jobs ready to execute");
    let locked: Vec<(String,)> = sqlx::query_as(
        "SELECT ID FROM JobSchedule
          WHERE Active = 1 AND ConfigID IS NOT NULL AND (NextRunAt IS NULL OR NextRunAt <= UTC_TIMESTAMP(3))
          FOR UPDATE SKIP LOCKED",
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut fired = 0;
    for (id,) in locked {
        let row: Option<DueSchedule> = sqlx::query_as(
            "SELECT js.ID, js.ConfigID, j.Struct, js.DaysOfWeek, js.TimeOfDay, js.NextRunAt,
                    CAST(COALESCE(o.TimeZoneOffset, 0) AS DOUBLE) AS TimeZoneOffset, UTC_TIMESTAMP(3) AS Now
               FROM JobSchedule js
               JOIN JobConfig jc ON jc.ID = js.ConfigID
               JOIN Job j ON j.Id = jc.JobId
               LEFT JOIN Organization o ON o.ID = jc.OrganizationID
              WHERE js.ID = ? AND jc.Active = 1 AND (o.ID IS NULL OR o.Active = 1)",
        )
        .bind(&id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(s) = row else { continue };
        let next = match (&s.days, s.time) {
            (Some(days), Some(time)) => next_fire_after(s.now, days, time, s.offset),
            _ => None,
        };
        if next.is_none() {
            tracing::warn!(
                "Job Runner: JobSchedule {} has no valid DaysOfWeek (digits 1-7) or TimeOfDay; it will not fire",
                s.id
            );
        }
        if s.next_run_at.is_some() {
            let row = job_history::insert(
                &mut tx,
                &NewJob {
                    job_name: s.job.clone(),
                    config_id: Some(s.config_id.clone()),
                    created_by: "RUNNER".into(),
                    ..Default::default()
                },
            )
            .await?;
            FIRED.with_label_values(&[&s.job]).inc();
            fired += 1;
            tracing::info!(job_id = %row.id, "Job Runner: Queueing [1] Scheduled Jobs ({} from JobSchedule {})", s.job, s.id);
        }
        // Far future when it can never fire, so the row is not re-read every pass.
        let next = next.unwrap_or_else(|| s.now + Duration::days(3650));
        sqlx::query(
            "UPDATE JobSchedule SET NextRunAt = ?, LastRun = IF(?, UTC_TIMESTAMP(3), LastRun) WHERE ID = ?",
        )
        .bind(next)
        .bind(s.next_run_at.is_some())
        .bind(&s.id)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(fired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, min, 0)
            .single()
            .expect("valid time")
    }
    fn t(h: u32, m: u32) -> NaiveTime {
        NaiveTime::from_hms_opt(h, m, 0).expect("valid time")
    }

    #[test]
    fn days_are_digits_one_for_sunday_to_seven_for_saturday() {
        assert_eq!(days_of("1234567"), vec![0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(days_of("2,3,4,5,6"), vec![1, 2, 3, 4, 5]);
        assert_eq!(days_of("8, 0, x"), Vec::<u32>::new());
    }

    #[test]
    fn next_fire_is_later_today_or_on_the_next_matching_day() {
        // 2026-11-24 is a Tuesday (digit 3).
        let now = at(2026, 11, 24, 10, 0);
        assert_eq!(
            next_fire_after(now, "1234567", t(12, 0), 0.0),
            Some(at(2026, 11, 24, 12, 0))
        );
        assert_eq!(
            next_fire_after(now, "1234567", t(9, 0), 0.0),
            Some(at(2026, 11, 25, 9, 0))
        );
        // Weekdays only, from Friday evening: Monday.
        let friday = at(2026, 11, 27, 20, 0);
        assert_eq!(
            next_fire_after(friday, "2,3,4,5,6", t(6, 0), 0.0),
            Some(at(2026, 11, 30, 6, 0))
        );
        // Exactly at the slot: the next one (a slot fires once).
        assert_eq!(
            next_fire_after(at(2026, 11, 24, 12, 0), "3", t(12, 0), 0.0),
            Some(at(2026, 12, 1, 12, 0))
        );
        assert_eq!(next_fire_after(now, "9", t(12, 0), 0.0), None);
    }

    #[test]
    fn slots_just_after_midnight_are_not_missed() {
        let before_midnight = at(2026, 11, 24, 23, 59);
        assert_eq!(
            next_fire_after(before_midnight, "1234567", t(0, 0), 0.0),
            Some(at(2026, 11, 25, 0, 0))
        );
        assert_eq!(
            next_fire_after(before_midnight, "1234567", t(0, 1), 0.0),
            Some(at(2026, 11, 25, 0, 1))
        );
    }

    #[test]
    fn organization_offset_shifts_the_slot() {
        // 09:00 at UTC-5 is 14:00 UTC; the weekday is the local one.
        let now = at(2026, 11, 24, 3, 0); // Monday 22:00 local
        assert_eq!(
            next_fire_after(now, "2", t(23, 0), -5.0),
            Some(at(2026, 11, 24, 4, 0))
        );
        assert_eq!(
            next_fire_after(now, "3", t(9, 0), -5.0),
            Some(at(2026, 11, 24, 14, 0))
        );
    }
}
