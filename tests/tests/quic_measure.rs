//! QUIC desktops beyond the fd limit (a check), and measurements (ignored by default; run on a
//! release build):
//!
//! ```text
//! cargo build --release -p deskmux-proxy -p deskmux-core-server
//! DESKMUX_BIN_DIR=$PWD/target/release cargo test --release -p deskmux-tests --test quic_measure \
//!     -- --ignored --nocapture --test-threads 1
//! ```
//!
//! - `quic_desktops_need_no_fds`: the proxy worker's `RLIMIT_NOFILE` is lowered (`prlimit`) to
//!   below the number of QUIC desktops it then serves; TCP desktops past it are refused
//!   (accept fails), QUIC desktops are not.
//! - `echo_throughput_tcp_tls_quic`: pipelined 64-byte echoes through one proxy worker over
//!   plain TCP, TLS and QUIC, with the worker's CPU time per request; then QUIC with 2 workers
//!   (two UDP sockets with `SO_REUSEPORT`, two endpoint drivers).
//! - `idle_quic_desktop_memory`: worker RSS before and after N idle QUIC desktops
//!   (`QUIC_MEM_DESKTOPS`, default 2000) completed their hello; worker fds before and after.

mod proxy_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deskmux_codec::Service;
use deskmux_codec::msg::{ixn, key};
use deskmux_tests::secure_client::{
    ALPN, FrameClient, TestCert, client_config, quic_connect, quic_endpoint, self_signed,
    tls_connect,
};
use proxy_support::*;
use rustls::pki_types::CertificateDer;

fn secure_stack(limits: &str) -> (Stack, TestCert) {
    secure_stack_n(1, limits)
}

fn secure_stack_n(workers: usize, limits: &str) -> (Stack, TestCert) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = self_signed(dir.path(), "proxy").expect("cert");
    let quic = cert.toml("quic") + "max_handshakes = 1024\n";
    let st = stack_in(dir, workers, 2, limits, &quic);
    (st, cert)
}

fn worker_pid(admin: SocketAddr) -> u64 {
    status(admin)["workers"][0]["pid"].as_u64().expect("pid")
}

/// Desktops the proxy shows, QUIC ones included (its workers publish them every 100 ms tick).
fn desktops(admin: SocketAddr) -> u64 {
    status(admin)["desktops"].as_u64().unwrap_or(0)
}

fn fds(pid: u64) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// utime + stime of a process, in clock ticks (100 per second on Linux).
fn cpu_ticks(pid: u64) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_desktops_need_no_fds() {
    let n = 150;
    let (st, cert) = secure_stack("heartbeat_ms = 60000");
    let pid = worker_pid(st.proxy.admin);
    let base = fds(pid);
    // Room for a handful more files only.
    let limit = base + 8;
    let ok = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("prlimit unavailable: skipped");
        return;
    }
    let ep = quic_endpoint(std::slice::from_ref(&cert.der), &[ALPN]).unwrap();
    let mut desks: Vec<(quinn::Connection, FrameClient)> = Vec::new();
    for i in 0..n {
        let (conn, mut c) = quic_connect(&ep, st.proxy.addr).await.expect("quic");
        c.hello_ok(T1, &deskmux_tests::creds::agent(i), TOKEN1)
            .await
            .expect("hello");
        desks.push((conn, c));
    }
    // TCP desktops past the limit cannot be accepted.
    let mut tcp = Vec::new();
    let mut refused = 0;
    for _ in 0..12 {
        match tokio::time::timeout(
            Duration::from_millis(700),
            deskmux_tests::TestClient::connect_hello(st.proxy.addr, T1, "t", TOKEN1),
        )
        .await
        {
            Ok(Ok(c)) => tcp.push(c),
            _ => refused += 1,
        }
    }
    let now_fds = fds(pid);
    println!(
        "fd limit {limit} (base {base}): {n} QUIC desktops + {} TCP desktops served, {refused} TCP refused; worker fds now {now_fds}",
        tcp.len(),
    );
    assert!(n > limit, "more QUIC desktops than the fd limit");
    assert!(refused > 0, "TCP desktops were bounded by the fd limit");
    for (_, c) in desks.iter_mut().take(5) {
        let r = c
            .request(Service::Interaction, ixn::ECHO, |w| {
                w.bin(key::DATA, b"x")?;
                Ok(())
            })
            .await
            .unwrap();
        assert!(r.error().is_none());
    }
}

