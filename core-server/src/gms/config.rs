//! `[gms]`: the access-number service's settings, checked as a whole before it starts.

use std::collections::HashSet;
use std::net::SocketAddr;

use serde::Deserialize;

/// How a resource group hands its numbers out (the seed's three scenarios).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Locking {
    /// A pool with locking: a booked number goes to no one else until it is matched or its
    /// booking expires. The switch finds the request by the dialled number alone.
    #[default]
    Pool,
    /// No locking: every client may be given the same number(s) at once (one global number,
    /// or one per site). The switch finds the request by access code, or else by the
    /// caller's number; an access code is unique among the live bookings of its number.
    None,
}

/// Which free number a pool hands out next.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// Any free number, at random (spreads the load on the switch's trunks).
    #[default]
    Random,
    /// The free numbers in turn, from where the last booking left off.
    RoundRobin,
}

/// One resource group (`[[gms.groups]]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// Tenant it belongs to (bookings are kept per tenant).
    pub tenant: u32,
    /// Its name, as clients ask for it.
    pub name: String,
    /// `pool` (default) or `none`.
    #[serde(default)]
    pub locking: Locking,
    /// `random` (default) or `round_robin`.
    #[serde(default)]
    pub selection: Selection,
    /// The access numbers (E.164 or switch dialable strings), at most 64 bytes each.
    pub numbers: Vec<String>,
    /// How long a booking holds its number when no match comes, ms. 1000 to 86400000.
    /// Default 60000.
    #[serde(default = "default_ttl")]
    pub booking_ttl_ms: u64,
    /// Access code digits when the request does not say: 0 (none) to 12. Default 0.
    #[serde(default)]
    pub code_len: u8,
}

fn default_ttl() -> u64 {
    60_000
}

fn default_sweep() -> u64 {
    1000
}

/// `[gms]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GmsConfig {
    /// The HTTP/JSON API for mobile and web clients (`POST /gms/v1/...`); off when absent.
    /// Unlike the admin port it is meant to be reachable by clients: put TLS in front.
    pub http_listen: Option<SocketAddr>,
    /// How often expired bookings are removed (their numbers freed), ms. 100 to 60000.
    /// Default 1000. A booking past its expiry is never matched or counted in use, whether
    /// removed yet or not.
    #[serde(default = "default_sweep")]
    pub expiry_sweep_ms: u64,
    /// The resource groups.
    #[serde(default)]
    pub groups: Vec<Group>,
}

/// Longest access number, caller number or group name accepted.
pub const MAX_NUMBER: usize = 64;
/// Most access-code digits.
pub const MAX_CODE: u8 = 12;

impl GmsConfig {
    /// Ranges, uniqueness, and numbers not shared across a tenant's pools (a pool's number
    /// must lead the switch to one booking).
    ///
    /// # Errors
    /// A message naming the group and the rule.
    pub fn validate(&self) -> Result<(), String> {
        if !(100..=60_000).contains(&self.expiry_sweep_ms) {
            return Err("gms.expiry_sweep_ms must be 100 to 60000".into());
        }
        let mut names = HashSet::new();
        let mut pooled: HashSet<(u32, &str)> = HashSet::new();
        for g in &self.groups {
            let at = format!("gms group {:?} of tenant {}", g.name, g.tenant);
            if g.tenant == 0 || g.name.is_empty() || g.name.len() > MAX_NUMBER {
                return Err(format!(
                    "{at}: tenant must be non-zero and name 1 to 64 bytes"
                ));
            }
            if !names.insert((g.tenant, g.name.as_str())) {
                return Err(format!("{at}: defined twice"));
            }
            if g.numbers.is_empty() {
                return Err(format!("{at}: no numbers"));
            }
            if !(1000..=86_400_000).contains(&g.booking_ttl_ms) {
                return Err(format!("{at}: booking_ttl_ms must be 1000 to 86400000"));
            }
            if g.code_len > MAX_CODE {
                return Err(format!("{at}: code_len must be 0 to {MAX_CODE}"));
            }
            let mut own = HashSet::new();
            for n in &g.numbers {
                if n.is_empty() || n.len() > MAX_NUMBER {
                    return Err(format!("{at}: number {n:?} must be 1 to 64 bytes"));
                }
                if !own.insert(n.as_str()) {
                    return Err(format!("{at}: number {n} listed twice"));
                }
                if g.locking == Locking::Pool && !pooled.insert((g.tenant, n.as_str())) {
                    return Err(format!("{at}: number {n} is in another pool of the tenant"));
                }
            }
        }
        Ok(())
    }

    /// The numbers this configuration's pools share with `other`'s (another site's), per
    /// tenant: the seed's advice is pools that do not intersect, so that a number dialled
    /// on one site can only be a booking of that site.
    pub fn shared_with(&self, other: &GmsConfig) -> Vec<(u32, String)> {
        let theirs: HashSet<(u32, &str)> = other
            .groups
            .iter()
            .flat_map(|g| g.numbers.iter().map(move |n| (g.tenant, n.as_str())))
            .collect();
        let mut both: Vec<(u32, String)> = self
            .groups
            .iter()
            .filter(|g| g.locking == Locking::Pool)
            .flat_map(|g| g.numbers.iter().map(move |n| (g.tenant, n.as_str())))
            .filter(|k| theirs.contains(k))
            .map(|(t, n)| (t, n.to_string()))
            .collect();
        both.sort();
        both.dedup();
        both
    }
}
