//! Standby agents: a number added to a trigger's value, always or while a weekly window is
//! open, so that idle agents are ready before the first jobs of the day. Pure: the caller
//! passes the time.
//!
//! `"2"`, or windows separated by `;`, each `DAYS HH:MM-HH:MM TIME_ZONE=N`:
//! `Mon-Fri 07:00-19:00 Europe/Berlin=2; Sat 09:00-12:00 UTC=1`. Days are `Mon`…`Sun`,
//! ranges (`Fri-Mon` wraps) and comma lists; times are the zone's wall clock, so a window
//! follows daylight saving; an end at or before the start runs past midnight (the days name
//! where it starts); `24:00` ends at midnight. Where windows overlap the largest N applies.

use jiff::{Timestamp, tz::TimeZone};

/// The most standby agents one trigger may ask for.
pub const MAX_STANDBY: u32 = 1000;

#[derive(Debug, Clone, PartialEq)]
pub enum Standby {
    Always(u32),
    Schedule(Vec<Window>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// Bit `d` set: the window starts on day `d` (Monday = 0).
    days: u8,
    /// Minutes after local midnight; `end` may be 1440.
    start: u16,
    end: u16,
    zone: TimeZone,
    agents: u32,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl Standby {
    /// Parses the metadata value; the error names the part that failed.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        if raw.bytes().all(|b| b.is_ascii_digit()) && !raw.is_empty() {
            return count(raw).map(Self::Always);
        }
        let windows = raw
            .split(';')
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .map(|w| Window::parse(w).map_err(|e| format!("{w:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if windows.is_empty() {
            return Err(format!(
                "{raw:?} is neither a number nor a schedule like `Mon-Fri 07:00-19:00 Europe/Berlin=2`"
            ));
        }
        Ok(Self::Schedule(windows))
    }

    /// Standby agents wanted at `now`.
    pub fn at(&self, now: Timestamp) -> u64 {
        match self {
            Self::Always(n) => u64::from(*n),
            Self::Schedule(windows) => windows
                .iter()
                .filter(|w| w.is_open(now))
                .map(|w| u64::from(w.agents))
                .max()
                .unwrap_or(0),
        }
    }
}

fn count(raw: &str) -> Result<u32, String> {
    match raw.trim().parse::<u32>() {
        Ok(n) if n <= MAX_STANDBY => Ok(n),
        Ok(n) => Err(format!("{n} is more than {MAX_STANDBY} standby agents")),
        Err(_) => Err(format!("{raw:?} is not a whole number of agents")),
    }
}

impl Window {
    fn parse(raw: &str) -> Result<Self, String> {
        let parts: Vec<&str> = raw.split_whitespace().collect();
        let [days, times, zone_and_count] = parts[..] else {
            return Err("expected `DAYS HH:MM-HH:MM TIME_ZONE=N`".into());
        };
        let (zone, agents) = zone_and_count
            .rsplit_once('=')
            .ok_or_else(|| format!("{zone_and_count:?} lacks `=N` (the number of agents)"))?;
        let zone = TimeZone::get(zone).map_err(|_| format!("unknown time zone {zone:?}"))?;
        let (start, end) = times
            .split_once('-')
            .ok_or_else(|| format!("{times:?} is not a range like 07:00-19:00"))?;
        let (start, end) = (minutes(start, false)?, minutes(end, true)?);
        if start == end {
            return Err(format!("{times:?} is empty"));
        }
        Ok(Self {
            days: day_set(days)?,
            start,
            end,
            zone,
            agents: count(agents)?,
        })
    }

    fn is_open(&self, now: Timestamp) -> bool {
        let local = now.to_zoned(self.zone.clone());
        let day = local.weekday().to_monday_zero_offset() as u8;
        let minute = u16::from(local.hour() as u8) * 60 + u16::from(local.minute() as u8);
        let starts_on = |d: u8| self.days & (1 << d) != 0;
        if self.start < self.end {
            starts_on(day) && (self.start..self.end).contains(&minute)
        } else {
            // Past midnight: open from the start today, or until the end after yesterday's start.
            (starts_on(day) && minute >= self.start)
                || (starts_on((day + 6) % 7) && minute < self.end)
        }
    }
}

/// `HH:MM` as minutes after midnight; `24:00` only as an end.
fn minutes(raw: &str, is_end: bool) -> Result<u16, String> {
    let bad = || format!("{raw:?} is not a time like 07:30");
    let (h, m) = raw.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    match (h, m) {
        (24, 0) if is_end => Ok(1440),
        (0..=23, 0..=59) => Ok(h * 60 + m),
        _ => Err(bad()),
    }
}

fn day_index(raw: &str) -> Result<u8, String> {
    DAYS.iter()
        .position(|d| d.eq_ignore_ascii_case(raw))
        .map(|i| i as u8)
        .ok_or_else(|| format!("{raw:?} is not a day (Mon, Tue, Wed, Thu, Fri, Sat, Sun)"))
}

/// `Mon-Fri`, `Sat,Sun`, `Fri-Mon` (wrapping) as a set of day bits.
fn day_set(raw: &str) -> Result<u8, String> {
    let mut set = 0u8;
    for item in raw.split(',') {
        match item.split_once('-') {
            None => set |= 1 << day_index(item)?,
            Some((from, to)) => {
                let (from, to) = (day_index(from)?, day_index(to)?);
                let mut d = from;
                loop {
                    set |= 1 << d;
                    if d == to {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(schedule: &str, instant: &str) -> u64 {
        Standby::parse(schedule)
            .unwrap()
            .at(instant.parse().unwrap())
    }

    #[test]
    fn a_number_is_always_on() {
        assert_eq!(at("3", "2026-11-26T03:00:00Z"), 3);
        assert_eq!(at(" 0 ", "2026-11-26T03:00:00Z"), 0);
        assert_eq!(Standby::parse("1000").unwrap(), Standby::Always(1000));
    }

    #[test]
    fn windows_follow_the_zone_and_its_daylight_saving() {
        let berlin = "Mon-Fri 07:00-19:00 Europe/Berlin=2; Sat 09:00-12:00 UTC=1";
        // (instant, standby). Berlin is UTC+1 in winter and UTC+2 from 2026-03-29 02:00 UTC+1.
        let table = [
            // Thursday 26 November 2026, CET.
            ("2026-11-26T05:59:59Z", 0),
            ("2026-11-26T06:00:00Z", 2),
            ("2026-11-26T17:59:59Z", 2),
            ("2026-11-26T18:00:00Z", 0),
            // Friday before the change: 06:30 UTC is 07:30 CET.
            ("2026-03-27T05:30:00Z", 0),
            ("2026-03-27T06:30:00Z", 2),
            // Monday after it: 05:30 UTC is already 07:30 CEST, and 17:30 UTC is 19:30.
            ("2026-03-30T04:59:59Z", 0),
            ("2026-03-30T05:30:00Z", 2),
            ("2026-03-30T16:59:59Z", 2),
            ("2026-03-30T17:30:00Z", 0),
            // Saturday in UTC; Berlin's weekday window is closed.
            ("2026-11-28T08:59:00Z", 0),
            ("2026-11-28T09:00:00Z", 1),
            ("2026-11-28T11:59:00Z", 1),
            ("2026-11-28T12:00:00Z", 0),
            ("2026-11-29T10:00:00Z", 0),
        ];
        for (instant, want) in table {
            assert_eq!(at(berlin, instant), want, "{instant}");
        }
    }

    #[test]
    fn minutes_count() {
        let s = "Mon-Sun 07:30-08:15 UTC=1";
        let table = [
            ("2026-11-26T07:29:59Z", 0),
            ("2026-11-26T07:30:00Z", 1),
            ("2026-11-26T08:14:59Z", 1),
            ("2026-11-26T08:15:00Z", 0),
        ];
        for (instant, want) in table {
            assert_eq!(at(s, instant), want, "{instant}");
        }
    }

    #[test]
    fn overnight_wrapping_and_overlapping_windows() {
        // Friday 22:00 to Saturday 06:00 UTC; the days name where a window starts.
        let night = "Fri 22:00-06:00 UTC=4";
        let table = [
            ("2026-11-27T21:59:00Z", 0),
            ("2026-11-27T22:00:00Z", 4),
            ("2026-11-28T05:59:00Z", 4),
            ("2026-11-28T06:00:00Z", 0),
            ("2026-11-28T22:30:00Z", 0),
            ("2026-11-27T03:00:00Z", 0),
        ];
        for (instant, want) in table {
            assert_eq!(at(night, instant), want, "{instant}");
        }
        // Sun-Mon wraps the week; 24:00 closes at midnight; the larger of two open windows wins.
        let s =
            "Sun-Mon 00:00-24:00 UTC=1; mon 08:00-09:00 UTC=5; Wed,Fri 12:00-13:00 Asia/Tokyo=2";
        assert_eq!(at(s, "2026-11-29T23:59:00Z"), 1); // Sunday
        assert_eq!(at(s, "2026-11-30T08:30:00Z"), 5); // Monday
        assert_eq!(at(s, "2026-12-01T00:00:00Z"), 0); // Tuesday
        assert_eq!(at(s, "2026-12-02T03:30:00Z"), 2); // Wednesday 12:30 in Tokyo
        assert_eq!(at(s, "2026-12-03T03:30:00Z"), 0); // Thursday
        assert_eq!(at(s, "2026-12-04T03:59:00Z"), 2); // Friday 12:59 in Tokyo
        assert_eq!(at(s, "2026-12-04T04:00:00Z"), 0);
    }

    #[test]
    fn errors_name_the_part_that_failed() {
        let table = [
            ("", "neither a number nor a schedule"),
            ("1001", "more than 1000"),
            ("-1", "expected `DAYS"),
            ("Mon-Fri 07:00-19:00 Europe/Berlin", "lacks `=N`"),
            (
                "Mon-Fri 07:00-19:00 Mars/Olympus=1",
                "unknown time zone \"Mars/Olympus\"",
            ),
            ("Mon-Fri 7:00-19:00 UTC=1", "\"7:00\" is not a time"),
            ("Mon-Fri 07:00-24:01 UTC=1", "\"24:01\" is not a time"),
            ("Mon-Fri 24:00-06:00 UTC=1", "\"24:00\" is not a time"),
            ("Mon-Fri 07:60-08:00 UTC=1", "\"07:60\" is not a time"),
            ("Mon-Fri 0700-1900 UTC=1", "\"0700\" is not a time"),
            ("Mon-Fri 07:00 UTC=1", "\"07:00\" is not a range"),
            ("Mon-Fri 07:00-07:00 UTC=1", "is empty"),
            ("Mon-Fry 07:00-19:00 UTC=1", "\"Fry\" is not a day"),
            (
                "Mon-Fri 07:00-19:00 UTC=two",
                "\"two\" is not a whole number",
            ),
            ("Mon-Fri 07:00-19:00 UTC=1; Sat", "\"Sat\": expected"),
            ("Mon 07:00-19:00 UTC=1 extra", "expected `DAYS"),
        ];
        for (raw, want) in table {
            let err = Standby::parse(raw).unwrap_err();
            assert!(err.contains(want), "{raw:?}: {err}");
        }
    }
}
