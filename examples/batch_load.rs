//! The load of the batching benchmark (`bench/batching/run`): clients that
//! send one text a job, each over one keep-alive connection.
//!
//! ```text
//! batch_load direct URL BATCH SECONDS        the model called directly, BATCH texts a call
//! batch_load proxy URL CLIENTS SECONDS       jobs through the proxy's native API, one text each
//! batch_load paired URL_A URL_B SECONDS      one client, jobs through A and B in turn
//! ```
//!
//! Prints one JSON line a run (two for `paired`): texts/s, p50 and p99
//! latency in ms, and for the proxy the batch sizes the jobs' status
//! documents report. A job is `POST /async` (the OpenAI-style body under
//! `data`) and then `GET /async/{id}` with `Prefer: wait=30` until it ends.
//!
//! Why Rust and one task a client on a single thread: the benchmark shares
//! two cores with the model, and the model's throughput is what is compared;
//! a client that costs little CPU takes little from it. `paired` exists for
//! the light-load latency: the model's own speed drifts by milliseconds
//! from one minute to the next, so jobs through the unbatched and the
//! batched proxy are sent in turn, under the same conditions.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;

fn text(i: usize) -> String {
    format!(
        "sentence number {} about queues, batches and embedding models on a small machine",
        i % 4096
    )
}

/// One keep-alive HTTP/1.1 connection.
struct Client {
    authority: String,
    sender: Option<http1::SendRequest<Full<Bytes>>>,
}

impl Client {
    fn new(base: &str) -> Client {
        let authority = base
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        Client {
            authority,
            sender: None,
        }
    }

    async fn connect(&mut self) -> &mut http1::SendRequest<Full<Bytes>> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = TcpStream::connect(&self.authority)
                .await
                .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.authority));
            stream.set_nodelay(true).expect("TCP_NODELAY");
            let (sender, conn) = http1::handshake(TokioIo::new(stream))
                .await
                .expect("an HTTP/1.1 handshake");
            tokio::task::spawn_local(conn);
            self.sender = Some(sender);
        }
        let sender = self.sender.as_mut().expect("connected");
        sender.ready().await.expect("the connection is ready");
        sender
    }

    async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        prefer: Option<&str>,
    ) -> (u16, Value) {
        let authority = self.authority.clone();
        let sender = self.connect().await;
        let mut builder = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", authority);
        if let Some(prefer) = prefer {
            builder = builder.header("prefer", prefer);
        }
        let payload = match body {
            Some(body) => {
                builder = builder.header("content-type", "application/json");
                Bytes::from(serde_json::to_vec(body).expect("JSON"))
            }
            None => Bytes::new(),
        };
        let request = builder.body(Full::new(payload)).expect("a request");
        let response = sender.send_request(request).await.expect("an answer");
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("a body")
            .to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

/// A job through the proxy: its batch size, if the status document has one.
async fn job(client: &mut Client, i: usize) -> Option<u64> {
    let body = json!({"path": "/v1/embeddings", "data": {"model": "minilm", "input": text(i)}});
    let (status, doc) = client.request("POST", "/async", Some(&body), None).await;
    assert_eq!(status, 201, "{doc}");
    let path = format!("/async/{}", doc["id"].as_str().expect("an id"));
    loop {
        let (status, doc) = client.request("GET", &path, None, Some("wait=30")).await;
        let state = doc["status"].as_str().unwrap_or_default();
        if status == 200 && state != "queued" && state != "in_progress" {
            assert_eq!(state, "succeeded", "{doc}");
            return doc["batch_size"].as_u64();
        }
    }
}

/// A call of the model with `n` texts.
async fn direct(client: &mut Client, i: usize, n: usize) {
    let input = if n == 1 {
        json!(text(i))
    } else {
        Value::from((0..n).map(|k| text(i * n + k)).collect::<Vec<_>>())
    };
    let body = json!({"model": "minilm", "input": input});
    let (status, doc) = client
        .request("POST", "/v1/embeddings", Some(&body), None)
        .await;
    assert_eq!(status, 200, "{doc}");
}

#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    texts: usize,
    sizes: BTreeMap<u64, u64>,
}

