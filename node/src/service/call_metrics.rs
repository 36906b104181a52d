//! Call latency of the Admin and file services, by method and gRPC code,
//! as a tower layer in front of every service on the port.
//!
//! It must never change a request or a reply. Time runs until the reply's
//! headers: all of a unary call, and the start of a streamed read. The
//! code is the one in those headers (every error tonic returns before a
//! reply's body), "Ok" otherwise.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::codegen::http;

use crate::telemetry;

const ADMIN: &str = "/nas.v1.Admin/";
const NAS: &str = "/nas.v1.Nas/";

#[derive(Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics { inner }
    }
}

#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

/// The histogram and method a call's path names, for the two services
/// measured.
fn classify(path: &str) -> Option<(&'static str, &'static str, String)> {
    if let Some(m) = path.strip_prefix(ADMIN) {
        Some((telemetry::ADMIN_REQUEST, "rpc", m.to_string()))
    } else {
        path.strip_prefix(NAS)
            .map(|m| (telemetry::FILE_OPERATION, "op", m.to_string()))
    }
}

fn code<B>(resp: &http::Response<B>) -> String {
    match resp.headers().get("grpc-status").map(|v| v.to_str().unwrap_or("")) {
        None | Some("0") => "Ok".into(),
        Some(n) => n
            .parse::<i32>()
            .map(|n| format!("{:?}", tonic::Code::from_i32(n)))
            .unwrap_or_else(|_| "Unknown".into()),
    }
}

impl<S, B, RB> tower::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let measured = classify(req.uri().path());
        let started = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await;
            if let (Some((name, label, method)), Ok(r)) = (measured, &resp) {
                metrics::histogram!(name, label => method, "code" => code(r)).record(started.elapsed().as_secs_f64());
            }
            resp
        })
    }
}
