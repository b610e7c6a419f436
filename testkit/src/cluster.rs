//! A private Redis Cluster per test or benchmark.
//!
//! A [`RedisCluster`] runs each node as a [`RedisServer`] (a free port of
//! 127.0.0.1, a temp dir of its own, killed when dropped, and the same skip
//! unless `CI` is set when Redis is not installed), with cluster mode on, and
//! joins them with `redis-cli --cluster create`. A test can then kill a
//! master, wait for a replica to take over and restart the old master, to see
//! what a client does while a cluster fails over; a benchmark can read how
//! much CPU each master's main thread spent.
//!
//! Nodes are named by their index, in the order they were started. Which of
//! them are masters changes with every failover, so it is always asked of the
//! nodes, never assumed.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::ops::RangeInclusive;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::redis::{self, installed_or_skip, RedisServer};

/// How many hash slots a Redis Cluster shares out among its masters.
pub const SLOTS: u16 = 16384;

/// Redis puts a node's cluster bus on its port plus this, so both must be
/// free (Redis 7 can move it, but older servers cannot).
const BUS_OFFSET: u16 = 10000;

/// How a [`RedisCluster`] runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// At least three: `redis-cli` refuses to create a smaller cluster.
    pub masters: usize,
    pub replicas_per_master: usize,
    /// `cluster-node-timeout`: how long a node may be silent before the
    /// others take it for failed. Short by default, for quick failovers.
    pub node_timeout: Duration,
    /// Each node with an append-only file synced at every write, as
    /// [`redis::Config::appendonly`].
    pub appendonly: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            masters: 3,
            replicas_per_master: 1,
            node_timeout: Duration::from_secs(1),
            appendonly: false,
        }
    }
}

/// Starts a cluster (`masters, replicas_per_master`, or a [`Config`]), or
/// skips the calling test (returns from it) when Redis is not installed and
/// `CI` is not set.
#[macro_export]
macro_rules! redis_cluster_or_skip {
    ($masters:expr, $replicas:expr) => {
        $crate::redis_cluster_or_skip!($crate::cluster::Config {
            masters: $masters,
            replicas_per_master: $replicas,
            ..$crate::cluster::Config::default()
        })
    };
    ($config:expr) => {
        match $crate::cluster::RedisCluster::start_with($config) {
            Some(cluster) => cluster,
            None => return,
        }
    };
}

/// A reply of Redis, as much of RESP2 as the kit needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    /// A bulk string, read as UTF-8 (lossily: the kit reads text).
    Bulk(String),
    Nil,
    Array(Vec<Reply>),
}

impl Reply {
    /// A status line's or a bulk string's text.
    pub fn text(&self) -> Option<&str> {
        match self {
            Reply::Status(s) | Reply::Bulk(s) => Some(s),
            _ => None,
        }
    }

    pub fn int(&self) -> Option<i64> {
        match self {
            Reply::Int(n) => Some(*n),
            _ => None,
        }
    }

    pub fn array(&self) -> Option<&[Reply]> {
        match self {
            Reply::Array(items) => Some(items),
            _ => None,
        }
    }
}

pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    config: Config,
    /// Each node's replicas when it was last killed: the nodes that may take
    /// over from it, which a failover leaves no trace of.
    replicas_when_killed: Vec<Vec<usize>>,
}

impl RedisCluster {
    /// A fresh cluster of `masters` masters with `replicas_per_master`
    /// replicas each, healthy; `None` when Redis is not installed and `CI`
    /// is unset.
    pub fn start(masters: usize, replicas_per_master: usize) -> Option<Self> {
        Self::start_with(Config {
            masters,
            replicas_per_master,
            ..Config::default()
        })
    }

