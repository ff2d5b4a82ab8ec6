//! Measurements, not pass/fail checks (ignored by default; run them on a release build):
//!
//! ```text
//! cargo build --release -p deskmux-proxy -p deskmux-core-server
//! DESKMUX_BIN_DIR=target/release cargo test --release -p deskmux-tests --test proxy_measure \
//!     -- --ignored --nocapture --test-threads 1
//! ```
//!
//! - `idle_desktop_memory`: RSS of one proxy worker before and after N idle desktops
//!   (`PROXY_MEM_DESKTOPS`, default 8000) have completed their hello.
//! - `echo_throughput`: pipelined 64-byte echoes, direct vs through the proxy.

mod proxy_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use deskmux_codec::msg::{DesktopHello, control};
use deskmux_codec::{Frame, FrameDecoder, Head, Kind, Service};
use proxy_support::*;

fn vm_rss_kib(pid: u64) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Desktops the proxy shows (its workers publish them every 100 ms tick).
fn desktops(admin: SocketAddr) -> u64 {
    status(admin)["desktops"].as_u64().unwrap_or(0)
}

fn hello_bytes(tenant: u32, agent: &str) -> Vec<u8> {
    let mut h = Head::new(Kind::Request, Service::Control, control::HELLO);
    h.tenant = tenant;
    h.correlation = 1;
    let hello = DesktopHello {
        version: 1,
        agent,
        token: TOKEN1,
        reconnect: None,
        services: 0b110,
    };
    Frame::build(h, |w| hello.write(w))
        .unwrap()
        .as_bytes()
        .to_vec()
}

fn read_frame(s: &mut TcpStream, buf: &mut BytesMut) -> Frame {
    let mut dec = FrameDecoder::default();
    let mut tmp = [0u8; 4096];
    loop {
        if let Some(f) = dec.decode(buf).unwrap() {
            return f;
        }
        let n = s.read(&mut tmp).unwrap();
        assert!(n > 0, "closed");
        buf.extend_from_slice(&tmp[..n]);
    }
}

#[test]
#[ignore = "measurement: run on a release build with --ignored --nocapture"]
fn idle_desktop_memory() {
    let n: usize = std::env::var("PROXY_MEM_DESKTOPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8000);
    let st = stack(
        1,
        2,
        // All from one source address: past the default per-source cap of 4,096.
        "heartbeat_ms = 600000\nhandshake_ms = 600000\nmax_desktops = 20000\nmax_desktops_per_source = 20000\n",
    );
    let pid = status(st.proxy.admin)["workers"][0]["pid"]
        .as_u64()
        .unwrap();
    // Warm up: a few desktops so that one-off allocations (arena, link buffers) are counted
    // in the baseline, then let them go.
    let mut warm = Vec::new();
    for i in 0..50 {
        let mut s = TcpStream::connect(st.proxy.addr).unwrap();
        s.write_all(&hello_bytes(T1, &deskmux_tests::creds::agent(i)))
            .unwrap();
        let mut b = BytesMut::new();
        assert!(read_frame(&mut s, &mut b).error().is_none());
        warm.push(s);
    }
    let admin = st.proxy.admin;
    assert!(
        wait_until(Duration::from_secs(30), || desktops(admin) == 50),
        "warm-up desktops not shown: {}",
        desktops(admin)
    );
    let before = vm_rss_kib(pid);
    let t0 = Instant::now();
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = TcpStream::connect(st.proxy.addr).unwrap();
        s.write_all(&hello_bytes(T1, &deskmux_tests::creds::agent(i)))
            .unwrap();
        let mut b = BytesMut::new();
        let f = read_frame(&mut s, &mut b);
        assert!(f.error().is_none(), "{:?}", f.error());
        conns.push(s);
    }
    let took = t0.elapsed();
    let all = wait_until(Duration::from_secs(60), || {
        desktops(admin) == (n + 50) as u64
    });
    let desks = desktops(admin);
    assert!(
        all,
        "{} desktops expected, the worker shows {desks}",
        n + 50
    );
    let after = vm_rss_kib(pid);
    let per = (after.saturating_sub(before) * 1024) as f64 / n as f64;
    println!(
        "idle_desktop_memory: {n} desktops (worker reports {desks}) in {took:?}; worker VmRSS {before} KiB -> {after} KiB; {per:.0} B per idle desktop (user-space; kernel socket memory not included)"
    );
    let core_pid = st.core.pid().unwrap_or(0);
    println!(
        "core-server VmRSS {} KiB (for reference)",
        vm_rss_kib(u64::from(core_pid))
    );
    drop(conns);
}

async fn echo_load(addr: SocketAddr, conns: usize, depth: usize, secs: u64) -> f64 {
    let stop = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        tasks.push(tokio::spawn(async move {
            let mut c = desktop(addr, T1).await;
            echo_until(&mut c, depth, stop).await
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / secs as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: run on a release build with --ignored --nocapture"]
async fn echo_throughput() {
    let st = stack(1, 2, "");
    let direct = echo_load(st.core_addr, 16, 32, 3).await;
    let via = echo_load(st.proxy.addr, 16, 32, 3).await;
    println!(
        "echo_throughput (16 desktops x 32 pipelined, 64 B, 3 s, 2 shared cores): direct {direct:.0}/s, via proxy (1 worker, 2 links) {via:.0}/s"
    );
}
