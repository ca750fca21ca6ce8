//! A real OTLP receiver for tests: the collector's gRPC MetricsService and
//! TraceService (tonic, generated from the OTLP protos) and the HTTP/protobuf
//! endpoints `/v1/metrics` and `/v1/traces` (axum), both decoding real
//! protobuf into `opentelemetry-proto` messages. Listens on 127.0.0.1 only,
//! and can be stopped and started again on the same port to fake an outage.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Everything the receiver decoded, plus the raw bytes and headers for secret checks.
#[derive(Default)]
pub struct Received {
    pub metrics: Vec<ExportMetricsServiceRequest>,
    pub traces: Vec<ExportTraceServiceRequest>,
    /// Protobuf bodies as they arrived (HTTP) or re-encoded (gRPC).
    pub raw: Vec<Vec<u8>>,
    /// `name: value` of every request header seen.
    pub headers: Vec<String>,
}

pub type Shared = Arc<Mutex<Received>>;

pub fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Received> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    Http,
}

/// A running receiver; `stop` ends it, `start_at` brings it back on the same address.
pub struct Receiver {
    pub address: SocketAddr,
    pub received: Shared,
    transport: Transport,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

struct Grpc(Shared);

#[tonic::async_trait]
impl MetricsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let headers = header_lines(request.metadata().clone().into_headers());
        let message = request.into_inner();
        let mut received = lock(&self.0);
        received.raw.push(message.encode_to_vec());
        received.headers.extend(headers);
        received.metrics.push(message);
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let headers = header_lines(request.metadata().clone().into_headers());
        let message = request.into_inner();
        let mut received = lock(&self.0);
        received.raw.push(message.encode_to_vec());
        received.headers.extend(headers);
        received.traces.push(message);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn header_lines(headers: HeaderMap) -> Vec<String> {
    headers
        .iter()
        .map(|(name, value)| format!("{name}: {}", String::from_utf8_lossy(value.as_bytes())))
        .collect()
}

async fn http_metrics(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    match ExportMetricsServiceRequest::decode(body.clone()) {
        Ok(message) => {
            let mut received = lock(&shared);
            received.raw.push(body.to_vec());
            received.headers.extend(header_lines(headers));
            received.metrics.push(message);
            protobuf_ok(ExportMetricsServiceResponse::default().encode_to_vec())
        }
        Err(_) => (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "text/plain")],
            Vec::new(),
        ),
    }
}

async fn http_traces(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    match ExportTraceServiceRequest::decode(body.clone()) {
        Ok(message) => {
            let mut received = lock(&shared);
            received.raw.push(body.to_vec());
            received.headers.extend(header_lines(headers));
            received.traces.push(message);
            protobuf_ok(ExportTraceServiceResponse::default().encode_to_vec())
        }
        Err(_) => (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "text/plain")],
            Vec::new(),
        ),
    }
}

fn protobuf_ok(body: Vec<u8>) -> (StatusCode, [(header::HeaderName, &'static str); 1], Vec<u8>) {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        body,
    )
}

impl Receiver {
    /// Starts on a free loopback port.
    pub async fn start(transport: Transport) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        Receiver::serve(transport, listener, Shared::default())
    }

    fn serve(
        transport: Transport,
        listener: tokio::net::TcpListener,
        received: Shared,
    ) -> Receiver {
        let address = listener.local_addr().expect("receiver address");
        let (stop, stopped) = oneshot::channel::<()>();
        let shared = Arc::clone(&received);
        let task = match transport {
            Transport::Grpc => tokio::spawn(async move {
                let incoming = tonic::transport::server::TcpIncoming::from(listener);
                tonic::transport::Server::builder()
                    .add_service(MetricsServiceServer::new(Grpc(Arc::clone(&shared))))
                    .add_service(TraceServiceServer::new(Grpc(shared)))
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = stopped.await;
                    })
                    .await
                    .expect("grpc receiver");
            }),
            Transport::Http => tokio::spawn(async move {
                let app = axum::Router::new()
                    .route("/v1/metrics", post(http_metrics))
                    .route("/v1/traces", post(http_traces))
                    .with_state(shared);
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
                    .expect("http receiver");
            }),
        };
        Receiver {
            address,
            received,
            transport,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops accepting and closes every connection (the outage begins).
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take() {
            // Graceful shutdown closes idle connections; cut the rest after a moment.
            if tokio::time::timeout(std::time::Duration::from_secs(2), &mut task)
                .await
                .is_err()
            {
                task.abort();
                let _ = task.await;
            }
        }
    }

    /// Starts again on the same address, keeping what was received (the outage ends).
    pub async fn restart(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.address)
            .await
            .expect("rebind receiver");
        let again = Receiver::serve(self.transport, listener, Arc::clone(&self.received));
        self.stop = again.stop;
        self.task = again.task;
    }
}
