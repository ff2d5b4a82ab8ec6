//! The fan-out floor (issue 17): how long one event takes to reach N loopback TCP sockets when
//! nothing but the write and the read is done, on this machine, in this run.
//!
//! A broadcast through the proxy is one shared buffer written to N sockets. This measures that
//! and nothing else, shaped like `loadgen demo -s supervisor` through 2 proxy workers:
//!
//! - `--workers` writer processes (the proxy's worker processes), each one thread holding
//!   N / workers accepted sockets; one process per writer and per reader because the open-file
//!   limit (20,000 here) does not fit both ends of 20,000 connections in one process;
//! - as many reader processes (loadgen's event-loop threads), each one thread with an
//!   edge-triggered poll over its sockets, reading until `EAGAIN`;
//! - events at `--rate` per second on an open-loop schedule, all records laid out back to back
//!   in one shared buffer (a real `QUEUE_EVENT` frame's length each); a writer passes over its
//!   sockets and writes each, in one `write`, every due event it has not had yet (several
//!   pending events go in one write, as the proxy's vectored write does; the clock is read
//!   every 64 sockets, so an event that comes due mid-pass goes to the sockets still ahead).
//!
//! Times count from the event's scheduled time (wall clock, shared by the processes):
//! *write side* = the writer's last `write` of it returned (the slower writer); *read side* =
//! its last byte was read at the last of the N sockets.
//!
//! ```sh
//! cargo run --release -p deskmux-benches --example fanout_floor -- --subscribers 20000 --rates 2,20
//! ```

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use deskmux_codec::msg::{ixn, key};
use deskmux_codec::{Flags, Frame, Head, Kind, Service};
use mio::net::TcpStream as MioStream;
use mio::{Events, Interest, Poll, Token};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Where the event number sits in each record (inside the frame's correlation id, which the
/// floor overwrites: the reader checks it to know the bytes are the records in order).
const SEQ_AT: usize = 16;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A queue event as core-server publishes it (topic `queue:loadgen`, as in the demo).
fn event_frame() -> Vec<u8> {
    let mut h = Head::new(Kind::Event, Service::Interaction, ixn::QUEUE_EVENT);
    h.flags = Flags(Flags::BROADCAST);
    h.tenant = 1;
    h.correlation = 1;
    let f = Frame::build(h, |w| {
        w.str(key::TOPIC, "queue:loadgen")?;
        w.int(key::SEQ, 123_456);
        w.str(key::EVENT, "submitted")?;
        w.int(key::INTERACTION, 1_234_567);
        w.int(key::PUBLISHED_US, now_us() as i64);
        Ok(())
    })
    .expect("frame builds");
    f.freeze().to_vec()
}

fn record(frame: &[u8], seq: u64) -> Vec<u8> {
    let mut r = frame.to_vec();
    r[SEQ_AT..SEQ_AT + 8].copy_from_slice(&seq.to_le_bytes());
    r
}

fn arg<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn num(args: &[String], name: &str, default: u64) -> Res<u64> {
    Ok(match arg(args, name) {
        Some(v) => v.parse()?,
        None => default,
    })
}

/// utime + stime of this process, µs (from `/proc/self/stat`, clock ticks of 10 ms).
fn cpu_us() -> u64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // Fields 14 and 15 of stat; `after` starts at field 3.
    (t(11) + t(12)) * 10_000
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match arg(&args, "--role") {
        Some("writer") => writer(&args),
        Some("reader") => reader(&args),
        _ => orchestrate(&args),
    }
}

// ------------------------------------------------------------------ writer

