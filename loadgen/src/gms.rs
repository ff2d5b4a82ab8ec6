//! What the `callback` scenario counts beyond requests and latencies: the access numbers booked
//! and matched, and every way a booking can go wrong (pool exhausted, expired before the call,
//! matched to another request, handed to two clients at once, stranded on a dead site), per
//! site. Kept apart from [`crate::verify::Tally`], whose counts are per request: these are per
//! booking, which spans two requests and possibly two sites.
//!
//! `leak_check` is filled in afterwards by whoever can look at the servers' databases (the
//! `demo`, see `cli/callback.rs`): loadgen alone cannot tell a number held forever from one
//! held until its expiry.

use serde::{Deserialize, Serialize};

/// Per-site counts (index = the site's place in `--site`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteCounts {
    /// `ACCESS_REQUEST`s answered with a booking here.
    pub booked: u64,
    /// Requests refused here because the pool was exhausted.
    pub exhausted: u64,
    /// Bookings made here and matched (anywhere: only here, with disjoint pools).
    pub matched: u64,
}

/// A thread's (or process's, or run's) booking counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GmsCounts {
    /// Access numbers asked for (one per client cycle, however many sites were tried).
    pub requests: u64,
    /// Of those, answered with a booking.
    pub booked: u64,
    /// `ACCESS_REQUEST`s refused with "no free access number" (one per site tried).
    pub exhausted: u64,
    /// Requests that got no booking at any site (every site exhausted, unreachable or
    /// refusing).
    pub not_booked: u64,
    /// Requests or matches retried at another site after the first failed (not sent, or the
    /// connection died under them).
    pub retried_other_site: u64,
    /// Requests (or matches) whose connection died before the answer, then retried at another
    /// site: outcome unknown at the first (a booking it may have made expires unused; a match
    /// it may have made leaves the booking not found at the other site, counted `stranded`).
    pub interrupted: u64,
    /// Bookings whose call never came (`--abandon`): they must expire.
    pub abandoned: u64,
    /// Calls "dialled" (matches attempted; one per booking not abandoned).
    pub dialled: u64,
    /// Bookings matched with the right request (caller and token).
    pub matched: u64,
    /// Of those, dialled inside the measurement window (for matches/s).
    pub matched_in_window: u64,
    /// Matches that returned another request's data: a failure.
    pub wrong_matches: u64,
    /// Bookings not found when dialled, after their expiry (think time past the TTL).
    pub expired: u64,
    /// Bookings not found on a live site before their expiry: lost, a failure.
    pub lost_bookings: u64,
    /// Calls whose match was answered with an error other than `NOT_FOUND` (counted in
    /// `requests.errors` too): the booking then expires.
    pub match_errors: u64,
    /// Bookings whose site was unreachable when dialled (and the other site did not have
    /// them): the failure table's "request fails" case, not a verification failure.
    pub stranded: u64,
    /// A number handed to a client while another client of the same loadgen process held it
    /// (booked, not yet dialled, not expired): a failure of locking.
    pub double_booked: u64,
    /// Per site.
    pub sites: Vec<SiteCounts>,
}

impl GmsCounts {
    /// The counts of site `i`, growing the list as needed.
    pub fn site(&mut self, i: usize) -> &mut SiteCounts {
        if self.sites.len() <= i {
            self.sites.resize(i + 1, SiteCounts::default());
        }
        &mut self.sites[i]
    }

    /// Add another thread's or process's counts.
    pub fn merge(&mut self, o: &GmsCounts) {
        self.requests += o.requests;
        self.booked += o.booked;
        self.exhausted += o.exhausted;
        self.not_booked += o.not_booked;
        self.retried_other_site += o.retried_other_site;
        self.interrupted += o.interrupted;
        self.abandoned += o.abandoned;
        self.dialled += o.dialled;
        self.matched += o.matched;
        self.matched_in_window += o.matched_in_window;
        self.wrong_matches += o.wrong_matches;
        self.expired += o.expired;
        self.lost_bookings += o.lost_bookings;
        self.match_errors += o.match_errors;
        self.stranded += o.stranded;
        self.double_booked += o.double_booked;
        for (i, s) in o.sites.iter().enumerate() {
            let m = self.site(i);
            m.booked += s.booked;
            m.exhausted += s.exhausted;
            m.matched += s.matched;
        }
    }

    /// Whether a booking went wrong: matched to another request, lost on a live site, or
    /// handed out twice.
    pub fn failed(&self) -> bool {
        self.wrong_matches > 0 || self.lost_bookings > 0 || self.double_booked > 0
    }
}

