//! The agent's HTTP endpoint: `/metrics`, `/healthz`, `/readyz`,
//! `/api/v1/calls?limit=N` (recent calls) and `/api/v1/usage` (aggregates).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::metrics::{MetricsSnapshot, TOKEN_TYPES};
use super::{prometheus, ExportState};
use crate::record::CallRecord;

/// Calls returned by `/api/v1/calls` when no `limit` is given.
const DEFAULT_CALLS: usize = 100;

/// Serves until `shutdown` is cancelled, then finishes in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ExportState>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

pub fn router(state: Arc<ExportState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/v1/calls", get(calls))
        .route("/api/v1/usage", get(usage))
        .with_state(state)
}

async fn metrics(State(state): State<Arc<ExportState>>) -> Response {
    // Rendering takes the aggregate lock and walks every series; keep it off the async workers.
    let rendered = tokio::task::spawn_blocking(move || state.render_prometheus()).await;
    match rendered {
        Ok(text) => ([(header::CONTENT_TYPE, prometheus::CONTENT_TYPE)], text).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn readyz(State(state): State<Arc<ExportState>>) -> Response {
    if state.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CallsQuery {
    limit: Option<usize>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CallsResponse {
    /// Newest first.
    pub calls: Vec<CallRecord>,
}

async fn calls(
    State(state): State<Arc<ExportState>>,
    Query(query): Query<CallsQuery>,
) -> Json<CallsResponse> {
    let limit = query
        .limit
        .unwrap_or(DEFAULT_CALLS)
        .min(state.recent.capacity());
    Json(CallsResponse {
        calls: state.recent.latest(limit),
    })
}

/// Totals of one (team, model) group, or of everything.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageGroup {
    pub team: String,
    pub model: String,
    pub calls: u64,
    /// Keyed by token type: input, output, cache_read, cache_creation, reasoning.
    pub tokens: BTreeMap<String, u64>,
    pub cost_usd: f64,
    pub unpriced_calls: u64,
    pub errors: u64,
    pub rate_limited: u64,
    pub gpu_seconds: f64,
    pub gpu_cost_usd: f64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct UsageResponse {
    pub groups: Vec<UsageGroup>,
    pub totals: UsageGroup,
}

/// Groups the aggregate series by team and model (request model, else response model).
pub fn usage_by_team_and_model(snapshot: &MetricsSnapshot) -> UsageResponse {
    let mut groups: BTreeMap<(String, String), UsageGroup> = BTreeMap::new();
    let mut totals = UsageGroup::default();
    for (labels, data) in &snapshot.series {
        let model = if labels.request_model.is_empty() {
            labels.response_model.clone()
        } else {
            labels.request_model.clone()
        };
        let key = (labels.team.clone(), model);
        let group = groups.entry(key.clone()).or_insert_with(|| UsageGroup {
            team: key.0,
            model: key.1,
            ..UsageGroup::default()
        });
        for target in [group, &mut totals] {
            target.calls += data.calls;
            for (kind, count) in TOKEN_TYPES.iter().zip(data.tokens) {
                *target.tokens.entry((*kind).to_owned()).or_default() += count;
            }
            target.cost_usd += data.cost_usd;
            target.unpriced_calls += data.unpriced_calls;
            target.errors += data.errors;
            target.rate_limited += data.rate_limited;
            target.gpu_seconds += data.gpu_seconds;
            target.gpu_cost_usd += data.gpu_cost_usd;
        }
    }
    UsageResponse {
        groups: groups.into_values().collect(),
        totals,
    }
}

async fn usage(State(state): State<Arc<ExportState>>) -> Json<UsageResponse> {
    Json(usage_by_team_and_model(&state.metrics.snapshot()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::{assert_no_secrets, test_records, Exporters};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A plain HTTP/1.1 GET over a real socket; returns (status, body).
    async fn get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.expect("read");
        let text = String::from_utf8(response).expect("utf8 response");
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status line");
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serves_every_endpoint_over_real_http() {
        let exporters = Exporters::builder().recent_capacity(3).build();
        let records = test_records();
        for record in &records {
            exporters.record(record);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, exporters.state(), shutdown.clone()));

        assert_eq!(get(address, "/healthz").await.0, 200);
        assert_eq!(get(address, "/readyz").await.0, 503);
        exporters.state().set_ready(true);
        assert_eq!(get(address, "/readyz").await.0, 200);

        let (status, metrics) = get(address, "/metrics").await;
        assert_eq!(status, 200);
        assert!(metrics.contains("# TYPE tokenscope_llm_calls_total counter"));
        assert!(metrics.contains("tokenscope_process_resident_memory_bytes"));
        assert_no_secrets(&metrics);

        let (status, body) = get(address, "/api/v1/calls?limit=2").await;
        assert_eq!(status, 200);
        // Chunked or not, the JSON object is the part between the first '{' and the last '}'.
        let json = &body[body.find('{').unwrap_or(0)..=body.rfind('}').unwrap_or(0)];
        let calls: CallsResponse = serde_json::from_str(json).expect("calls json");
        assert_eq!(calls.calls.len(), 2);
        assert_eq!(
            calls.calls.first().map(|c| c.time_unix_nano),
            records.last().map(|r| r.time_unix_nano)
        );
        assert_no_secrets(json);
        let (_, body) = get(address, "/api/v1/calls?limit=1000").await;
        let json = &body[body.find('{').unwrap_or(0)..=body.rfind('}').unwrap_or(0)];
        let calls: CallsResponse = serde_json::from_str(json).expect("calls json");
        assert_eq!(calls.calls.len(), 3, "bounded by the ring");
        assert_eq!(get(address, "/api/v1/calls?limit=x").await.0, 400);

        let (status, body) = get(address, "/api/v1/usage").await;
        assert_eq!(status, 200);
        let json = &body[body.find('{').unwrap_or(0)..=body.rfind('}').unwrap_or(0)];
        let usage: UsageResponse = serde_json::from_str(json).expect("usage json");
        assert_eq!(usage.totals.calls, records.len() as u64);
        let payments_input: u64 = records
            .iter()
            .filter(|r| r.attribution.team.as_deref() == Some("payments"))
            .filter_map(|r| r.call.usage.input_tokens)
            .sum();
        let reported: u64 = usage
            .groups
            .iter()
            .filter(|g| g.team == "payments")
            .map(|g| g.tokens.get("input").copied().unwrap_or(0))
            .sum();
        assert_eq!(reported, payments_input);
        let cost: f64 = records.iter().filter_map(|r| r.cost_usd).sum();
        assert!((usage.totals.cost_usd - cost).abs() < 1e-9);

        shutdown.cancel();
        server.await.expect("join").expect("serve");
    }
}
