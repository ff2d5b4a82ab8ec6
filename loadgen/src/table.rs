//! The end-of-run table: the summary as a person reads it on a terminal. Kept apart from
//! [`crate::report`], which computes what it shows.

use std::fmt::Write as _;

use crate::recorder::Percentiles;
use crate::report::Summary;

fn pct_row(out: &mut String, name: &str, p: &Percentiles) {
    let _ = writeln!(
        out,
        "  {name:<22} {:>9} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>10.1}",
        p.count, p.p50, p.p90, p.p99, p.p999, p.max
    );
}

/// Seconds as given (`0.5 s`, `10 s`): sub-second durations are common now that they can be
/// typed as `500ms`.
fn secs(x: f64) -> String {
    if (x - x.round()).abs() < 1e-9 {
        format!("{x:.0} s")
    } else {
        format!("{} s", (x * 1000.0).round() / 1000.0)
    }
}

/// The end-of-run table.
pub fn table(s: &Summary) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "loadgen {} — {}{}, {} {} desktops over {} shard(s) × {} thread(s), {} measured \
         (ramp {}, warm-up {} excluded)",
        s.scenario,
        s.load_model,
        match (s.load_model.as_str(), s.target_rate_rps) {
            ("sequential", _) => {
                " (one request at a time per desktop; media servers submit open loop)".to_string()
            }
            (_, Some(r)) => format!(" loop at {r:.0} req/s"),
            _ => format!(" loop, {} outstanding per desktop", s.window),
        },
        s.clients.target,
        s.transport,
        s.shards,
        s.threads_per_shard,
        secs(s.duration_s),
        secs(s.ramp_s),
        secs(s.warmup_s)
    );
    let c = &s.clients;
    let _ = writeln!(
        o,
        "clients   target {}  connected {}  failed {}  (peak {}, failed attempts {}, reconnects {}, dropped {}, login refused {}, resumed {}, resume refused {})",
        c.target,
        c.connected,
        c.failed,
        c.peak_connected,
        c.failed_attempts,
        c.reconnects,
        c.dropped,
        c.login_failed,
        c.resumed,
        c.resume_refused
    );
    let r = &s.requests;
    let _ = writeln!(
        o,
        "requests  sent {}  ok {}  errors {} (not_sent {}, outcome_unknown {}, rejected {})  lost {}  wrong {}  unknown-id {}  duplicate {}",
        r.sent,
        r.ok,
        r.errors,
        r.errors_by_class.not_sent,
        r.errors_by_class.outcome_unknown,
        r.errors_by_class.rejected,
        r.lost,
        r.wrong,
        r.unknown_correlation,
        r.duplicates
    );
    let _ = writeln!(
        o,
        "          due in the window {}  unsent {}  — all written by type: {}",
        r.due,
        r.unsent,
        r.by_type
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        o,
        "throughput {:.0} req/s (ok, inside the window){}{}",
        s.throughput_rps,
        match (s.achieved_rate_rps, s.achieved_over_target) {
            (Some(a), Some(r)) => format!(
                "; sent {a:.0} req/s of the due ones = {:.1} % of the target",
                r * 100.0
            ),
            _ => String::new(),
        },
        if s.target_missed {
            format!(
                "  ** TARGET MISSED: {} **",
                s.target_missed_reasons.join("; ")
            )
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        o,
        "  {:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "latency (µs)", "count", "p50", "p90", "p99", "p99.9", "max"
    );
    pct_row(&mut o, "corrected", &s.latency_us);
    pct_row(&mut o, "uncorrected", &s.latency_uncorrected_us);
    pct_row(&mut o, "send lag", &s.send_lag_us);
    pct_row(&mut o, "connect (sessions)", &s.connect_us);
    pct_row(&mut o, "hello (sessions)", &s.hello_us);
    if s.back_after_drop_us.count > 0 {
        pct_row(&mut o, "back after a drop", &s.back_after_drop_us);
    }
    if r.unsent > 0 {
        pct_row(&mut o, "unsent: lateness", &r.unsent_lateness_us);
    }
    for (k, p) in &s.ops {
        pct_row(&mut o, &format!("op {k}"), p);
    }
    if s.events.received > 0 || s.scenario == "supervisor" {
        let e = &s.events;
        let _ = writeln!(
            o,
            "events    received {}  gaps {} (at end {}, {} subscribers checked)  duplicates {}  distinct published {}  invites {}  props {}  revoked {}  unicast lost {} duplicated {} replayed {}",
            e.received,
            e.gaps,
            e.missed_at_end,
            e.subscribers_checked,
            e.duplicates,
            e.published,
            e.invites,
            e.props_changed,
            e.revoked,
            e.unicast_lost,
            e.unicast_duplicates,
            e.replayed
        );
        pct_row(&mut o, "event delivery", &e.delivery_us);
        pct_row(&mut o, "publish→last subscr.", &e.last_subscriber_us);
    }
    for (i, st) in s.storm.iter().enumerate() {
        let _ = writeln!(
            o,
            "storm {} ({}): reconnected {}  failed {}  failed attempts {}",
            i + 1,
            if st.jitter {
                "jittered backoff"
            } else {
                "no jitter"
            },
            st.reconnected,
            st.failed,
            st.failed_attempts
        );
        pct_row(&mut o, "reconnect time", &st.reconnect_us);
    }
    if let Some(g) = &s.gms {
        o.push_str(&g.lines());
    }
    let _ = writeln!(
        o,
        "loadgen   cpu {:.0} % of a core, {:.2} µs cpu/request, busiest thread {:.0} % (run-queue wait up to {:.0} %), sched lag p99 {:.0} µs max {:.0} µs{}",
        s.loadgen_cpu_percent,
        s.loadgen_cpu_us_per_request,
        s.loadgen_thread_busy_max * 100.0,
        s.loadgen_runqueue_wait_max * 100.0,
        s.loadgen_sched_lag_us.p99,
        s.loadgen_sched_lag_us.max,
        if s.loadgen_saturated {
            format!(
                "  ** SATURATED: {} **",
                s.loadgen_saturation_reasons.join("; ")
            )
        } else {
            String::new()
        }
    );
    if s.stopped_early {
        let _ = writeln!(
            o,
            "STOPPED EARLY (Ctrl-C): figures over the {:.1} s measured (of {:.1} s planned)",
            s.measured_s, s.duration_s
        );
    }
    if let Some(sv) = &s.server {
        let _ = writeln!(o, "server    {sv}");
    }
    let _ = writeln!(
        o,
        "verification {}",
        if s.verification_failed {
            "FAILED (requests lost or answered wrongly, event gaps, or bookings matched wrongly, lost, double-booked or leaked)"
        } else {
            "passed: every request answered exactly once with the right content"
        }
    );
    for smp in s.samples.iter().take(5) {
        let _ = writeln!(o, "  sample: {smp}");
    }
    o
}
