//! A TCP proxy that misbehaves like a bad network or an overloaded object store: put between
//! the server and its bucket, it passes connections through, except every n-th, which meets
//! the next of four faults in turn:
//! - answered `503 Service Unavailable`, nothing forwarded;
//! - cut after part of the request went through (an upload cut mid-way);
//! - the whole request forwarded and the answer dropped (the write may have happened: the
//!   client cannot tell);
//! - delayed before it goes through (a slow store; past the client's timeout, a timeout).
//!
//! Every answer it passes on says `Connection: close`, so each request of the client comes on
//! a new connection and meets its own fate. Faults can be switched off and on while it runs, and an outage
//! (every request answered 503) begun and ended.
//! Dropping it stops it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;

/// What happened to connections so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    pub passed: u64,
    pub rejected: u64,
    pub cut: u64,
    pub dropped_answers: u64,
    pub delayed: u64,
}

pub struct FaultyProxy {
    port: u16,
    enabled: Arc<AtomicBool>,
    outage: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    counts: Arc<Mutex<FaultCounts>>,
}

#[derive(Clone, Copy)]
enum Fate {
    Pass,
    Reject,
    Cut,
    DropAnswer,
    Delay,
}

impl FaultyProxy {
    /// Forwards to `127.0.0.1:target`; with faults on, every `every`-th connection meets a
    /// fault, the four kinds in turn, `delay` being how long a delayed one waits.
    pub fn start(target: u16, every: u64, delay: Duration) -> Result<FaultyProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let enabled = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Mutex::new(FaultCounts::default()));
        let outage = Arc::new(AtomicBool::new(false));
        let (e, o, s, c) = (
            enabled.clone(),
            outage.clone(),
            stop.clone(),
            counts.clone(),
        );
        std::thread::spawn(move || {
            let mut faulty = 0u64;
            while !s.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                let fate = if o.load(Ordering::SeqCst) {
                    Fate::Reject
                } else if e.load(Ordering::SeqCst) {
                    faulty += 1;
                    match (faulty % every.max(1), (faulty / every.max(1)) % 4) {
                        (0, 0) => Fate::Reject,
                        (0, 1) => Fate::Cut,
                        (0, 2) => Fate::DropAnswer,
                        (0, _) => Fate::Delay,
                        _ => Fate::Pass,
                    }
                } else {
                    Fate::Pass
                };
                {
                    let mut c = c.lock().unwrap_or_else(|p| p.into_inner());
                    match fate {
                        Fate::Pass => c.passed += 1,
                        Fate::Reject => c.rejected += 1,
                        Fate::Cut => c.cut += 1,
                        Fate::DropAnswer => c.dropped_answers += 1,
                        Fate::Delay => c.delayed += 1,
                    }
                }
                let s = s.clone();
                std::thread::spawn(move || handle(client, target, fate, delay, &s));
            }
        });
        Ok(FaultyProxy {
            port,
            enabled,
            outage,
            stop,
            counts,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set_faults(&self, on: bool) {
        self.enabled.store(on, Ordering::SeqCst);
    }

    /// An outage: every request answered 503 while on.
    pub fn set_outage(&self, on: bool) {
        self.outage.store(on, Ordering::SeqCst);
    }

    pub fn counts(&self) -> FaultCounts {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn handle(mut client: TcpStream, target: u16, fate: Fate, delay: Duration, stop: &AtomicBool) {
    let _ = client.set_nonblocking(false);
    match fate {
        Fate::Reject => {
            let _ = client.set_read_timeout(Some(Duration::from_secs(5)));
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match client.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let body = "<Error><Code>ServiceUnavailable</Code></Error>";
            let _ = client.write_all(
                format!(
                    "HTTP/1.1 503 Service Unavailable\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
            let _ = client.shutdown(std::net::Shutdown::Both);
        }
        Fate::Delay => {
            std::thread::sleep(delay);
            pass(client, target, None, false, stop);
        }
        Fate::Cut => pass(client, target, Some(2048), false, stop),
        Fate::DropAnswer => pass(client, target, None, true, stop),
        Fate::Pass => pass(client, target, None, false, stop),
    }
}

/// Pumps both ways. `cut_after`: close once that many request bytes went up. `drop_answer`:
/// close as soon as the answer starts, without passing it on.
fn pass(
    client: TcpStream,
    target: u16,
    cut_after: Option<usize>,
    drop_answer: bool,
    stop: &AtomicBool,
) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
        return;
    };
    let (Ok(mut c_read), Ok(mut s_write)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let closed = Arc::new(AtomicBool::new(false));
    let up_closed = closed.clone();
    let up = std::thread::spawn(move || {
        let _ = c_read.set_read_timeout(Some(Duration::from_millis(50)));
        let mut buf = vec![0u8; 64 * 1024];
        let mut sent = 0usize;
        while !up_closed.load(Ordering::SeqCst) {
            match c_read.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let n = match cut_after {
                        Some(limit) if sent + n >= limit => {
                            let _ = s_write.write_all(&buf[..limit - sent]);
                            break;
                        }
                        _ => n,
                    };
                    if s_write.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    sent += n;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
        up_closed.store(true, Ordering::SeqCst);
        let _ = s_write.shutdown(std::net::Shutdown::Both);
        let _ = c_read.shutdown(std::net::Shutdown::Both);
    });
    let (mut s_read, mut c_write) = (server, client);
    let _ = s_read.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = vec![0u8; 64 * 1024];
    // The answer's head, until it is complete and passed on with `Connection: close`.
    let mut head = Some(Vec::new());
    while !closed.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst) {
        match s_read.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if drop_answer {
                    break;
                }
                let out = match head.as_mut() {
                    None => buf[..n].to_vec(),
                    Some(h) => {
                        h.extend_from_slice(&buf[..n]);
                        match close_after_answer(h) {
                            Some(out) => {
                                head = None;
                                out
                            }
                            None => continue,
                        }
                    }
                };
                if c_write.write_all(&out).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    closed.store(true, Ordering::SeqCst);
    let _ = c_write.shutdown(std::net::Shutdown::Both);
    let _ = s_read.shutdown(std::net::Shutdown::Both);
    let _ = up.join();
}

/// The bytes of an answer whose head is complete in `bytes`, with `Connection: close` in its
/// head, so that the client opens a new connection (and meets a new fate) for each request
/// instead of reusing this one; `None` while the head is incomplete.
fn close_after_answer(bytes: &[u8]) -> Option<Vec<u8>> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&bytes[..end]);
    let mut out = String::new();
    for line in head.split("\r\n") {
        if !line.to_ascii_lowercase().starts_with("connection:") {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(&bytes[end + 4..]);
    Some(out)
}
