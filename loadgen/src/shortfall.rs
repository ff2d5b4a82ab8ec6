//! Whether a run delivered the load it was asked for. A generator that quietly sends less than
//! its schedule (requests left unsent when the window ended, or a rate short of the target)
//! understates the latency it reports, so such a run is flagged like a saturated one, with
//! the figures that say by how much.

use crate::recorder::Percentiles;

/// An open-loop run that sent less than this share of its target rate missed its target.
pub const SHORTFALL_LIMIT: f64 = 0.01;

/// Why a run missed its target: `unsent` of the `due` requests were never sent (their
/// lateness at the end of the window in `late`), or the achieved rate was more than
/// [`SHORTFALL_LIMIT`] short of the target. Empty when it did not.
pub fn reasons(
    due: u64,
    unsent: u64,
    late: &Percentiles,
    achieved_over_target: Option<f64>,
) -> Vec<String> {
    let mut out = Vec::new();
    if unsent > 0 {
        out.push(format!(
            "{unsent} of {due} requests due in the window were never sent (lateness at the end \
             p50 {:.1} ms, max {:.1} ms): the in-flight cap held them back (the system answered \
             slowly), or their desktop had no connection; counted in the corrected latency",
            late.p50 / 1000.0,
            late.max / 1000.0
        ));
    }
    if let Some(r) = achieved_over_target
        && r < 1.0 - SHORTFALL_LIMIT
    {
        out.push(format!(
            "sent {:.1} % of the target rate (limit: {:.0} % short)",
            r * 100.0,
            SHORTFALL_LIMIT * 100.0
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsent_requests_or_a_shortfall_over_one_percent_miss_the_target() {
        let none = Percentiles::default();
        assert!(reasons(1000, 0, &none, Some(1.0)).is_empty());
        assert!(
            reasons(1000, 0, &none, Some(0.991)).is_empty(),
            "within 1 %"
        );
        assert!(reasons(1000, 0, &none, None).is_empty(), "closed loop");
        let r = reasons(1000, 0, &none, Some(0.98));
        assert_eq!(r.len(), 1);
        assert!(r[0].contains("98.0 %"), "{r:?}");
        let late = Percentiles {
            p50: 400_000.0,
            max: 1_500_000.0,
            ..Percentiles::default()
        };
        let r = reasons(1000, 3, &late, Some(0.997));
        assert_eq!(
            r.len(),
            1,
            "a few unsent requests are flagged however few: {r:?}"
        );
        assert!(
            r[0].starts_with("3 of 1000") && r[0].contains("max 1500.0 ms"),
            "{r:?}"
        );
        assert_eq!(reasons(1000, 300, &late, Some(0.7)).len(), 2);
    }
}
