//! When things happened: the launcher's JSON log lines with their time stamps, and the time between two instants.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::anyhow;

/// The launcher's JSON log lines (and those of the driver it starts): message, time stamp and fields.
pub struct LogEvents(Vec<LogEvent>);

pub struct LogEvent {
    pub message: String,
    pub at: SystemTime,
    pub fields: serde_json::Value,
}

impl LogEvents {
    /// Lines that are not JSON (a failure message, libvirt's own output) are skipped.
    pub fn parse(output: &str) -> LogEvents {
        let events = output
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter_map(|mut event| {
                let message = event["fields"]["message"].as_str()?.to_owned();
                let at = parse_timestamp(event["timestamp"].as_str()?)?;
                Some(LogEvent {
                    message,
                    at,
                    fields: event["fields"].take(),
                })
            })
            .collect();
        LogEvents(events)
    }

    /// The time of the last line with this message: the launcher's own `domain started` follows the driver's.
    pub fn last(&self, message: &str) -> anyhow::Result<SystemTime> {
        self.0
            .iter()
            .rev()
            .find(|event| event.message == message)
            .map(|event| event.at)
            .ok_or_else(|| anyhow!("the launcher did not log \"{message}\""))
    }

    /// The time of the first line with this message whose fields satisfy `wanted`.
    pub fn first_where(&self, message: &str, wanted: impl Fn(&serde_json::Value) -> bool) -> Option<SystemTime> {
        self.0
            .iter()
            .find(|event| event.message == message && wanted(&event.fields))
            .map(|event| event.at)
    }
}

/// An RFC 3339 time stamp in UTC, as tracing writes it: `2026-11-22T04:47:01.123456Z`.
fn parse_timestamp(text: &str) -> Option<SystemTime> {
    let (date, time) = text.strip_suffix('Z')?.split_once('T')?;
    let numbers =
        |text: &str, separator| -> Option<Vec<i64>> { text.split(separator).map(|part| part.parse().ok()).collect() };
    let (year, month, day) = match numbers(date, '-')?[..] {
        [year, month, day] => (year, month, day),
        _ => return None,
    };
    let (clock, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let (hours, minutes, seconds) = match numbers(clock, ':')?[..] {
        [hours, minutes, seconds] => (hours, minutes, seconds),
        _ => return None,
    };
    let nanos: u32 = format!("{fraction:0<9}").get(..9)?.parse().ok()?;
    let seconds = days_from_civil(year, month, day) * 86_400 + hours * 3600 + minutes * 60 + seconds;
    Some(UNIX_EPOCH + Duration::new(u64::try_from(seconds).ok()?, nanos))
}

/// Days since 1970-01-01 of a date in the proleptic Gregorian calendar (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Milliseconds from `from` to `to`, negative if `to` is earlier.
pub fn ms_between(from: SystemTime, to: SystemTime) -> f64 {
    match to.duration_since(from) {
        Ok(after) => after.as_secs_f64() * 1e3,
        Err(before) => -before.duration().as_secs_f64() * 1e3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tracing_time_stamps() {
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Some(UNIX_EPOCH));
        // date -u -d 2026-11-22T04:47:01Z +%s
        let at = parse_timestamp("2026-11-22T04:47:01.123456Z").unwrap();
        assert_eq!(
            at.duration_since(UNIX_EPOCH).unwrap(),
            Duration::new(1_795_322_821, 123_456_000)
        );
        let leap = parse_timestamp("2024-02-29T23:59:59.5Z").unwrap();
        assert_eq!(
            leap.duration_since(UNIX_EPOCH).unwrap(),
            Duration::new(1_709_251_199, 500_000_000)
        );
        for bad in ["2026-11-22T04:47:01", "2026-11-22 04:47:01Z", "2026-11T04:47:01Z", "x"] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn finds_the_last_line_with_a_message() {
        let output = r#"{"timestamp":"2026-11-22T04:47:01.000100Z","level":"INFO","fields":{"message":"domain started","elapsed_ms":300},"target":"vmlet_launcher::driver"}
libvirt: error : some message on stderr
{"timestamp":"2026-11-22T04:47:01.000200Z","level":"INFO","fields":{"message":"domain started","elapsed_ms":350},"target":"vmlet_launcher::run"}
"#;
        let log = LogEvents::parse(output);
        let at = log.last("domain started").unwrap();
        assert_eq!(at.duration_since(UNIX_EPOCH).unwrap().subsec_micros(), 200);
        assert!(log.last("network ready").is_err());
    }

    #[test]
    fn finds_the_first_line_whose_fields_match() {
        let output = r#"{"timestamp":"2026-11-22T04:47:01.000100Z","level":"INFO","fields":{"message":"answered","reply":"Offer"}}
{"timestamp":"2026-11-22T04:47:01.000200Z","level":"INFO","fields":{"message":"answered","reply":"Ack"}}
{"timestamp":"2026-11-22T04:47:05.000300Z","level":"INFO","fields":{"message":"answered","reply":"Ack"}}
"#;
        let log = LogEvents::parse(output);
        let ack = log.first_where("answered", |fields| fields["reply"] == "Ack").unwrap();
        assert_eq!(ack.duration_since(UNIX_EPOCH).unwrap().subsec_micros(), 200);
        assert!(log.first_where("answered", |fields| fields["reply"] == "Nak").is_none());
    }
}
