//! The event loop's tick lag under an HTTP load, from the agent's own
//! `vfio_zp_event_loop_lag_seconds` histogram read before and after: the
//! buckets' growth is the ticks that ran during the load.

const METRIC: &str = "vfio_zp_event_loop_lag_seconds_bucket{le=\"";

/// Cumulative bucket counts by upper bound (`+Inf` as infinity).
fn buckets(metrics: &str) -> Vec<(f64, f64)> {
    metrics
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(METRIC)?;
            let (le, rest) = rest.split_once("\"}")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, rest.trim().parse().ok()?))
        })
        .collect()
}

/// Ticks during the load and the bucket bound their 99th percentile lies
/// under (infinity: above the largest bound); `None` without both
/// readings or without a tick between them.
pub fn p99(before: &str, after: &str) -> Option<(u64, f64)> {
    let (b, a) = (buckets(before), buckets(after));
    if a.is_empty() || a.len() != b.len() {
        return None;
    }
    let grown: Vec<(f64, f64)> = a
        .iter()
        .zip(&b)
        .map(|((le, x), (_, y))| (*le, x - y))
        .collect();
    let total = grown.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let bound = grown
        .iter()
        .find(|(_, n)| *n >= 0.99 * total)
        .map_or(f64::INFINITY, |(le, _)| *le);
    Some((total as u64, bound))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(counts: &[(&str, u64)]) -> String {
        let mut s = String::from("# TYPE vfio_zp_event_loop_lag_seconds histogram\n");
        for (le, n) in counts {
            s += &format!("{METRIC}{le}\"}} {n}\n");
        }
        s + "vfio_zp_other 3\n"
    }

    #[test]
    fn the_percentile_is_of_the_ticks_during_the_load() {
        // Before: 100 ticks, all slow (a start-up); they must not count.
        let before = histogram(&[("0.005", 0), ("0.01", 0), ("0.5", 100), ("+Inf", 100)]);
        // During: 1000 ticks, 995 under 5 ms, 5 under 10 ms.
        let after = histogram(&[
            ("0.005", 995),
            ("0.01", 1000),
            ("0.5", 1100),
            ("+Inf", 1100),
        ]);
        assert_eq!(p99(&before, &after), Some((1000, 0.005)));
        // 40 of 1020 between 10 ms and 0.5 s.
        let after = histogram(&[("0.005", 980), ("0.01", 980), ("0.5", 1120), ("+Inf", 1120)]);
        assert_eq!(p99(&before, &after), Some((1020, 0.5)));
        // 200 of 1100 past every bound.
        let after = histogram(&[("0.005", 900), ("0.01", 900), ("0.5", 1000), ("+Inf", 1200)]);
        assert_eq!(p99(&before, &after), Some((1100, f64::INFINITY)));
    }

    #[test]
    fn no_reading_or_no_tick_is_no_figure() {
        let h = histogram(&[("0.005", 5), ("+Inf", 5)]);
        assert_eq!(p99(&h, &h), None);
        assert_eq!(p99("", &h), None);
        assert_eq!(p99(&h, ""), None);
    }
}