    /// A fresh cluster as `config` says, healthy: every node sees every
    /// slot served, and every replica is linked to its master.
    pub fn start_with(config: Config) -> Option<Self> {
        assert!(
            config.masters >= 3,
            "a Redis Cluster needs at least three masters, not {}",
            config.masters
        );
        if !installed_or_skip("redis-server") || !installed_or_skip("redis-cli") {
            return None;
        }
        let count = config.masters * (1 + config.replicas_per_master);
        // A relative config file lands in the node's own --dir. A master
        // sends a replica its data at once, rather than wait a few seconds
        // for more replicas to send it to together.
        let args: Vec<String> = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            &config.node_timeout.as_millis().to_string(),
            "--repl-diskless-sync-delay",
            "0",
        ]
        .map(String::from)
        .into();
        let node_config = redis::Config::from(config.appendonly);
        let nodes = ports_with_bus(count)
            .into_iter()
            .map(|port| RedisServer::launch(node_config.clone(), port, args.clone()))
            .collect();
        let cluster = RedisCluster {
            nodes,
            config,
            replicas_when_killed: vec![Vec::new(); count],
        };
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(
                cluster
                    .nodes
                    .iter()
                    .map(|n| format!("127.0.0.1:{}", n.port)),
            )
            .arg("--cluster-replicas")
            .arg(cluster.config.replicas_per_master.to_string())
            .arg("--cluster-yes")
            .output()
            .expect("redis-cli runs");
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&created.stdout),
            String::from_utf8_lossy(&created.stderr)
        );
        cluster.wait_until("the new cluster did not come up", || cluster.health());
        Some(cluster)
    }

    /// One cluster (three masters, each with a replica) that every caller
    /// in this process shares, started by the first; `None` to skip, as
    /// [`start`](Self::start). For tests that only use a cluster: one that
    /// kills nodes starts its own. libtest runs each test on a thread of
    /// its own, so a cluster per thread would be a cluster per test.
    ///
    /// A static is never dropped, so a reaper outlives it: a shell that
    /// reads its standard input, a pipe this process holds open until it
    /// ends (however it ends), and then kills the nodes and removes their
    /// directories.
    pub fn shared() -> Option<&'static RedisCluster> {
        use std::process::{Child, Stdio};
        use std::sync::OnceLock;
        static SHARED: OnceLock<Option<(RedisCluster, Child)>> = OnceLock::new();
        let shared = SHARED.get_or_init(|| {
            let cluster = RedisCluster::start(3, 1)?;
            let mut script = String::from("cat >/dev/null;");
            for node in cluster.nodes() {
                if let Some(pid) = node.pid() {
                    script.push_str(&format!(" kill -9 {pid};"));
                }
                script.push_str(&format!(" rm -rf '{}';", node.dir().display()));
            }
            let reaper = Command::new("sh")
                .args(["-c", &script])
                .stdin(Stdio::piped())
                .spawn()
                .expect("sh starts");
            Some((cluster, reaper))
        });
        shared.as_ref().map(|(cluster, _)| cluster)
    }

    /// Every node, by index: its port, pid and directory.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// `redis://127.0.0.1:PORT` of a node.
    pub fn url(&self, node: usize) -> String {
        format!("redis://127.0.0.1:{}", self.nodes[node].port)
    }

    /// The URL of every node, killed or not: a client's seed list.
    pub fn urls(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|node| self.url(node)).collect()
    }

    /// The URLs of the nodes that are masters now.
    pub fn master_urls(&self) -> Vec<String> {
        self.masters().into_iter().map(|n| self.url(n)).collect()
    }

    /// The live nodes that are masters now.
    pub fn masters(&self) -> Vec<usize> {
        self.live()
            .filter(|&n| self.replication(n, "role").as_deref() == Some("master"))
            .collect()
    }

    /// The live nodes that replicate `master` now.
    pub fn replicas_of(&self, master: usize) -> Vec<usize> {
        let port = self.nodes[master].port.to_string();
        self.live()
            .filter(|&n| {
                self.replication(n, "role").as_deref() == Some("slave")
                    && self.replication(n, "master_port").as_deref() == Some(port.as_str())
            })
            .collect()
    }

    /// Who serves which slots, in slot order, as the first live node sees it.
    pub fn slot_ranges(&self) -> Vec<(RangeInclusive<u16>, usize)> {
        let node = self.live().next().expect("a live node");
        self.slot_ranges_seen_by(node)
            .unwrap_or_else(|why| panic!("no slot ranges: {why}"))
    }

    /// The node serving `slot`.
    pub fn master_for_slot(&self, slot: u16) -> usize {
        self.slot_ranges()
            .into_iter()
            .find_map(|(range, node)| range.contains(&slot).then_some(node))
            .unwrap_or_else(|| panic!("no node serves slot {slot}"))
    }

    /// Kills a node with SIGKILL, as a crash would.
    pub fn kill(&mut self, node: usize) {
        // A replica that is paused does not answer: then the replicas seen
        // when the node was last asked stand.
        let replicas = self.replicas_of(node);
        if !replicas.is_empty() {
            self.replicas_when_killed[node] = replicas;
        }
        self.nodes[node].kill();
    }

    /// Stops a node (SIGSTOP) without killing it: it holds its connections
    /// but answers nothing, as a replica that lags would. [`resume`](Self::resume)
    /// lets it go on.
    pub fn pause(&mut self, node: usize) {
        // Asked now, while every node answers (see `kill`).
        for master in self.masters() {
            self.replicas_when_killed[master] = self.replicas_of(master);
        }
        self.signal(node, "-STOP");
    }

    /// Lets a [`pause`](Self::pause)d node go on (SIGCONT).
    pub fn resume(&self, node: usize) {
        self.signal(node, "-CONT");
    }

    fn signal(&self, node: usize, signal: &str) {
        let pid = self.nodes[node]
            .pid()
            .unwrap_or_else(|| panic!("node {node} is not running"));
        let sent = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill {signal} {pid} failed");
    }

    /// Starts a node again on its port and directory, and waits until the
    /// cluster is healthy again. Its `nodes.conf` brings it back into the
    /// cluster; a master that was failed over rejoins as a replica of the
    /// node that took over.
    pub fn restart(&mut self, node: usize) {
        self.nodes[node].restart();
        self.wait_until(&format!("node {node} did not rejoin"), || self.health());
    }

    /// Waits until a replica of `killed`, a master when it was killed, has
    /// taken over and the cluster is healthy again; returns that replica.
    pub fn wait_for_failover(&self, killed: usize) -> usize {
        assert!(!self.is_live(killed), "node {killed} was not killed");
        let candidates = &self.replicas_when_killed[killed];
        assert!(
            !candidates.is_empty(),
            "node {killed} had no replica when it was killed: none can take over"
        );
        self.wait_until(&format!("no replica of node {killed} took over"), || {
            let new = candidates
                .iter()
                .copied()
                .find(|&n| self.replication(n, "role").as_deref() == Some("master"))
                .ok_or_else(|| format!("nodes {candidates:?} are not masters"))?;
            self.health()?;
            Ok(new)
        })
    }

    /// Sends one inline command to a node and reads its reply; `None` when
    /// the node is killed or does not answer.
    pub fn ask(&self, node: usize, command: &str) -> Option<Reply> {
        if !self.is_live(node) {
            return None;
        }
        let mut tcp = TcpStream::connect(("127.0.0.1", self.nodes[node].port)).ok()?;
        tcp.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        tcp.write_all(format!("{command}\r\n").as_bytes()).ok()?;
        read_reply(&mut BufReader::new(tcp))
    }

    /// A section of a node's `INFO`, as text.
    pub fn info(&self, node: usize, section: &str) -> Option<String> {
        match self.ask(node, &format!("INFO {section}"))? {
            Reply::Bulk(text) => Some(text),
            _ => None,
        }
    }

    /// The CPU time, user and system, of a node's main thread: the one that
    /// runs commands, so the one a benchmark saturates.
    pub fn main_thread_cpu(&self, node: usize) -> Duration {
        self.nodes[node].main_thread_cpu()
    }

    fn is_live(&self, node: usize) -> bool {
        self.nodes[node].pid().is_some()
    }

    fn live(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).filter(|&n| self.is_live(n))
    }

    /// A field of a node's `INFO replication`.
    fn replication(&self, node: usize, name: &str) -> Option<String> {
        let info = self.info(node, "replication")?;
        field(&info, name).map(String::from)
    }

    fn slot_ranges_seen_by(
        &self,
        node: usize,
    ) -> Result<Vec<(RangeInclusive<u16>, usize)>, String> {
        let reply = self
            .ask(node, "CLUSTER SLOTS")
            .ok_or_else(|| format!("node {node} does not answer CLUSTER SLOTS"))?;
        let entries = reply
            .array()
            .ok_or_else(|| format!("node {node} answers CLUSTER SLOTS with {reply:?}"))?;
        let mut ranges = Vec::new();
        for entry in entries {
            let (range, port) = slot_entry(entry)
                .ok_or_else(|| format!("node {node} gives a CLUSTER SLOTS entry {entry:?}"))?;
            let owner = (0..self.nodes.len())
                .find(|&n| i64::from(self.nodes[n].port) == port)
                .ok_or_else(|| format!("node {node} says port {port}, not ours, serves slots"))?;
            ranges.push((range, owner));
        }
        ranges.sort_by_key(|(range, _)| *range.start());
        Ok(ranges)
    }

    /// Whether the cluster is whole: every live node says `cluster_state:ok`,
    /// knows every node, and has live masters serving every slot; every live
    /// replica is linked to its master; and there are as many masters as
    /// configured, so a restarted master has turned into a replica. `Err`
    /// says the first node that says otherwise, and what it said.
    fn health(&self) -> Result<(), String> {
        let mut masters = 0;
        for node in self.live() {
            let port = self.nodes[node].port;
            let says = |what: String| format!("node {node} (port {port}) says {what}");
            let silent = || format!("node {node} (port {port}) does not answer");
            let reply = self.ask(node, "CLUSTER INFO").ok_or_else(silent)?;
            let cluster = reply
                .text()
                .ok_or_else(|| says(format!("{reply:?} to CLUSTER INFO")))?;
            match field(cluster, "cluster_state") {
                Some("ok") => {}
                state => return Err(says(format!("cluster_state:{}", state.unwrap_or("?")))),
            }
            let known = field(cluster, "cluster_known_nodes").unwrap_or("?");
            if known != self.nodes.len().to_string() {
                return Err(says(format!("cluster_known_nodes:{known}")));
            }
            let replication = self.info(node, "replication").ok_or_else(silent)?;
            match field(&replication, "role") {
                Some("master") => masters += 1,
                Some("slave") => match field(&replication, "master_link_status") {
                    Some("up") => {}
                    link => {
                        return Err(says(format!("master_link_status:{}", link.unwrap_or("?"))))
                    }
                },
                role => return Err(says(format!("role:{}", role.unwrap_or("?")))),
            }
            for (range, owner) in self.slot_ranges_seen_by(node)? {
                if !self.is_live(owner) {
                    return Err(says(format!("killed node {owner} serves slots {range:?}")));
                }
            }
        }
        if masters != self.config.masters {
            return Err(format!(
                "{masters} live nodes are masters, not {}",
                self.config.masters
            ));
        }
        Ok(())
    }

    /// Calls `check` until it is `Ok`, and panics with `what` and the last
    /// `Err` when that takes too long: the time to see a node fail, elect a
    /// replica and spread the news, with room for a slow machine.
    fn wait_until<T>(&self, what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
        let patience = Duration::from_secs(10) + self.config.node_timeout * 10;
        let deadline = Instant::now() + patience;
        loop {
            match check() {
                Ok(done) => return done,
                Err(why) if Instant::now() >= deadline => {
                    panic!("{what} within {patience:?}: {why}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

/// `count` free ports, each with its bus port free too. Every socket stays
/// bound until all are chosen, so that no port is chosen twice, nor as
/// another's bus port.
fn ports_with_bus(count: usize) -> Vec<u16> {
    let mut held = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..1000 {
        if ports.len() == count {
            return ports;
        }
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener.local_addr().expect("its address").port();
        held.push(listener);
        let Some(bus) = port.checked_add(BUS_OFFSET) else {
            continue;
        };
        if let Ok(bus) = TcpListener::bind(("127.0.0.1", bus)) {
            held.push(bus);
            ports.push(port);
        }
    }
    panic!(
        "found {} of {count} free ports with a free bus port",
        ports.len()
    );
}

/// A `CLUSTER SLOTS` entry's slot range and its master's port.
fn slot_entry(entry: &Reply) -> Option<(RangeInclusive<u16>, i64)> {
    let entry = entry.array()?;
    let start = u16::try_from(entry.first()?.int()?).ok()?;
    let end = u16::try_from(entry.get(1)?.int()?).ok()?;
    let port = entry.get(2)?.array()?.get(1)?.int()?;
    Some((start..=end, port))
}

/// The value of `name:value` among an `INFO` text's lines.
fn field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

fn read_reply(reader: &mut impl BufRead) -> Option<Reply> {
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let line = line.strip_suffix("\r\n")?;
    let (kind, rest) = line.split_at_checked(1)?;
    Some(match kind {
        "+" => Reply::Status(rest.into()),
        "-" => Reply::Error(rest.into()),
        ":" => Reply::Int(rest.parse().ok()?),
        "$" => match rest.parse::<i64>().ok()? {
            -1 => Reply::Nil,
            len => {
                let mut bulk = vec![0; usize::try_from(len).ok()? + 2];
                reader.read_exact(&mut bulk).ok()?;
                bulk.truncate(bulk.len() - 2);
                Reply::Bulk(String::from_utf8_lossy(&bulk).into_owned())
            }
        },
        "*" => match rest.parse::<i64>().ok()? {
            -1 => Reply::Nil,
            len => Reply::Array(
                (0..len)
                    .map(|_| read_reply(reader))
                    .collect::<Option<_>>()?,
            ),
        },
        _ => return None,
    })
}

/// The hash slot of `key`, as Redis Cluster computes it: the CRC16 of the
/// key, or of its hash tag (what lies between the first `{` and the next
/// `}`, when not empty), so that keys with one tag share a slot.
pub fn slot_of(key: impl AsRef<[u8]>) -> u16 {
    let key = key.as_ref();
    let tag = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then_some(&rest[..close])
    });
    crc16(tag.unwrap_or(key)) % SLOTS
}

/// CRC16-XMODEM (polynomial 0x1021, initial value 0, unreflected), a bit
/// at a time: Redis's lookup table only makes it faster.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc = 0u16;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}
