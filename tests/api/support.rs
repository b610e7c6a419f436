//! Real servers on 127.0.0.1:0 and a real client.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use serde_json::Value;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Serves `service` on a fresh port; the server stops when the handle drops.
pub struct Server {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

pub async fn serve<S, B>(service: S) -> Server
where
    S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Server { addr, task }
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// The problem document's `code`, after checking it is one.
    pub fn problem(&self) -> (String, String) {
        assert_eq!(
            self.headers["content-type"],
            "application/problem+json",
            "{:?}",
            String::from_utf8_lossy(&self.body)
        );
        let doc = self.json();
        assert_eq!(doc["status"], self.status.as_u16());
        (
            doc["code"].as_str().unwrap().to_owned(),
            doc["detail"].as_str().unwrap().to_owned(),
        )
    }
}

#[derive(Clone)]
pub struct HttpClient(Client<HttpConnector, Full<Bytes>>);

impl HttpClient {
    pub fn new() -> Self {
        HttpClient(Client::builder(TokioExecutor::new()).build_http())
    }

    pub async fn send(&self, req: Request<Full<Bytes>>) -> Answer {
        let response = self.0.request(req).await.expect("the server answered");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("the body").to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    pub async fn get(&self, url: &str) -> Answer {
        self.send(Request::get(url).body(Full::default()).unwrap())
            .await
    }

    pub async fn post_json(&self, url: &str, body: &Value) -> Answer {
        let req = Request::post(url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        self.send(req).await
    }

    pub async fn delete(&self, url: &str) -> Answer {
        self.send(Request::delete(url).body(Full::default()).unwrap())
            .await
    }

    /// Long-polls `url` (a status route) until it answers 200.
    pub async fn finished(&self, url: &str) -> Value {
        loop {
            let req = Request::get(url)
                .header("prefer", "wait=30")
                .body(Full::default())
                .unwrap();
            let a = self.send(req).await;
            if a.status == 200 {
                return a.json();
            }
            assert_eq!(a.status, 202, "{:?}", String::from_utf8_lossy(&a.body));
        }
    }
}

pub fn json_response(status: u16, body: &Value) -> Response<tower_defer::Body> {
    let mut r = Response::new(tower_defer::Body::from(body.to_string()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

pub fn infallible<T>(t: T) -> Result<T, Infallible> {
    Ok(t)
}
