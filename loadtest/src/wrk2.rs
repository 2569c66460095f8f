//! wrk2 as the fixed-rate generator of `bench/compare.sh`, where it is
//! installed: this module writes the mix as a wrk2 Lua script (the same
//! requests `run` sends, cycled) and reads wrk2's printed report back into
//! the JSON `run --json` prints, so that the script treats both alike.
//!
//! wrk2 resets its histograms once, after a calibration of 10 s plus 5 ms
//! per connection of a thread; what it prints after that is the measured
//! window, while its request count covers the whole run.

use std::fmt::Write as _;

/// A wrk2 (or wrk) Lua script whose `request()` returns `requests` in turn,
/// each as the raw bytes to send.
pub fn script(requests: &[Vec<u8>]) -> String {
    let mut lua = String::from(
        "-- Written by `loadtest wrk2-script`: the mix's requests, sent in turn.\nlocal r = {\n",
    );
    for req in requests {
        lua.push('"');
        for &b in req {
            match b {
                b'"' | b'\\' => {
                    lua.push('\\');
                    lua.push(b as char);
                }
                b' '..=b'~' => lua.push(b as char),
                // Lua's decimal escape; three digits, so that a digit
                // after it is not read as part of it.
                _ => {
                    let _ = write!(lua, "\\{b:03}");
                }
            }
        }
        lua.push_str("\",\n");
    }
    lua.push_str("}\nlocal i = 0\nrequest = function()\n  i = i % #r + 1\n  return r[i]\nend\n");
    lua
}

/// What wrk2 printed, in the units `run --json` reports.
#[derive(Debug)]
pub struct Wrk2Report {
    /// Answers over the whole run, calibration included.
    pub completed: u64,
    pub seconds: f64,
    /// Answers with a status over 399 (wrk2 counts no others).
    pub other_status: u64,
    /// Socket errors of every kind.
    pub errors: u64,
    /// Recorded latency (from each request's intended send time), µs, at
    /// 50, 90, 99, 99.9, 99.99 and 100 percent.
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub p9999_us: f64,
    pub max_us: f64,
}