fn writer(args: &[String]) -> Res<()> {
    let n = num(args, "--n", 10_000)? as usize;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut out = std::io::stdout();
    writeln!(out, "PORT {}", listener.local_addr()?.port())?;
    out.flush()?;
    let mut socks = Vec::with_capacity(n);
    while socks.len() < n {
        let (s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        s.set_nonblocking(true)?;
        socks.push(s);
    }
    writeln!(out, "READY")?;
    out.flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    // START t0_us rate_milli events
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let (t0, rate_milli, events) = (v[0], v[1], v[2]);
    let sched = |k: u64| t0 + k * 1_000_000_000 / rate_milli;
    // Every event's record, back to back: the one shared buffer each socket is written from.
    let frame = event_frame();
    let rec = frame.len();
    let all: Vec<u8> = (0..events).flat_map(|k| record(&frame, k)).collect();
    let cpu0 = cpu_us();
    // Per socket: bytes of `all` written. Per event: sockets it is completely written to, and
    // when the last one was.
    let mut off = vec![0usize; n];
    let mut written = vec![0usize; events as usize];
    let mut done = vec![0u64; events as usize];
    let (mut writes, mut partial, mut passes) = (0u64, 0u64, 0u64);
    let mut complete = 0usize;
    while complete < events as usize {
        let now = now_us();
        let mut due = 0u64;
        while due < events && sched(due) <= now {
            due += 1;
        }
        if due as usize == complete {
            std::thread::sleep(Duration::from_micros(sched(due).saturating_sub(now)));
            continue;
        }
        // One pass over the sockets, like the proxy's write loop over its dirty desktops:
        // each is written everything due that it has not had yet, in one `write`. What comes
        // due during the pass goes to the sockets still ahead in it (the clock is read every
        // 64 sockets), the rest in the next pass.
        passes += 1;
        let mut progress = false;
        for (i, s) in socks.iter_mut().enumerate() {
            if i.is_multiple_of(64) {
                let now = now_us();
                while due < events && sched(due) <= now {
                    due += 1;
                }
            }
            let end = due as usize * rec;
            if off[i] >= end {
                continue;
            }
            writes += 1;
            match s.write(&all[off[i]..end]) {
                Ok(w) => {
                    if off[i] + w < end {
                        partial += 1;
                    }
                    let before = off[i] / rec;
                    off[i] += w;
                    progress |= w > 0;
                    for k in before..off[i] / rec {
                        written[k] += 1;
                        if written[k] == n {
                            done[k] = now_us();
                            complete += 1;
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => partial += 1,
                Err(e) => return Err(e.into()),
            }
        }
        if !progress {
            // Only full sockets are behind: let their readers drain them.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let cpu = cpu_us() - cpu0;
    let times: Vec<String> = done.iter().map(u64::to_string).collect();
    writeln!(
        out,
        "DONE {cpu} {passes} {writes} {partial} {}",
        if times.is_empty() {
            "-".to_string()
        } else {
            times.join(",")
        }
    )?;
    out.flush()?;
    // Keep the sockets open until the readers have everything.
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(())
}

// ------------------------------------------------------------------ reader

fn reader(args: &[String]) -> Res<()> {
    let n = num(args, "--n", 10_000)? as usize;
    let addr: SocketAddr = arg(args, "--addr").ok_or("--addr")?.parse()?;
    let mut poll = Poll::new()?;
    let mut socks = Vec::with_capacity(n);
    for i in 0..n {
        let s = TcpStream::connect(addr)?;
        s.set_nonblocking(true)?;
        let mut s = MioStream::from_std(s);
        poll.registry()
            .register(&mut s, Token(i), Interest::READABLE)?;
        socks.push(s);
    }
    let mut out = std::io::stdout();
    writeln!(out, "READY")?;
    out.flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let events: u64 = line.split_whitespace().nth(1).ok_or("EXPECT")?.parse()?;
    let rec = event_frame().len() as u64;
    let want = rec * events;
    let mut got = vec![0u64; n];
    let mut last = vec![0u64; events as usize];
    let mut count = vec![0u64; events as usize];
    let mut complete = 0usize;
    let mut bad = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let mut evs = Events::with_capacity(1024);
    let cpu0 = cpu_us();
    let deadline = Instant::now() + Duration::from_secs(120 + events / 2);
    while complete < n && Instant::now() < deadline {
        poll.poll(&mut evs, Some(Duration::from_millis(100)))?;
        for ev in &evs {
            let i = ev.token().0;
            loop {
                match socks[i].read(&mut buf) {
                    Ok(0) => break,
                    Ok(r) => {
                        let t = now_us();
                        let before = got[i];
                        let after = before + r as u64;
                        // Records whose last byte came in this read.
                        for k in before / rec..after / rec {
                            let start = k * rec;
                            if start >= before {
                                let at = (start - before) as usize + SEQ_AT;
                                let seq = u64::from_le_bytes(buf[at..at + 8].try_into()?);
                                bad += u64::from(seq != k);
                            }
                            if let Some(l) = last.get_mut(k as usize) {
                                *l = (*l).max(t);
                                count[k as usize] += 1;
                            }
                        }
                        got[i] = after;
                        if before < want && after >= want {
                            complete += 1;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    let cpu = cpu_us() - cpu0;
    let join = |v: &[u64]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
        }
    };
    writeln!(
        out,
        "DONE {cpu} {complete} {bad} {} {}",
        join(&last),
        join(&count)
    )?;
    out.flush()?;
    Ok(())
}

// ------------------------------------------------------------------ orchestrator

struct Proc {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Proc {
    fn spawn(args: &[&str]) -> Res<Proc> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take().ok_or("stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("stdout")?);
        Ok(Proc {
            child,
            stdin,
            stdout,
        })
    }

    fn line(&mut self) -> Res<String> {
        let mut l = String::new();
        if self.stdout.read_line(&mut l)? == 0 {
            return Err("child ended early".into());
        }
        Ok(l.trim_end().to_string())
    }

    fn send(&mut self, l: &str) -> Res<()> {
        writeln!(self.stdin, "{l}")?;
        self.stdin.flush()?;
        Ok(())
    }
}

fn list(s: &str) -> Res<Vec<u64>> {
    if s == "-" {
        return Ok(Vec::new());
    }
    Ok(s.split(',').map(str::parse).collect::<Result<_, _>>()?)
}

/// Nearest-rank percentile of `v` (sorted), in ms.
fn pct(v: &[u64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i] as f64 / 1000.0
}

fn summary(name: &str, mut v: Vec<u64>) -> String {
    v.sort_unstable();
    format!(
        "{name:<11} p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms",
        pct(&v, 50.0),
        pct(&v, 99.0),
        pct(&v, 100.0)
    )
}

fn orchestrate(args: &[String]) -> Res<()> {
    let subscribers = num(args, "--subscribers", 20_000)?;
    let workers = num(args, "--workers", 2)?.max(1);
    let duration = num(args, "--duration", 10)?;
    let rates: Vec<f64> = arg(args, "--rates")
        .unwrap_or("2,20")
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let frame = event_frame().len();
    println!(
        "fanout floor: {subscribers} sockets over {workers} writer + {workers} reader processes, {frame}-byte event frames, {duration} s per rate"
    );
    for rate in rates {
        let per = subscribers / workers;
        let mut writers = Vec::new();
        let mut readers = Vec::new();
        for w in 0..workers {
            let n = if w + 1 == workers {
                subscribers - per * (workers - 1)
            } else {
                per
            };
            let n = n.to_string();
            let mut wp = Proc::spawn(&["--role", "writer", "--n", &n])?;
            let port = wp.line()?;
            let port = port.strip_prefix("PORT ").ok_or("PORT")?.to_string();
            let addr = format!("127.0.0.1:{port}");
            readers.push(Proc::spawn(&[
                "--role", "reader", "--n", &n, "--addr", &addr,
            ])?);
            writers.push(wp);
        }
        for p in writers.iter_mut().chain(readers.iter_mut()) {
            let l = p.line()?;
            if l != "READY" {
                return Err(format!("expected READY, got {l}").into());
            }
        }
        let events = ((rate * duration as f64).round() as u64).max(1);
        let t0 = now_us() + 200_000;
        let rate_milli = (rate * 1000.0).round() as u64;
        for r in &mut readers {
            r.send(&format!("EXPECT {events}"))?;
        }
        for w in &mut writers {
            w.send(&format!("START {t0} {rate_milli} {events}"))?;
        }
        let sched = |k: u64| t0 + k * 1_000_000_000 / rate_milli;
        let mut write_done = vec![0u64; events as usize];
        let (mut wcpu, mut passes, mut writes, mut partial) = (0u64, 0u64, 0u64, 0u64);
        for w in &mut writers {
            let l = w.line()?;
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.first() != Some(&"DONE") || f.len() != 6 {
                return Err(format!("writer: {l}").into());
            }
            wcpu += f[1].parse::<u64>()?;
            passes = passes.max(f[2].parse()?);
            writes += f[3].parse::<u64>()?;
            partial += f[4].parse::<u64>()?;
            for (d, t) in write_done.iter_mut().zip(list(f[5])?) {
                *d = (*d).max(t);
            }
        }
        let mut last = vec![0u64; events as usize];
        let mut count = vec![0u64; events as usize];
        let (mut rcpu, mut complete, mut bad) = (0u64, 0u64, 0u64);
        for r in &mut readers {
            let l = r.line()?;
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.first() != Some(&"DONE") || f.len() != 6 {
                return Err(format!("reader: {l}").into());
            }
            rcpu += f[1].parse::<u64>()?;
            complete += f[2].parse::<u64>()?;
            bad += f[3].parse::<u64>()?;
            for (d, t) in last.iter_mut().zip(list(f[4])?) {
                *d = (*d).max(t);
            }
            for (c, x) in count.iter_mut().zip(list(f[5])?) {
                *c += x;
            }
        }
        for p in writers.iter_mut().chain(readers.iter_mut()) {
            let _ = p.send("END");
        }
        for mut p in writers.into_iter().chain(readers) {
            p.child.wait()?;
        }
        let lat = |v: &[u64]| -> Vec<u64> {
            v.iter()
                .enumerate()
                .map(|(k, t)| t.saturating_sub(sched(k as u64)))
                .collect()
        };
        let short = count.iter().filter(|c| **c != subscribers).count();
        let deliveries = events * subscribers;
        println!(
            "rate {rate}/s: {events} events × {subscribers} = {deliveries} deliveries; sockets complete {complete}/{subscribers}, events not at every socket {short}, bad records {bad}; writes {writes} ({:.2} per socket per event), passes {passes} (the busier writer), partial or refused writes {partial}",
            writes as f64 / deliveries as f64
        );
        println!("  {}", summary("write side", lat(&write_done)));
        println!("  {}", summary("read side", lat(&last)));
        println!(
            "  cpu per delivery: writers {:.2} µs, readers {:.2} µs (utime+stime over the run)",
            wcpu as f64 / deliveries as f64,
            rcpu as f64 / deliveries as f64
        );
    }
    Ok(())
}