/// The database audit of one site after the run (see `core-server gms audit`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SiteAudit {
    /// The site (`--site` address of its front).
    pub site: String,
    /// Bookings ever made in its database (its highest booking id: ids are never reused).
    pub made: u64,
    /// Booking rows still in the database when it was stopped.
    pub remaining: u64,
    /// Of those, not yet expired then: numbers still held.
    pub remaining_live: u64,
    /// The server's own counters at the end (none for a site killed during the run: its
    /// counters died with it): bookings matched and bookings removed at expiry.
    pub server_matched: Option<u64>,
    /// See `server_matched`.
    pub server_expired: Option<u64>,
    /// `made - matched - expired - remaining` when the counters are known: bookings neither
    /// matched, expired nor left over. Must be 0.
    pub unaccounted: Option<i64>,
    /// What was done to the site before the audit (e.g. restarted after being killed, so that
    /// its sweep could expire what it held).
    pub note: String,
}

/// `gms.leak_check`: every number booked is matched or expired, checked against the
/// databases after every booking's expiry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LeakCheck {
    /// Per site.
    pub sites: Vec<SiteAudit>,
    /// Booking rows left over plus bookings unaccounted for, over all sites. Must be 0.
    pub leaked: u64,
}

impl LeakCheck {
    /// The check over `sites`: `leaked` summed from them.
    pub fn of(sites: Vec<SiteAudit>) -> LeakCheck {
        let leaked = sites
            .iter()
            .map(|s| s.remaining + s.unaccounted.map_or(0, i64::unsigned_abs))
            .sum();
        LeakCheck { sites, leaked }
    }
}

/// `gms.*` of the summary.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GmsSummary {
    /// The counts.
    #[serde(flatten)]
    pub counts: GmsCounts,
    /// Matches per second of the window (dialled inside it, matched right).
    pub matches_per_s: f64,
    /// The database audit, when the run's driver could make one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leak_check: Option<LeakCheck>,
}

impl GmsSummary {
    /// Whether the bookings failed verification (see [`GmsCounts::failed`]), or numbers
    /// leaked.
    pub fn failed(&self) -> bool {
        self.counts.failed() || self.leak_check.as_ref().is_some_and(|l| l.leaked > 0)
    }

    /// The table's lines.
    pub fn lines(&self) -> String {
        let c = &self.counts;
        let mut o = format!(
            "gms       requests {}  booked {}  exhausted {}  not booked {}  retried other site {}  interrupted {}\n\
             \x20         abandoned {}  dialled {}  matched {} ({:.0} matches/s)  WRONG {}  expired {}  LOST {}  match errors {}  stranded {}  DOUBLE-BOOKED {}\n",
            c.requests,
            c.booked,
            c.exhausted,
            c.not_booked,
            c.retried_other_site,
            c.interrupted,
            c.abandoned,
            c.dialled,
            c.matched,
            self.matches_per_s,
            c.wrong_matches,
            c.expired,
            c.lost_bookings,
            c.match_errors,
            c.stranded,
            c.double_booked,
        );
        for (i, s) in c.sites.iter().enumerate() {
            o.push_str(&format!(
                "          site {i}: booked {}  exhausted {}  matched {}\n",
                s.booked, s.exhausted, s.matched
            ));
        }
        match &self.leak_check {
            None => o.push_str("          leak check: none (no database audit in this run)\n"),
            Some(l) => {
                o.push_str(&format!("          leak check: LEAKED {}\n", l.leaked));
                for a in &l.sites {
                    let srv = match (a.server_matched, a.server_expired, a.unaccounted) {
                        (Some(m), Some(e), Some(u)) => {
                            format!("; server matched {m} expired {e}; unaccounted {u}")
                        }
                        _ => String::new(),
                    };
                    o.push_str(&format!(
                        "            {}: made {} remaining {} (live {}){srv}{}\n",
                        a.site,
                        a.made,
                        a.remaining,
                        a.remaining_live,
                        if a.note.is_empty() {
                            String::new()
                        } else {
                            format!(" — {}", a.note)
                        }
                    ));
                }
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_merge_per_site_and_failures_are_flagged() {
        let mut a = GmsCounts {
            booked: 3,
            matched: 2,
            ..GmsCounts::default()
        };
        a.site(1).booked = 3;
        let mut b = GmsCounts {
            booked: 1,
            expired: 1,
            ..GmsCounts::default()
        };
        b.site(0).booked = 1;
        a.merge(&b);
        assert_eq!((a.booked, a.matched, a.expired), (4, 2, 1));
        assert_eq!(a.sites.len(), 2);
        assert_eq!((a.sites[0].booked, a.sites[1].booked), (1, 3));
        assert!(!a.failed(), "expired bookings are not failures");
        a.wrong_matches = 1;
        assert!(a.failed());
        let mut s = GmsSummary::default();
        assert!(!s.failed());
        s.leak_check = Some(LeakCheck::of(vec![SiteAudit {
            made: 10,
            remaining: 0,
            server_matched: Some(7),
            server_expired: Some(2),
            unaccounted: Some(1),
            ..SiteAudit::default()
        }]));
        assert!(s.failed(), "a booking unaccounted for is a leak");
        assert_eq!(s.leak_check.as_ref().unwrap().leaked, 1);
        assert!(s.lines().contains("LEAKED 1"));
    }
}