impl Tally {
    fn print(&self, mode: &str, n: usize, elapsed: Duration) {
        let mut ms: Vec<f64> = self
            .latencies
            .iter()
            .map(|d| d.as_secs_f64() * 1e3)
            .collect();
        ms.sort_by(f64::total_cmp);
        let at = |p: f64| {
            let i = ((p / 100.0 * ms.len() as f64) as usize).min(ms.len().saturating_sub(1));
            ms.get(i).map(|v| (v * 10.0).round() / 10.0)
        };
        let sizes: serde_json::Map<String, Value> = self
            .sizes
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        println!(
            "{}",
            json!({
                "mode": mode,
                "n": n,
                "texts_per_s": (self.texts as f64 / elapsed.as_secs_f64() * 10.0).round() / 10.0,
                "calls": self.latencies.len(),
                "p50_ms": at(50.0),
                "p99_ms": at(99.0),
                "batch_sizes": sizes,
            })
        );
    }
}

fn usage() -> ! {
    eprintln!("usage: batch_load direct URL BATCH SECONDS | proxy URL CLIENTS SECONDS | paired URL_A URL_B SECONDS");
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 4 {
        usage();
    }
    let seconds: f64 = args[3].parse().unwrap_or_else(|_| usage());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let stop = Instant::now() + Duration::from_secs_f64(seconds);
        let started = Instant::now();
        match args[0].as_str() {
            "direct" => {
                let n: usize = args[2].parse().unwrap_or_else(|_| usage());
                let mut client = Client::new(&args[1]);
                let mut tally = Tally::default();
                let mut i = 0;
                while Instant::now() < stop {
                    let t0 = Instant::now();
                    direct(&mut client, i, n).await;
                    tally.latencies.push(t0.elapsed());
                    tally.texts += n;
                    i += 1;
                }
                tally.print("direct", n, started.elapsed());
            }
            "proxy" => {
                let clients: usize = args[2].parse().unwrap_or_else(|_| usage());
                let tasks: Vec<_> = (0..clients)
                    .map(|c| {
                        let base = args[1].clone();
                        tokio::task::spawn_local(async move {
                            let mut client = Client::new(&base);
                            let mut tally = Tally::default();
                            let mut i = c;
                            while Instant::now() < stop {
                                let t0 = Instant::now();
                                let size = job(&mut client, i).await;
                                tally.latencies.push(t0.elapsed());
                                tally.texts += 1;
                                if let Some(size) = size {
                                    *tally.sizes.entry(size).or_default() += 1;
                                }
                                i += clients;
                            }
                            tally
                        })
                    })
                    .collect();
                let mut all = Tally::default();
                for task in tasks {
                    let tally = task.await.expect("a client");
                    all.latencies.extend(tally.latencies);
                    all.texts += tally.texts;
                    for (size, n) in tally.sizes {
                        *all.sizes.entry(size).or_default() += n;
                    }
                }
                all.print("proxy", clients, started.elapsed());
            }
            "paired" => {
                let mut clients = [Client::new(&args[1]), Client::new(&args[2])];
                let mut tallies = [Tally::default(), Tally::default()];
                let mut i = 0;
                while Instant::now() < stop {
                    let which = i % 2;
                    let t0 = Instant::now();
                    let size = job(&mut clients[which], i).await;
                    let tally = &mut tallies[which];
                    tally.latencies.push(t0.elapsed());
                    tally.texts += 1;
                    if let Some(size) = size {
                        *tally.sizes.entry(size).or_default() += 1;
                    }
                    i += 1;
                }
                // Each ran half the time: its rate is of its own jobs over the whole.
                let elapsed = started.elapsed();
                tallies[0].print("paired A", 1, elapsed);
                tallies[1].print("paired B", 1, elapsed);
            }
            _ => usage(),
        }
    });
}
