//! The heap the Interaction Server engine holds per session, attached and detached
//! (PROTOCOL.md §4.6), counted by a global allocator rather than read off RSS (which the
//! allocator's retained pages make noise of: RSS after N connections left differed by 30 MB
//! between two identical runs at 15,000 desktops).
//!
//! N agents open a session, log in and get ready (their answers read, as a connection would);
//! then every connection goes without a goodbye (detached, kept for resume). The live heap is
//! compared with the engine's before any session, at each step.
//!
//! ```sh
//! cargo run --release -p deskmux-core-server --example resume_memory -- 20000
//! ```

// A `#[global_allocator]` must implement the `unsafe` trait `GlobalAlloc`; the workspace denies
// unsafe code, and this measuring example is a documented exception (as `codec/tests/alloc.rs`
// is). The impl only counts and forwards every call unchanged to the system allocator.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use deskmux_codec::msg::ixn;
use deskmux_codec::{Frame, Head, Kind, Service};
use deskmux_core_server::db::Db;
use deskmux_core_server::ixn::{Engine, Input, ResumeSettings, Settings};
use deskmux_core_server::storage::sqlite::SqliteStore;
use deskmux_core_server::wire::{Outbox, Peer, QueueLimits};
use tokio_util::sync::CancellationToken;

struct Counting;

/// Bytes allocated and not yet freed, all threads.
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every method forwards its arguments unchanged to `System`, which upholds the
// `GlobalAlloc` contract; the counter never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

fn request(ty: u16) -> Frame {
    let mut h = Head::new(Kind::Request, Service::Interaction, ty);
    h.tenant = 1;
    Frame::build(h, |_| Ok(())).expect("frame")
}

fn main() -> anyhow::Result<()> {
    let n: u64 = std::env::args().nth(1).map_or(Ok(20_000), |a| a.parse())?;
    let dir = tempfile::tempdir()?;
    let db = Db::start(Box::new(SqliteStore::open(&dir.path().join("m.db"))?), 64)?;
    let (tx, _rx) = deskmux_core_server::queue::engine_channel(1 << 20, usize::MAX);
    let set = Settings {
        invite_timeout: Duration::from_secs(30),
        with_ucs: false,
        resume: ResumeSettings::default(),
    };
    let mut e = Engine::new(set, db, tx, Vec::new(), 0);
    let t = Instant::now();
    let far = t + Duration::from_secs(3600);
    let limits = QueueLimits {
        desktop_frames: 8192,
        desktop_bytes: 8 << 20,
        link_frames: 8192,
        link_bytes: 8 << 20,
    };
    let base = live();
    let mut conns = Vec::with_capacity(n as usize);
    for k in 1..=n {
        let (out, rx, _st) = Outbox::new(limits, CancellationToken::new());
        let peer = Peer {
            out,
            inflight: Arc::new(AtomicU32::new(2)),
            tap: None,
        };
        e.handle(
            t,
            Input::Open {
                key: k,
                tenant: 1,
                agent: format!("agent-{k}"),
                wire: k,
                peer: peer.clone(),
                link: None,
            },
        );
        e.handle(t, Input::Request(k, request(ixn::AGENT_LOGIN), far));
        e.handle(t, Input::Request(k, request(ixn::AGENT_READY), far));
        conns.push((peer, rx));
    }
    e.after_batch();
    // The connections read their answers.
    for (_, rx) in &mut conns {
        while rx.try_recv().is_ok() {}
    }
    let conn_side: isize = live();
    // What the connections themselves hold goes with them; measured by dropping them after
    // detaching (the engine then holds only what it keeps for resume).
    for k in 1..=n {
        e.handle(t, Input::Detach(k));
    }
    e.after_batch();
    drop(conns);
    let detached = live();
    let per = |x: isize| (x - base) as f64 / n as f64;
    println!("sessions {n}, agents logged in and ready");
    println!(
        "attached, with each connection's queue: {:.0} bytes a session",
        per(conn_side)
    );
    println!(
        "detached (engine only):              {:.0} bytes a session",
        per(detached)
    );
    Ok(())
}
