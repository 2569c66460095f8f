//! The part of a run's tail that the machine made, apart from the part the
//! server made. On a VM the guest's cores stop now and then: the host runs
//! something else, or the guest's own memory monitor runs unpreemptibly.
//! Every answer due meanwhile waits for the stall to end, whichever server
//! answers it. On the 2-core EPYC VMs this project measures on, stalls of
//! half a millisecond to a few hold about 0.6% of every server's answers
//! at 20k and 50k requests/s (the median window; 0.4-1.5% in single
//! windows), so p99.9 there is the stalls' and not the server's, and p99
//! sits close to their edge.
//!
//! A stall is read off the answers themselves: while any answer waits at
//! least `stall_ns`, from its due time to its last byte, the server was not
//! answering, and every answer due in that span waited on the same thing.
//! Overlapping spans merge. The answers due inside a stall are left out of
//! the second histogram; what is left is the server's own tail. A server
//! that stalls by itself (a thread of its own holding the core) shows as
//! more stalls and a larger share left out than its rivals in the same
//! hour, so the split is read with those two numbers beside it.

use hdrhistogram::Histogram;

/// A run's answers split at its stalls.
pub struct Split {
    /// Spans in which some answer waited at least the stall length.
    pub stalls: usize,
    /// Answers due inside a stall.
    pub left_out: u64,
    /// Latency (ns) of every answer due outside the stalls.
    pub outside: Histogram<u64>,
}

impl Split {
    /// The share of answers left out, in percent of `all`.
    pub fn left_out_pct(&self, all: u64) -> f64 {
        if all == 0 {
            0.0
        } else {
            100.0 * self.left_out as f64 / all as f64
        }
    }
}

/// Splits `trace` (each answer's due time and latency, ns, in any order) at
/// the spans where some answer waited at least `stall_ns`.
pub fn split(trace: &[(u64, u64)], stall_ns: u64) -> Split {
    let mut answers = trace.to_vec();
    answers.sort_unstable();
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for &(due, latency) in answers.iter().filter(|&&(_, l)| l >= stall_ns) {
        let end = due.saturating_add(latency);
        match spans.last_mut() {
            Some(last) if due <= last.1 => last.1 = last.1.max(end),
            _ => spans.push((due, end)),
        }
    }
    let mut outside = crate::engine::latency_histogram();
    let mut left_out = 0;
    let mut span = spans.iter().peekable();
    for &(due, latency) in &answers {
        while span.next_if(|s| s.1 < due).is_some() {}
        match span.peek() {
            Some(s) if s.0 <= due => left_out += 1,
            _ => outside.saturating_record(latency.max(1_000)),
        }
    }
    Split {
        stalls: spans.len(),
        left_out,
        outside,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: u64 = 1_000;
    const MS: u64 = 1_000_000;

    /// An answer every 50 µs for `secs` seconds, each taking `base`, with
    /// the core stopped over each of `stops` (start, length): an answer due
    /// inside one is sent when it ends.
    fn run(secs: u64, base: u64, stops: &[(u64, u64)]) -> Vec<(u64, u64)> {
        (0..secs * 20_000)
            .map(|i| {
                let due = i * 50 * US;
                let wait = stops
                    .iter()
                    .find(|&&(at, len)| at <= due && due < at + len)
                    .map_or(0, |&(at, len)| at + len - due);
                (due, wait + base)
            })
            .collect()
    }

    #[test]
    fn answers_due_inside_a_stall_are_left_out_and_the_rest_keep_their_tail() {
        let stops = [(100 * MS, 2 * MS), (500 * MS, MS), (900 * MS, 3 * MS)];
        let trace = run(1, 40 * US, &stops);
        let whole = split(&trace, u64::MAX);
        assert_eq!(whole.stalls, 0);
        assert_eq!(whole.left_out, 0);
        // Six ms of 1000 stopped: 0.6% of the answers, so the whole p99.9 is a stall's.
        assert!(whole.outside.value_at_quantile(0.999) > 500 * US);

        let s = split(&trace, 500 * US);
        assert_eq!(s.stalls, 3);
        // A stall's span runs from the first answer due in the stop to its
        // last byte, 40 µs past the stop's end: the answers due in the stop
        // and the one due as it ends.
        assert_eq!(s.left_out, 41 + 21 + 61);
        assert!((s.left_out_pct(trace.len() as u64) - 0.615).abs() < 1e-9);
        assert!(s.outside.value_at_quantile(0.999) < 41 * US);
        assert!(s.outside.max() < 41 * US);
    }

    #[test]
    fn a_slow_server_keeps_its_tail_below_the_stall_length() {
        // Every hundredth answer takes 300 µs: the server's own, under the
        // stall length, so nothing is left out and its p99.5 stays.
        let mut trace = run(1, 40 * US, &[]);
        for (i, a) in trace.iter_mut().enumerate() {
            if i % 100 == 0 {
                a.1 = 300 * US;
            }
        }
        let s = split(&trace, 500 * US);
        assert_eq!((s.stalls, s.left_out), (0, 0));
        assert!(s.outside.value_at_quantile(0.995) >= 299 * US);
    }

    #[test]
    fn overlapping_slow_answers_make_one_stall_and_order_does_not_matter() {
        // Two slow answers 500 µs apart, each waiting 1 ms: one span of 1.5 ms.
        let mut trace = run(1, 40 * US, &[]);
        trace[4_000].1 = MS;
        trace[4_010].1 = MS;
        trace.reverse();
        let s = split(&trace, 500 * US);
        assert_eq!(s.stalls, 1);
        // Due from the first slow answer to 1.5 ms after it, ends included.
        assert_eq!(s.left_out, 31);
        assert_eq!(s.outside.len(), 20_000 - 31);
        assert!(s.outside.max() < 41 * US);
    }

    #[test]
    fn an_empty_run_splits_into_nothing() {
        let s = split(&[], 500 * US);
        assert_eq!((s.stalls, s.left_out, s.outside.len()), (0, 0, 0));
        assert_eq!(s.left_out_pct(0), 0.0);
    }
}
