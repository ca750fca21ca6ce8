//! A real kube-rs client against a fake API server on 127.0.0.1 that serves
//! list and streaming watch responses for pods, namespaces, ReplicaSets and
//! Jobs, as the API server does (ListWatch: list, then watch from the list's
//! resourceVersion).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};
use tokenscope::attribution::k8s::{start, PodCache, PodMeta};
use tokio_util::sync::CancellationToken;

const PODS: &str = include_str!("../../tests/fixtures/k8s/pods.json");
const POD_ADDED: &str = include_str!("../../tests/fixtures/k8s/pod-added.json");
const NAMESPACES: &str = include_str!("../../tests/fixtures/k8s/namespaces.json");
const REPLICASETS: &str = include_str!("../../tests/fixtures/k8s/replicasets.json");
const JOBS: &str = include_str!("../../tests/fixtures/k8s/jobs.json");

const NODE: &str = "node-a";
const CHAT_UID: &str = "3f1e2d4c-8b7a-4c5d-9e6f-0a1b2c3d4e5f";
const OTHER_NODE_UID: &str = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";
/// The watch bookmark is 30 past the list's resourceVersion (48420).
const BOOKMARK_RV: &str = "48450";
const EMBED_UID: &str = "c7d8e9f0-1a2b-4c3d-9e4f-5a6b7c8d9e0f";

/// One resource: its list, the watch events pushed so far (with their
/// resourceVersions), and what clients asked.
struct Resource {
    list: Mutex<Value>,
    bookmark_kind: &'static str,
    events: Mutex<Vec<(u64, String)>>,
    pushed: tokio::sync::watch::Sender<usize>,
    requests: Mutex<Vec<(HashMap<String, String>, String)>>,
    /// Ends the next watch right after its bookmark, so the client must resume
    /// from the bookmark's resourceVersion.
    close_after_bookmark: AtomicBool,
}

impl Resource {
    fn new(list: &str, bookmark_kind: &'static str) -> Arc<Resource> {
        Arc::new(Resource {
            list: Mutex::new(serde_json::from_str(list).expect("fixture list")),
            bookmark_kind,
            events: Mutex::new(Vec::new()),
            pushed: tokio::sync::watch::channel(0).0,
            requests: Mutex::new(Vec::new()),
            close_after_bookmark: AtomicBool::new(false),
        })
    }

    fn push(&self, kind: &str, mut object: Value, rv: u64) {
        if kind != "ERROR" {
            object["metadata"]["resourceVersion"] = json!(rv.to_string());
        }
        let line = json!({"type": kind, "object": object}).to_string() + "\n";
        let mut events = self.events.lock().unwrap();
        events.push((rv, line));
        self.pushed.send_replace(events.len());
    }

    fn item(&self, index: usize) -> Value {
        self.list.lock().unwrap()["items"][index].clone()
    }

    fn requests(&self) -> Vec<(HashMap<String, String>, String)> {
        self.requests.lock().unwrap().clone()
    }
}

async fn serve(
    State(res): State<Arc<Resource>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    res.requests.lock().unwrap().push((query.clone(), accept));
    // The server applies the field selector, as the real one does.
    let node = query
        .get("fieldSelector")
        .and_then(|f| f.strip_prefix("spec.nodeName="))
        .map(str::to_string);
    let on_node = |item: &Value| match &node {
        Some(n) => item["spec"]["nodeName"].as_str() == Some(n.as_str()),
        None => true,
    };
    let list_rv: u64 = {
        let list = res.list.lock().unwrap();
        list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    if query.get("watch").map(String::as_str) != Some("true") {
        let mut list = res.list.lock().unwrap().clone();
        if let Some(items) = list["items"].as_array_mut() {
            items.retain(on_node);
        }
        return Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(list.to_string()))
            .unwrap();
    }
    let bookmark = json!({"type": "BOOKMARK", "object": {
        "kind": res.bookmark_kind, "apiVersion": "v1",
        "metadata": {"resourceVersion": (list_rv + 30).to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}
    }})
    .to_string()
        + "\n";
    let first = futures::stream::iter([Ok::<_, std::convert::Infallible>(bookmark)]);
    // Sends the pushed events newer than the client's version, then waits for
    // more; the connection stays open.
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let close = res.close_after_bookmark.swap(false, Ordering::SeqCst);
    let rx = res.pushed.subscribe();
    let later = futures::stream::unfold(
        (rx, 0usize, res),
        move |(mut rx, mut sent, res)| async move {
            loop {
                if close {
                    return None;
                }
                let event = res.events.lock().unwrap().get(sent).cloned();
                match event {
                    Some((rv, line)) if rv > from => return Some((Ok(line), (rx, sent + 1, res))),
                    Some(_) => sent += 1,
                    None => rx.changed().await.ok()?,
                }
            }
        },
    );
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(futures::StreamExt::chain(first, later)))
        .unwrap()
}

