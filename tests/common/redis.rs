//! A real `redis-server` child process on a free 127.0.0.1 port (no persistence, data dir in a
//! temp dir), killed on drop, plus a minimal RESP client over a plain `TcpStream` (the tests
//! have no redis crate). Install the binary with `scripts/install-deps.sh`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::free_port;

/// The binary: `$REDIS_SERVER` if set, else `redis-server` from `PATH`.
fn redis_binary() -> String {
    std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_string())
}

/// A running `redis-server`; SIGKILLed when dropped.
pub struct RedisServer {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
    /// Restarts so far (each gets its own log file).
    generation: u32,
}

impl RedisServer {
    /// Start on a free port and wait until it answers `PING`.
    pub fn start() -> RedisServer {
        // free_port() can race with another test taking the port: try a few.
        let mut last = String::new();
        for _ in 0..5 {
            let mut srv = RedisServer {
                port: free_port(),
                dir: TempDir::new().expect("temp dir"),
                child: None,
                generation: 0,
            };
            match srv.spawn_and_wait() {
                Ok(()) => return srv,
                Err(e) => last = e,
            }
        }
        panic!("redis-server did not start: {last}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT`
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The server's log (of the current process).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir
            .path()
            .join(format!("redis-{}.log", self.generation))
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = std::fs::File::create(self.log_path()).unwrap();
        let child = Command::new(redis_binary())
            .args(["--port", &self.port.to_string()])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--bind", "127.0.0.1"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::NotFound => panic!(
                "`{}` not found: the Redis tests need a real redis-server; run \
                 scripts/install-deps.sh (it installs the Debian package redis-server)",
                redis_binary()
            ),
            Err(e) => panic!("spawn {}: {e}", redis_binary()),
        };
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Err(format!(
                    "redis-server on port {} exited ({status}):\n{}",
                    self.port,
                    self.log()
                ));
            }
            if self.ping() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!(
                    "redis-server on port {} not answering PING within 10s:\n{}",
                    self.port,
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGKILL and reap the process: once this returns the port is closed (connections to it
    /// are refused) and all data is gone.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Stop (if running) and start a new, empty server on the same port; waits for `PING`.
    pub fn restart(&mut self) {
        self.kill();
        self.generation += 1;
        // The port was ours a moment ago; redis sets SO_REUSEADDR, but retry in case some
        // other process grabbed it in between or the bind raced.
        let mut last = String::new();
        for _ in 0..20 {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server did not restart on port {}: {last}", self.port);
    }

    /// SIGSTOP: the process stays, its port accepts connections (kernel backlog) but nothing
    /// is answered: a hanging Redis. `thaw()` resumes it.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after `freeze()`.
    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: i32) {
        let c = self.child.as_ref().expect("redis-server is not running");
        // SAFETY: plain kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(c.id() as i32, sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", c.id());
    }

    /// A raw `PING\r\n` answered `+PONG` within 1 s.
    pub fn ping(&self) -> bool {
        let Ok(mut s) = connect(self.port, Duration::from_secs(1)) else {
            return false;
        };
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// Run one command (e.g. `&["GET", "k"]`, `&["FLUSHALL"]`, `&["KEYS", "*"]`) on a new
    /// connection and return the reply. Panics on I/O errors (not on Redis error replies).
    pub fn cmd(&self, args: &[&str]) -> Resp {
        let mut s = connect(self.port, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to redis on port {}: {e}", self.port));
        let mut req = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            req.extend_from_slice(a.as_bytes());
            req.extend_from_slice(b"\r\n");
        }
        s.write_all(&req).expect("write to redis");
        let mut r = BufReader::new(&s);
        let reply = read_resp(&mut r).expect("read redis reply");
        let _ = s.shutdown(Shutdown::Both);
        reply
    }

    /// All keys matching `pattern` (`KEYS`), sorted.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> = match self.cmd(&["KEYS", pattern]) {
            Resp::Array(Some(items)) => items
                .into_iter()
                .filter_map(|i| match i {
                    Resp::Bulk(Some(k)) => Some(k),
                    _ => None,
                })
                .collect(),
            other => panic!("KEYS {pattern}: unexpected reply {other:?}"),
        };
        keys.sort();
        keys
    }

    /// `FLUSHALL`.
    pub fn flushall(&self) {
        assert_eq!(self.cmd(&["FLUSHALL"]), Resp::Simple("OK".into()));
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A frozen process dies of SIGKILL too; SIGCONT just in case.
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
        }
        self.kill();
    }
}

fn connect(port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    Ok(s)
}

/// A RESP2 reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    /// `None`: the null bulk string.
    Bulk(Option<String>),
    /// `None`: the null array.
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// The integer of an `Int`, or of a `Bulk` holding a number (e.g. `GET` of a counter).
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Resp::Int(i) => Some(*i),
            Resp::Bulk(Some(s)) | Resp::Simple(s) => s.parse().ok(),
            _ => None,
        }
    }
}

fn read_resp(r: &mut impl BufRead) -> io::Result<Resp> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let line = line.trim_end_matches("\r\n");
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad RESP line {line:?}"),
        )
    };
    let (kind, rest) = line.split_at_checked(1).ok_or_else(bad)?;
    Ok(match kind {
        "+" => Resp::Simple(rest.to_string()),
        "-" => Resp::Error(rest.to_string()),
        ":" => Resp::Int(rest.parse().map_err(|_| bad())?),
        "$" => {
            let n: i64 = rest.parse().map_err(|_| bad())?;
            if n < 0 {
                Resp::Bulk(None)
            } else {
                let mut buf = vec![0u8; n as usize + 2];
                r.read_exact(&mut buf)?;
                buf.truncate(n as usize);
                Resp::Bulk(Some(String::from_utf8_lossy(&buf).into_owned()))
            }
        }
        "*" => {
            let n: i64 = rest.parse().map_err(|_| bad())?;
            if n < 0 {
                Resp::Array(None)
            } else {
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(read_resp(r)?);
                }
                Resp::Array(Some(items))
            }
        }
        _ => return Err(bad()),
    })
}
