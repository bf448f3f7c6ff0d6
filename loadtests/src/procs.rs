//! The processes a demo or benchmark runs: augur, the peers (nginx,
//! haproxy), and this program's own servers. Each is stopped when its
//! handle drops; each start waits until the process accepts connections.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// `sysconf(_SC_CLK_TCK)`: 100 on every Linux this runs on.
const CLOCK_TICKS: f64 = 100.0;

/// A running child process, killed on drop.
pub struct Proc {
    pub name: String,
    child: Child,
}

impl Proc {
    /// Resident memory of the process, from /proc (Linux), in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// CPU time the process has used (user + system), from /proc (Linux).
    pub fn cpu_seconds(&self) -> Option<f64> {
        ProcStat::read(self.child.id()).map(|s| s.cpu_seconds)
    }

    /// CPU time the process and every process below it (nginx's workers)
    /// have used, from /proc (Linux).
    pub fn tree_cpu_seconds(&self) -> Option<f64> {
        let root = self.child.id();
        let mut stats = Vec::new();
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(stat) = ProcStat::read(pid) {
                stats.push(stat);
            }
        }
        let mut tree = vec![root];
        let mut total = 0.0;
        let mut i = 0;
        while let Some(&pid) = tree.get(i) {
            i += 1;
            for s in &stats {
                if s.pid == pid {
                    total += on_cpu_seconds(pid).unwrap_or(s.cpu_seconds);
                }
                if s.parent == pid && !tree.contains(&s.pid) {
                    tree.push(s.pid);
                }
            }
        }
        (i > 0).then_some(total)
    }

    /// Whether the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// Time the threads of `pid` have run, in nanoseconds from
/// `/proc/PID/task/*/schedstat`: finer than `stat`'s clock ticks, which
/// are 10 ms.
fn on_cpu_seconds(pid: u32) -> Option<f64> {
    let mut ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let text = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
        ns += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(ns as f64 / 1e9)
}

/// What augur's benchmarks read of `/proc/PID/stat`.
struct ProcStat {
    pid: u32,
    parent: u32,
    cpu_seconds: f64,
}

impl ProcStat {
    fn read(pid: u32) -> Option<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may hold spaces), from the
        // third: the parent is the 4th, utime and stime the 14th and 15th
        // (in clock ticks).
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 =
            fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        Some(Self {
            pid,
            parent: fields.get(1)?.parse().ok()?,
            cpu_seconds: ticks / CLOCK_TICKS,
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-s", "TERM", &self.child.id().to_string()])
            .status();
        // augur stops the containers it runs before it exits.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port on 127.0.0.1 that was free a moment ago and that this process
/// has not handed out before (binding port 0 twice in a row can return the
/// same port once the first listener is gone).
pub fn free_port() -> anyhow::Result<u16> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut given = GIVEN
            .lock()
            .map_err(|_| anyhow::anyhow!("port registry poisoned"))?;
        if !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
    bail!("no free port found")
}

pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A scratch directory for configuration files and logs.
pub fn scratch(name: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("augur-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

/// Runs `program` pinned to `cpus` (a `taskset` list such as `"1"`) when
/// given and `taskset` exists.
pub fn command(program: &Path, cpus: Option<&str>) -> Command {
    match cpus {
        Some(list) if which("taskset") => {
            let mut c = Command::new("taskset");
            c.args(["-c", list]).arg(program);
            c
        }
        _ => Command::new(program),
    }
}

pub fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// Starts `cmd`, then waits until every address in `ready` accepts a
/// connection (at most 15 s).
pub fn start(
    name: &str,
    mut cmd: Command,
    log: &Path,
    ready: &[SocketAddr],
) -> anyhow::Result<Proc> {
    let log_file =
        std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("start {name}"))?;
    let mut proc = Proc {
        name: name.to_string(),
        child,
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    for addr in ready {
        while TcpStream::connect_timeout(addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = proc.child.try_wait() {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                bail!("{name} exited ({status}) before listening on {addr}:\n{text}");
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} did not listen on {addr} within 15 s (log: {})",
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(proc)
}

/// The `augur` binary: `explicit` if given, else the one built beside this
/// program (same target directory).
pub fn augur_binary(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let me = std::env::current_exe()?;
    let sibling = me.with_file_name("augur");
    if sibling.is_file() {
        return Ok(sibling);
    }
    bail!(
        "cannot find the augur binary next to {}; build it (cargo build --release -p augur-proxy) or pass --augur PATH",
        me.display()
    )
}

/// Starts augur with `config` (TOML text) and waits until its admin
/// listener says ready.
pub fn start_augur(
    binary: &Path,
    dir: &Path,
    name: &str,
    config: &str,
    admin: SocketAddr,
    cpus: Option<&str>,
) -> anyhow::Result<Proc> {
    start_augur_with(binary, dir, name, config, admin, cpus, &[])
}

/// [`start_augur`] with extra environment variables (`DOCKER_HOST`).
pub fn start_augur_with(
    binary: &Path,
    dir: &Path,
    name: &str,
    config: &str,
    admin: SocketAddr,
    cpus: Option<&str>,
    env: &[(&str, &str)],
) -> anyhow::Result<Proc> {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config)?;
    let mut cmd = command(binary, cpus);
    cmd.args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied());
    let proc = start(name, cmd, &dir.join(format!("{name}.log")), &[admin])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !crate::procs::http_ok(admin, "/readyz") {
        if Instant::now() > deadline {
            bail!("augur ({name}) not ready within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(proc)
}

/// The value of one series in Prometheus text, 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A blocking GET that reports whether the answer was 200.
pub fn http_ok(addr: SocketAddr, path: &str) -> bool {
    http_get(addr, path).is_ok_and(|(status, _)| status == 200)
}

/// A blocking HTTP/1.1 GET (one per connection), for the admin API: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status line")?;
    let body = raw
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}

/// The time now, UTC, for a benchmark's heading (`date -u`).
pub fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "date unknown".into())
}

/// The machine a benchmark ran on: CPU model, cores and memory, from /proc.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or_else(String::new, |kib| {
            format!(", {:.0} GiB", kib as f64 / 1048576.0)
        });
    format!("{model}, {cores} cores{memory}")
}
