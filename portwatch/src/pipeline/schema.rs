//! What the JSON records share, whichever stage builds them and whichever
//! sink writes them: the schema version, and times as RFC 3339.

/// Each record family's version, raised on any change to its names or
/// meaning (docs/schema.md). `trace`'s events (and its `lost` records):
pub const EVENT_SCHEMA: u32 = 3;
/// `check`'s findings (they started at the events' version and share it).
pub const FINDING_SCHEMA: u32 = 3;
/// `nodeport-steal`'s reports (and their `lost` records).
pub const STEAL_SCHEMA: u32 = 3;
/// `top`'s summaries.
pub const SUMMARY_SCHEMA: u32 = 1;
/// The `sysctl_write` records of `trace` and `serve`.
pub const SYSCTL_SCHEMA: u32 = 1;

/// `time_ns` (ns since the epoch, UTC) as RFC 3339 with microseconds.
pub fn rfc3339_micros(time_ns: u64) -> String {
    Rfc3339Micros::new(time_ns).as_str().to_string()
}

/// `rfc3339_micros` without an allocation, for the per-event path:
/// `2026-11-23T08:12:33.123456Z`, years 0000-9999.
pub struct Rfc3339Micros([u8; 27]);

impl Rfc3339Micros {
    pub fn new(time_ns: u64) -> Rfc3339Micros {
        let secs = time_ns / 1_000_000_000;
        let micros = (time_ns % 1_000_000_000) / 1_000;
        let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
        let sod = secs % 86_400;
        let mut b = *b"0000-00-00T00:00:00.000000Z";
        let mut put = |at: usize, width: usize, mut v: u64| {
            for i in (at..at + width).rev() {
                b[i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, 4, y.clamp(0, 9999) as u64);
        put(5, 2, mo as u64);
        put(8, 2, d as u64);
        put(11, 2, sod / 3600);
        put(14, 2, (sod / 60) % 60);
        put(17, 2, sod % 60);
        put(20, 6, micros);
        Rfc3339Micros(b)
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits and separators are ever written.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

/// Days since 1970-01-01 -> (year, month, day), proleptic Gregorian
/// (the well-known era-based algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339_micros(1_795_421_553_123_456_789),
            "2026-11-23T08:12:33.123456Z"
        );
        assert_eq!(
            rfc3339_micros(951_782_400_000_001_000),
            "2000-02-29T00:00:00.000001Z"
        );
        assert_eq!(
            rfc3339_micros(4_107_542_399_999_999_999),
            "2100-02-28T23:59:59.999999Z"
        );
    }
}
