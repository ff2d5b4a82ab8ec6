//! Deterministic simulation of the proxy core (the shape of TigerBeetle's VOPR and
//! FoundationDB's simulation): one [`Core`](deskmux_proxy::core::Core), simulated desktops of
//! three tenants and simulated servers behind four links, one fake clock, and a seeded random
//! source that chooses every action, interleaving and fault:
//!
//! - desktops that pipeline behind their hello, flood past their in-flight cap, never read,
//!   send malformed or oversized frames, stamp another tenant, trickle a frame and stop,
//!   half-close, vanish mid-request, subscribe and leave;
//! - servers that answer out of order, late, twice, for unknown ids, with another tenant,
//!   far over `max_frame`; that send events to the wrong session or tenant; that stall mid
//!   frame, send garbage, hang, close sessions, or lose the link mid-write; links refused;
//! - reloads, operator disables, drains, and clock jumps.
//!
//! After every step: the core's own bookkeeping adds up (`Core::audit`: budget, in-flight
//! counts, subscribers), every frame a desktop receives is its own (an answer to a request it
//! sent and that was not answered yet; an event of its tenant, for a subscription it holds or
//! meant for its session; never over `max_frame`). At the end, a quiet phase: every request of
//! every live desktop has had exactly one answer.
//!
//! Replay a failing seed:
//!
//! ```sh
//! DESKMUX_SIM_SEED=1234 cargo test -p deskmux-proxy --test sim -- --nocapture
//! ```
//!
//! Run longer: `DESKMUX_SIM_SECONDS=600` (seeds run for that long; default 60),
//! `DESKMUX_SIM_STEPS` (steps per seed; default 5000). The long run of `benches/RESULTS.md`:
//! `DESKMUX_SIM_SECONDS=3600 cargo test --release -p deskmux-proxy --test sim -- --nocapture`.

mod actions;
mod desktop;
mod server;
mod world;

use std::time::{Duration, Instant};

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Run one seed; panic with the replay command on failure.
fn run_seed(seed: u64, steps: u64, total: &mut world::Stats) {
    let mut w = world::World::new(seed);
    let res = w.run(steps);
    total.add(&w.stats);
    if let Err(e) = res {
        panic!(
            "simulation failed, seed {seed}: {e}\nreplay: DESKMUX_SIM_SEED={seed} cargo test -p deskmux-proxy --test sim -- --nocapture"
        );
    }
}

#[test]
fn simulation() {
    let steps = env("DESKMUX_SIM_STEPS").unwrap_or(5000);
    let mut total = world::Stats::default();
    if let Some(seed) = env("DESKMUX_SIM_SEED") {
        run_seed(seed, steps, &mut total);
        eprintln!("seed {seed}: {total:?}");
        return;
    }
    // As many seeds as fit in the time budget (each seed is deterministic; the budget only
    // decides how many run). The first seed of a run is printed so any run can be repeated.
    let budget = Duration::from_secs(env("DESKMUX_SIM_SECONDS").unwrap_or(60));
    let first = env("DESKMUX_SIM_FIRST_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    eprintln!("simulation: seeds from {first} (DESKMUX_SIM_FIRST_SEED={first} repeats this run)");
    let start = Instant::now();
    let mut seeds = 0u64;
    while start.elapsed() < budget || seeds == 0 {
        run_seed(first + seeds, steps, &mut total);
        seeds += 1;
    }
    eprintln!(
        "simulation: {seeds} seeds, {} steps in {:.1} s: {total:?}",
        total.steps,
        start.elapsed().as_secs_f64()
    );
    assert!(total.steps >= steps, "at least one whole seed ran");
    assert!(
        total.answers > 0 && total.desktops > 0,
        "the simulation did something: {total:?}"
    );
}
