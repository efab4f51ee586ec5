//! A small HTTP/1 client for loopback and in-cluster calls: `/metrics`, `/health`, `/admin/drain`.
//!
//! One pooled hyper client shared by the signals reader and the local actuator; every call carries
//! its own deadline, because a pod that accepts a connection and never answers must cost one
//! interval, not the loop.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;

/// Largest body read: a model server's `/metrics` is tens of KiB; a gateway's with many endpoints
/// a few MiB.
const MAX_BODY: usize = 16 << 20;

/// Why a call gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("bad URL `{0}`")]
    Url(String),
    #[error("{0}: timed out after {1:?}")]
    Timeout(String, Duration),
    #[error("{0}: {1}")]
    Transport(String, String),
    #[error("{0}: HTTP {1}")]
    Status(String, u16),
}

/// A cloneable client (clones share the connection pool).
#[derive(Clone, Debug)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector.set_nodelay(true);
        HttpClient {
            inner: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
        }
    }
}

impl HttpClient {
    /// `GET url`; the body as text when the status is 2xx.
    pub async fn get_text(&self, url: &str, timeout: Duration) -> Result<String, FetchError> {
        let (status, body) = self.call(http::Method::GET, url, timeout).await?;
        if !(200..300).contains(&status) {
            return Err(FetchError::Status(url.to_string(), status));
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// The status code of `GET url` (any status is an answer).
    pub async fn status_of(&self, url: &str, timeout: Duration) -> Result<u16, FetchError> {
        Ok(self.call(http::Method::GET, url, timeout).await?.0)
    }

    /// `POST url` with an empty body; the status code.
    pub async fn post_empty(&self, url: &str, timeout: Duration) -> Result<u16, FetchError> {
        Ok(self.call(http::Method::POST, url, timeout).await?.0)
    }

    async fn call(
        &self,
        method: http::Method,
        url: &str,
        timeout: Duration,
    ) -> Result<(u16, Bytes), FetchError> {
        let uri: http::Uri = url.parse().map_err(|_| FetchError::Url(url.to_string()))?;
        let request = http::Request::builder()
            .method(method)
            .uri(uri)
            .body(Full::new(Bytes::new()))
            .map_err(|_| FetchError::Url(url.to_string()))?;
        let work = async {
            let response = self
                .inner
                .request(request)
                .await
                .map_err(|e| FetchError::Transport(url.to_string(), e.to_string()))?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| FetchError::Transport(url.to_string(), e.to_string()))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| FetchError::Timeout(url.to_string(), timeout))?
    }
}