async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..200 {
        if let Some(v) = f() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn cache_follows_list_and_watch_from_a_real_client() {
    let pods = Resource::new(PODS, "Pod");
    let namespaces = Resource::new(NAMESPACES, "Namespace");
    let replicasets = Resource::new(REPLICASETS, "ReplicaSet");
    let jobs = Resource::new(JOBS, "Job");
    pods.close_after_bookmark.store(true, Ordering::SeqCst);
    let app = Router::new()
        .route("/api/v1/pods", get(serve).with_state(pods.clone()))
        .route(
            "/api/v1/namespaces",
            get(serve).with_state(namespaces.clone()),
        )
        .route(
            "/apis/apps/v1/replicasets",
            get(serve).with_state(replicasets.clone()),
        )
        .route("/apis/batch/v1/jobs", get(serve).with_state(jobs.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let shutdown = CancellationToken::new();
    let cache: PodCache = start(client, NODE, "team", shutdown.clone()).await.unwrap();

    // Team from the namespace, so the namespace watch must have delivered too.
    let chat: PodMeta = eventually("chat-api pod with its namespace team", || {
        cache.by_uid(CHAT_UID).filter(|m| m.team.is_some())
    })
    .await;
    assert_eq!(chat.name, "chat-api-7d9f8b6c5d-x2k4p");
    assert_eq!(chat.namespace, "inference");
    assert_eq!(
        (chat.workload_kind.as_str(), chat.workload.as_str()),
        ("Deployment", "chat-api")
    );
    assert_eq!(chat.team.as_deref(), Some("ml-platform"));
    assert_eq!(
        cache.by_ip("10.244.1.17").map(|m| m.uid),
        Some(CHAT_UID.to_string())
    );

    // The CronJob can only come from the Job watch.
    let embed = eventually("embed pod resolved to its CronJob", || {
        cache
            .by_uid(EMBED_UID)
            .filter(|m| m.workload_kind == "CronJob")
    })
    .await;
    assert_eq!(embed.workload, "embed-nightly");
    assert_eq!(
        embed.team.as_deref(),
        Some("nlp"),
        "pod label wins over namespace"
    );
    let legacy = eventually("legacy-worker resolved by its ReplicaSet", || {
        cache
            .by_ip("10.244.1.44")
            .filter(|m| m.workload == "legacy-worker")
    })
    .await;
    assert_eq!(legacy.workload_kind, "ReplicaSet");
    assert_eq!(
        legacy.team.as_deref(),
        Some("default"),
        "the namespace name"
    );

    // Only this node's pods: 7 of the 8 in the fixture.
    assert_eq!(cache.len(), 7);
    assert_eq!(cache.by_uid(OTHER_NODE_UID), None);
    assert_eq!(cache.by_ip("10.244.2.8"), None);
    let pod_requests = pods.requests();
    assert!(!pod_requests.is_empty());
    for (query, _) in &pod_requests {
        let selector = query.get("fieldSelector").map(String::as_str).unwrap_or("");
        assert!(
            selector.split(',').any(|s| s == "spec.nodeName=node-a"),
            "pod request without the node selector: {query:?}"
        );
    }
    // Pods: a list, a watch from the list's version that ends after its bookmark,
    // and a second watch resumed from the bookmark's version.
    let resumed = eventually("the pod watch resumed from the bookmark", || {
        let watches: Vec<String> = pods
            .requests()
            .into_iter()
            .filter(|(q, _)| q.get("watch").map(String::as_str) == Some("true"))
            .filter_map(|(mut q, _)| q.remove("resourceVersion"))
            .collect();
        (watches.len() >= 2).then_some(watches)
    })
    .await;
    assert_eq!(resumed[..2], ["48420", BOOKMARK_RV]);
    // Namespaces, ReplicaSets and Jobs are read as metadata only.
    for res in [&namespaces, &replicasets, &jobs] {
        let requests = res.requests();
        assert!(!requests.is_empty());
        for (_, accept) in requests {
            assert!(
                accept.contains("as=PartialObjectMetadata"),
                "accept: {accept}"
            );
        }
    }

    // A pod added later is found; a deleted pod leaves, and so does its IP.
    let added: Value = serde_json::from_str(POD_ADDED).unwrap();
    pods.push("ADDED", added.clone(), 48501);
    let new = eventually("the added pod", || cache.by_ip("10.244.1.52")).await;
    assert_eq!(new.name, "chat-api-7d9f8b6c5d-p5t6w");
    assert_eq!(new.workload, "chat-api");
    assert_eq!(cache.len(), 8);

    let mut gone = pods.item(0);
    assert_eq!(gone["metadata"]["uid"], CHAT_UID);
    gone["metadata"]["deletionTimestamp"] = json!("2026-11-29T01:02:03Z");
    pods.push("DELETED", gone, 48600);
    eventually("the deleted pod to leave", || {
        cache.by_uid(CHAT_UID).is_none().then_some(())
    })
    .await;
    assert_eq!(cache.by_ip("10.244.1.17"), None);
    assert_eq!(cache.len(), 7);

    // A namespace relabel reaches pods that take their team from it.
    let mut ns = namespaces.item(1);
    assert_eq!(ns["metadata"]["name"], "inference");
    ns["metadata"]["labels"]["team"] = json!("inference-core");
    namespaces.push("MODIFIED", ns, 48610);
    eventually("the namespace's new team", || {
        cache
            .by_uid("7a8b9c0d-1e2f-4a3b-8c4d-5e6f7a8b9c0d")
            .filter(|m| m.team.as_deref() == Some("inference-core"))
    })
    .await;

    // The watch expires (410); the client lists again, and a pod deleted while
    // it was not watching (debug-shell) leaves the cache.
    let debug_shell = pods.item(6);
    assert_eq!(debug_shell["metadata"]["name"], "debug-shell");
    assert!(cache.by_ip("10.244.1.40").is_some());
    {
        let mut list = pods.list.lock().unwrap();
        list["metadata"]["resourceVersion"] = json!("48700");
        let items = list["items"].as_array_mut().unwrap();
        items.retain(|p| p["metadata"]["uid"] != CHAT_UID && p != &debug_shell);
        items.push(added);
    }
    let expired = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "too old resource version: 48450 (48690)", "reason": "Expired", "code": 410});
    pods.push("ERROR", expired, 48690);
    eventually("debug-shell to leave after the relist", || {
        cache.by_ip("10.244.1.40").is_none().then_some(())
    })
    .await;
    assert_eq!(cache.len(), 6);
    assert!(cache.by_ip("10.244.1.52").is_some());
    let lists = pods
        .requests()
        .iter()
        .filter(|(q, _)| q.get("watch").is_none())
        .count();
    assert_eq!(lists, 2, "one list at start, one after the 410");
    shutdown.cancel();
}

#[tokio::test]
async fn empty_node_name_is_refused() {
    let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let result = start(client, " ", "team", CancellationToken::new()).await;
    assert!(result.is_err());
}