impl Wrk2Report {
    /// `completed` over `seconds`.
    pub fn achieved_rate(&self) -> f64 {
        if self.seconds > 0.0 {
            self.completed as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// The object `run --json` prints, for a run at `rate` over
    /// `connections`.
    pub fn json(&self, rate: u64, connections: usize) -> String {
        format!(
            "{{\"generator\":\"wrk2\",\"target_rate\":{rate},\"connections\":{connections},\"seconds\":{:.1},\"completed\":{},\"achieved_rate\":{:.0},\"ok\":{},\"other_status\":{},\"errors\":{},\"p50_us\":{:.1},\"p90_us\":{:.1},\"p99_us\":{:.1},\"p999_us\":{:.1},\"p9999_us\":{:.1},\"max_us\":{:.1}}}",
            self.seconds,
            self.completed,
            self.achieved_rate(),
            self.completed.saturating_sub(self.other_status),
            self.other_status,
            self.errors,
            self.p50_us,
            self.p90_us,
            self.p99_us,
            self.p999_us,
            self.p9999_us,
            self.max_us
        )
    }
}

/// Reads wrk2's report, run with `-L` (its latency distribution). Names the
/// line, or the part, that is missing or unreadable.
pub fn report(text: &str) -> Result<Wrk2Report, String> {
    let mut percentiles: Vec<(f64, f64)> = Vec::new();
    let mut in_distribution = false;
    let mut completed_seconds = None;
    let mut other_status = 0;
    let mut errors = 0;
    for (n, line) in text.lines().enumerate() {
        let at = |what: &str| format!("line {}: {what}: {line:?}", n + 1);
        let line_t = line.trim();
        if line_t.starts_with("Latency Distribution (HdrHistogram - Recorded Latency)") {
            in_distribution = true;
            continue;
        }
        if in_distribution {
            if let Some((Ok(p), v)) = line_t.split_once('%').map(|(p, v)| (p.parse::<f64>(), v)) {
                percentiles.push((p, duration_us(v.trim()).ok_or_else(|| at("a latency"))?));
                continue;
            }
            in_distribution = false;
        }
        if let Some((count, rest)) = line_t.split_once(" requests in ") {
            let count = count.parse::<u64>().map_err(|_| at("a request count"))?;
            let time = rest.split(',').next().unwrap_or_default();
            let us = duration_us(time.trim()).ok_or_else(|| at("a run time"))?;
            completed_seconds = Some((count, us / 1e6));
        } else if let Some(rest) = line_t.strip_prefix("Non-2xx or 3xx responses:") {
            other_status = rest.trim().parse().map_err(|_| at("a count"))?;
        } else if let Some(rest) = line_t.strip_prefix("Socket errors:") {
            for part in rest.split(',') {
                let count = part.split_whitespace().last().unwrap_or_default();
                errors += count.parse::<u64>().map_err(|_| at("an error count"))?;
            }
        }
    }
    let (completed, seconds) =
        completed_seconds.ok_or("no \"N requests in T\" line (did wrk2 run?)")?;
    let at = |p: f64| {
        percentiles
            .iter()
            .find(|(q, _)| (q - p).abs() < 1e-9)
            .map(|(_, v)| *v)
            .ok_or_else(|| format!("no {p:.3}% line in the latency distribution (was -L given?)"))
    };
    Ok(Wrk2Report {
        completed,
        seconds,
        other_status,
        errors,
        p50_us: at(50.0)?,
        p90_us: at(90.0)?,
        p99_us: at(99.0)?,
        p999_us: at(99.9)?,
        p9999_us: at(99.99)?,
        max_us: at(100.0)?,
    })
}

/// A wrk2 duration ("26.62us", "1.23ms", "10.00s", "2.00m", "1.00h") in µs.
fn duration_us(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => return None,
    };
    let value: f64 = number.parse().ok()?;
    value.is_finite().then_some(value * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report as wrk2 printed it with `-L` (at 2,000/s over 16
    /// connections against trackplane), its spectrum cut short.
    const PRINTED: &str = "Running 13s test @ http://127.0.0.1:18555/
  1 threads and 16 connections
  Thread calibration: mean lat.: 0.764ms, rate sampling interval: 10ms
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   790.17us  504.87us   5.09ms   72.38%
    Req/Sec     2.08k   152.97     2.78k    67.71%
  Latency Distribution (HdrHistogram - Recorded Latency)
 50.000%  756.00us
 75.000%    1.06ms
 90.000%    1.37ms
 99.000%    2.04ms
 99.900%    4.56ms
 99.990%    4.95ms
 99.999%    5.09ms
100.000%    5.09ms

  Detailed Percentile spectrum:
       Value   Percentile   TotalCount 1/(1-Percentile)

       0.023     0.000000            1         1.00
       5.091     1.000000         5800          inf
#[Mean    =        0.790, StdDeviation   =        0.505]
#[Max     =        5.088, Total count    =         5800]
#[Buckets =           27, SubBuckets     =         2048]
----------------------------------------------------------
  25890 requests in 12.98s, 6.72MB read
  Non-2xx or 3xx responses: 311
Requests/sec:   1994.81
Transfer/sec:    530.10KB
";

    #[test]
    fn reads_what_wrk2_prints() {
        let r = report(PRINTED).unwrap();
        assert_eq!((r.completed, r.seconds), (25_890, 12.98));
        assert!(
            (r.achieved_rate() - 1_994.6).abs() < 0.1,
            "{}",
            r.achieved_rate()
        );
        assert_eq!((r.other_status, r.errors), (311, 0));
        assert_eq!(r.p50_us, 756.0);
        assert_eq!(r.p90_us, 1_370.0);
        assert_eq!(r.p99_us, 2_040.0);
        assert_eq!(r.p999_us, 4_560.0);
        assert_eq!(r.p9999_us, 4_950.0);
        assert_eq!(r.max_us, 5_090.0);
        let json: serde_json::Value = serde_json::from_str(&r.json(2_000, 16)).unwrap();
        assert_eq!(json["p99_us"], 2040.0);
        assert_eq!(json["ok"], 25_890 - 311);
        assert_eq!(json["achieved_rate"], 1_995.0);
    }

    #[test]
    fn socket_errors_of_every_kind_are_counted() {
        let with_errors = PRINTED.replace(
            "  Non-2xx",
            "  Socket errors: connect 1, read 2, write 0, timeout 5\n  Non-2xx",
        );
        assert_eq!(report(&with_errors).unwrap().errors, 8);
    }

    #[test]
    fn microseconds_and_every_unit_are_read() {
        assert_eq!(duration_us("26.62us"), Some(26.62));
        assert_eq!(duration_us("850.00us"), Some(850.0));
        assert_eq!(duration_us("0.85ms"), Some(850.0));
        assert_eq!(duration_us("10.00s"), Some(10e6));
        assert_eq!(duration_us("2.00m"), Some(120e6));
        assert_eq!(duration_us("1.00h"), Some(3600e6));
        assert_eq!(duration_us("1.00d"), None);
        assert_eq!(duration_us("ms"), None);
        assert_eq!(duration_us("12"), None);
    }

    #[test]
    fn a_report_without_its_distribution_or_count_is_refused_by_name() {
        let no_dist: String = PRINTED
            .lines()
            .filter(|l| !l.contains("99.900%"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(report(&no_dist).unwrap_err().contains("99.900%"));
        let no_count = PRINTED.replace("requests in", "asked in");
        assert!(report(&no_count).unwrap_err().contains("requests in"));
        let bad = PRINTED.replace(" 99.000%    2.04ms", " 99.000%    2.04xs");
        assert!(report(&bad).unwrap_err().starts_with("line 11: a latency"));
        assert!(report("").is_err());
    }

    #[test]
    fn the_script_holds_each_request_escaped() {
        let reqs = vec![
            b"GET /i?a=\"b\\c HTTP/1.1\r\nHost: h\r\n\r\n".to_vec(),
            b"GET /c HTTP/1.1\r\n\r\n\x01".to_vec(),
        ];
        let lua = script(&reqs);
        assert!(lua.contains(r#""GET /i?a=\"b\\c HTTP/1.1\013\010Host: h\013\010\013\010","#));
        assert!(lua.contains(r#""GET /c HTTP/1.1\013\010\013\010\001","#));
        assert!(lua.contains("request = function()"));
        assert!(lua.is_ascii());
    }
}