enum Kind {
    Tcp,
    Tls(Arc<rustls::ClientConfig>),
    /// One client endpoint (UDP socket) per desktop, so that the kernel's SO_REUSEPORT hash
    /// spreads the desktops over the proxy's workers as it would real clients.
    Quic(Vec<CertificateDer<'static>>),
}

async fn connect(
    kind: &Kind,
    addr: SocketAddr,
    i: usize,
) -> (Option<(quinn::Endpoint, quinn::Connection)>, FrameClient) {
    let (conn, mut c) = match kind {
        Kind::Tcp => {
            let s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.set_nodelay(true).unwrap();
            (None, FrameClient::new(s))
        }
        Kind::Tls(cfg) => (
            None,
            FrameClient::new(tls_connect(addr, (**cfg).clone()).await.unwrap()),
        ),
        Kind::Quic(roots) => {
            let ep = quic_endpoint(roots, &[ALPN]).unwrap();
            let (conn, c) = quic_connect(&ep, addr).await.unwrap();
            (Some((ep, conn)), c)
        }
    };
    c.hello_ok(T1, &deskmux_tests::creds::agent(i), TOKEN1)
        .await
        .unwrap();
    (conn, c)
}

async fn echo_load(
    kind: Arc<Kind>,
    addr: SocketAddr,
    conns: usize,
    depth: usize,
    secs: u64,
) -> u64 {
    let mut clients = Vec::new();
    for i in 0..conns {
        clients.push(connect(&kind, addr, i).await);
    }
    let stop = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for (conn, mut c) in clients {
        tasks.push(tokio::spawn(async move {
            let _keep = conn;
            echo_until(&mut c, depth, stop).await
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: run on a release build with --ignored --nocapture"]
async fn echo_throughput_tcp_tls_quic() {
    let secs = 3;
    // Plain TCP and QUIC on one proxy; TLS on a second one (its TCP port speaks TLS only).
    let (st, cert) = secure_stack("");
    let dir = tempfile::tempdir().unwrap();
    let cfg = proxy_config(
        dir.path(),
        &[("[\"interaction\", \"ucs\"]", st.core_addr)],
        1,
        2,
        "",
    );
    let secure = cert.toml("tls") + &cert.toml("quic") + "max_handshakes = 1024\n";
    append_toml(&cfg, &secure);
    let tls_proxy = start_proxy(cfg);
    let roots = std::slice::from_ref(&cert.der);
    let kinds = [
        ("tcp", Kind::Tcp, st.proxy.addr, st.proxy.admin),
        (
            "tls",
            Kind::Tls(Arc::new(client_config(roots, &[ALPN]).unwrap())),
            tls_proxy.addr,
            tls_proxy.admin,
        ),
        (
            "quic",
            Kind::Quic(roots.to_vec()),
            st.proxy.addr,
            st.proxy.admin,
        ),
    ];
    for (name, kind, addr, admin) in kinds {
        let pid = worker_pid(admin);
        let t0 = cpu_ticks(pid);
        let n = echo_load(Arc::new(kind), addr, 16, 32, secs).await;
        let ticks = cpu_ticks(pid) - t0;
        let us_per_req = ticks as f64 * 10_000.0 / n.max(1) as f64;
        println!(
            "echo_throughput {name}: 16 desktops x 32 pipelined, 64 B, {secs} s: {:.0}/s; proxy worker CPU {:.2} s = {us_per_req:.1} us per request",
            n as f64 / secs as f64,
            ticks as f64 / 100.0
        );
    }
    // QUIC over two workers: two UDP sockets (SO_REUSEPORT), two endpoint drivers.
    let (st2, cert2) = secure_stack_n(2, "");
    let roots2 = std::slice::from_ref(&cert2.der);
    let pids: Vec<u64> = (0..2)
        .filter_map(|i| status(st2.proxy.admin)["workers"][i]["pid"].as_u64())
        .collect();
    let t0: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect();
    let n = echo_load(
        Arc::new(Kind::Quic(roots2.to_vec())),
        st2.proxy.addr,
        16,
        32,
        secs,
    )
    .await;
    let ticks: Vec<u64> = pids
        .iter()
        .zip(&t0)
        .map(|(p, t)| cpu_ticks(*p) - t)
        .collect();
    let total: u64 = ticks.iter().sum();
    println!(
        "echo_throughput quic, 2 workers: {:.0}/s; worker CPU {:?} ticks (10 ms) = {:.1} us per request",
        n as f64 / secs as f64,
        ticks,
        total as f64 * 10_000.0 / n.max(1) as f64
    );
}

fn vm_rss_kib(pid: u64) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: run on a release build with --ignored --nocapture"]
async fn idle_quic_desktop_memory() {
    let n: usize = std::env::var("QUIC_MEM_DESKTOPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let (st, cert) = secure_stack("heartbeat_ms = 600000\nhandshake_ms = 600000");
    let pid = worker_pid(st.proxy.admin);
    let ep = quic_endpoint(std::slice::from_ref(&cert.der), &[ALPN]).unwrap();
    let mut warm = Vec::new();
    for i in 0..20 {
        let (conn, mut c) = quic_connect(&ep, st.proxy.addr).await.unwrap();
        c.hello_ok(T1, &deskmux_tests::creds::agent(i), TOKEN1)
            .await
            .unwrap();
        warm.push((conn, c));
    }
    let admin = st.proxy.admin;
    assert!(
        wait_until_async(Duration::from_secs(30), move || desktops(admin) == 20).await,
        "warm-up desktops not shown: {}",
        desktops(admin)
    );
    let (before, fds_before) = (vm_rss_kib(pid), fds(pid));
    let t0 = Instant::now();
    let mut desks = Vec::with_capacity(n);
    for i in 0..n {
        let (conn, mut c) = quic_connect(&ep, st.proxy.addr).await.unwrap();
        c.hello_ok(T1, &deskmux_tests::creds::agent(2048 + i), TOKEN1)
            .await
            .unwrap();
        desks.push((conn, c));
    }
    let took = t0.elapsed();
    let want = (n + 20) as u64;
    assert!(
        wait_until_async(Duration::from_secs(60), move || desktops(admin) == want).await,
        "{want} desktops expected, the worker shows {}",
        desktops(admin)
    );
    let (after, fds_after) = (vm_rss_kib(pid), fds(pid));
    let per = (after.saturating_sub(before) * 1024) as f64 / n as f64;
    println!(
        "idle_quic_desktop_memory: {n} QUIC desktops in {took:?}; worker VmRSS {before} KiB -> {after} KiB = {per:.0} B per idle QUIC desktop; worker fds {fds_before} -> {fds_after}"
    );
}
