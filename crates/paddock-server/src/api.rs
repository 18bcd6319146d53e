//! The HTTP API: routes, auth, bodies, streaming.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use paddock_functions::{Call, FunctionsError, Pool, PoolConfig};
use paddock_sandbox::{Chunk, ExecRequest};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tokio::sync::{OnceCell, mpsc, oneshot};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

use crate::config::{Tenant, cpus_to_millicores, hash_key};
use crate::error::{ApiError, ErrorCode, code_for_status};
use crate::manager::{CreateSpec, Entry, Manager};
use crate::metrics::Latency;

/// Every route, as `METHOD path` (the OpenAPI document lists the same).
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/sandboxes"),
    ("get", "/v1/sandboxes"),
    ("get", "/v1/sandboxes/{id}"),
    ("delete", "/v1/sandboxes/{id}"),
    ("post", "/v1/sandboxes/{id}/ttl"),
    ("post", "/v1/sandboxes/{id}/exec"),
    ("post", "/v1/sandboxes/{id}/contexts"),
    ("delete", "/v1/sandboxes/{id}/contexts/{cid}"),
    ("post", "/v1/sandboxes/{id}/contexts/{cid}/run"),
    ("get", "/v1/sandboxes/{id}/files"),
    ("put", "/v1/sandboxes/{id}/files/{path}"),
    ("get", "/v1/sandboxes/{id}/files/{path}"),
    ("delete", "/v1/sandboxes/{id}/files/{path}"),
    ("post", "/v1/functions/run"),
    ("get", "/v1/stats"),
    ("get", "/healthz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
];

/// The OpenAPI document.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Longest exec / run timeout a request may ask for.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// Shared state of the handlers.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The manager.
    pub manager: Manager,
    /// The functions pool, started on first use.
    pub pool: Arc<OnceCell<Arc<Pool>>>,
}

/// The router with every route and layer.
pub fn router(state: AppState) -> Router {
    let max_body = state.manager.config().max_body;
    let v1 = Router::new()
        .route("/v1/sandboxes", post(create_sandbox).get(list_sandboxes))
        .route(
            "/v1/sandboxes/{id}",
            get(get_sandbox).delete(delete_sandbox),
        )
        .route("/v1/sandboxes/{id}/ttl", post(extend_ttl))
        .route("/v1/sandboxes/{id}/exec", post(exec))
        .route("/v1/sandboxes/{id}/contexts", post(create_context))
        .route(
            "/v1/sandboxes/{id}/contexts/{cid}",
            axum::routing::delete(delete_context),
        )
        .route("/v1/sandboxes/{id}/contexts/{cid}/run", post(run_code))
        .route("/v1/sandboxes/{id}/files", get(get_root))
        .route(
            "/v1/sandboxes/{id}/files/{*path}",
            get(get_file).put(put_file).delete(delete_file),
        )
        .route("/v1/functions/run", post(run_function))
        .route("/v1/stats", get(stats))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .merge(v1)
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(on_panic))
        .layer(middleware::from_fn_with_state(state.clone(), json_errors))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                let id = req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!("request", id, method = %req.method(), path = %req.uri().path())
            })
            .on_response(
                tower_http::trace::DefaultOnResponse::new()
                    .level(tracing::Level::INFO)
                    .latency_unit(tower_http::LatencyUnit::Micros),
            ),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(Ids::default()))
        .with_state(state)
}

/// Request ids: a per-process random prefix and a counter.
#[derive(Debug, Clone)]
struct Ids {
    prefix: Arc<str>,
    next: Arc<AtomicU64>,
}

impl Default for Ids {
    fn default() -> Self {
        let mut b = [0u8; 4];
        let _ = getrandom::fill(&mut b);
        Ids {
            prefix: crate::config::hex(&b).into(),
            next: Arc::new(AtomicU64::new(1)),
        }
    }
}

impl MakeRequestId for Ids {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_str(&format!("{}-{n}", self.prefix))
            .ok()
            .map(RequestId::new)
    }
}

fn on_panic(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a handler panicked");
    ApiError::internal("internal error (the handler panicked; this is a bug)").into_response()
}

/// Rewrites any error response that is not already JSON (an extractor's
/// rejection) into the error shape, and counts errors.
async fn json_errors(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    if let Some(ErrorCode(code)) = resp.extensions().get::<ErrorCode>().copied() {
        state.manager.metrics().error(code);
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 << 10)
        .await
        .unwrap_or_default();
    let message = String::from_utf8_lossy(&text).trim().to_string();
    let message = if message.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        message
    };
    let code = code_for_status(status);
    state.manager.metrics().error(code);
    let mut r = ApiError::new(status, code, message).into_response();
    for (k, v) in parts.headers.iter() {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            r.headers_mut().insert(k.clone(), v.clone());
        }
    }
    r
}

async fn fallback() -> ApiError {
    ApiError::not_found("no such route (see /openapi.json)")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route (see /openapi.json)",
    )
}

/// Bearer auth: finds the tenant whose key hash matches, comparing every
/// tenant's hash in constant time.
async fn auth(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let Some(key) = presented else {
        return ApiError::unauthorized("missing Authorization: Bearer KEY").into_response();
    };
    let hash = hash_key(key);
    let mut found: Option<&Tenant> = None;
    for t in &state.manager.config().tenants {
        if bool::from(t.key_sha256.ct_eq(&hash)) {
            found = Some(t);
        }
    }
    match found {
        Some(t) => {
            if let Err((e, wait)) = state.manager.admit(t) {
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                let mut r = e.into_response();
                if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
                    r.headers_mut().insert(header::RETRY_AFTER, v);
                }
                return r;
            }
            req.extensions_mut().insert(Arc::new(t.clone()));
            next.run(req).await
        }
        None => ApiError::unauthorized("invalid API key").into_response(),
    }
}

/// A JSON body: no content type needed, empty means `{}`, unknown fields and
/// bad JSON are 400, too large is 413.
struct JsonBody<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = RawBody::from_request(req, state).await?.0;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(text)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}

/// Raw body bytes, with the size limit as 413.
struct RawBody(Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Bytes::from_request(req, state).await {
            Ok(b) => Ok(RawBody(b)),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::too_large(format!("request body too large: {e}")))
            }
            Err(e) => Err(ApiError::bad_request(format!("cannot read the body: {e}"))),
        }
    }
}

/// A size as `"64M"` or bytes.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

impl Size {
    fn bytes(&self, what: &str) -> Result<u64, ApiError> {
        match self {
            Size::Bytes(b) => Ok(*b),
            Size::Text(t) => paddock_types::parse_size(t)
                .map_err(|e| ApiError::bad_request(format!("limits.{what}: {e}"))),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsBody {
    memory: Option<Size>,
    cpus: Option<f64>,
    pids: Option<u64>,
    disk: Option<Size>,
    timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    /// Template name (`default` when absent).
    template: Option<String>,
    #[serde(default)]
    limits: LimitsBody,
    ttl_s: Option<f64>,
    idle_timeout_s: Option<f64>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    key: Option<String>,
}

fn seconds(v: f64, what: &str) -> Result<Duration, ApiError> {
    if !v.is_finite() || v <= 0.0 || v > 365.0 * 86400.0 {
        return Err(ApiError::bad_request(format!(
            "{what} must be a number of seconds above 0 (got {v})"
        )));
    }
    Ok(Duration::from_secs_f64(v))
}

fn timeout_ms(v: u64, what: &str) -> Result<Duration, ApiError> {
    let d = Duration::from_millis(v);
    if v == 0 || d > MAX_TIMEOUT {
        return Err(ApiError::bad_request(format!(
            "{what} must be 1 to {} ms",
            MAX_TIMEOUT.as_millis()
        )));
    }
    Ok(d)
}

fn check_label(s: &str, what: &str) -> Result<(), ApiError> {
    if s.is_empty() || s.len() > 256 || s.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "{what} {s:?} must be 1 to 256 characters without control characters"
        )));
    }
    Ok(())
}

impl CreateBody {
    fn spec(self, manager: &Manager) -> Result<CreateSpec, ApiError> {
        let cfg = manager.config();
        let d = &cfg.defaults;
        let name = self
            .template
            .as_deref()
            .unwrap_or(crate::config::DEFAULT_TEMPLATE);
        let template = cfg.template(name).ok_or_else(|| {
            ApiError::bad_request(format!(
                "unknown template {name:?}; known templates: {}",
                cfg.template_names()
            ))
        })?;
        let mut limits = template.limits.clone();
        if let Some(m) = &self.limits.memory {
            limits.memory_bytes = m.bytes("memory")?;
        }
        if let Some(c) = self.limits.cpus {
            limits.cpu_millicores = cpus_to_millicores(c).ok_or_else(|| {
                ApiError::bad_request(format!("limits.cpus {c} is not 0.01 to 1024"))
            })?;
        }
        if let Some(p) = self.limits.pids {
            limits.pids = p;
        }
        if let Some(disk) = &self.limits.disk {
            limits.disk_bytes = disk.bytes("disk")?;
        }
        crate::config::check_limits(&limits)
            .map_err(|e| ApiError::bad_request(format!("limits: {e}")))?;
        let timeout = match self.limits.timeout_ms {
            Some(v) => timeout_ms(v, "limits.timeout_ms")?,
            None => template.timeout,
        };
        let ttl = match self.ttl_s {
            Some(v) => seconds(v, "ttl_s")?,
            None => d.ttl,
        };
        if ttl > cfg.max_ttl {
            return Err(ApiError::bad_request(format!(
                "ttl_s is more than the server's maximum of {} s",
                cfg.max_ttl.as_secs()
            )));
        }
        let idle_timeout = match self.idle_timeout_s {
            Some(v) => seconds(v, "idle_timeout_s")?,
            None => d.idle_timeout,
        };
        if self.labels.len() > 64 {
            return Err(ApiError::bad_request("at most 64 labels"));
        }
        for (k, v) in &self.labels {
            check_label(k, "label key")?;
            check_label(v, "label value")?;
        }
        if let Some(k) = &self.key {
            check_label(k, "key")?;
        }
        Ok(CreateSpec {
            template: template.name.clone(),
            limits,
            timeout,
            ttl,
            idle_timeout,
            labels: self.labels,
            key: self.key,
        })
    }
}

type TenantExt = Extension<Arc<Tenant>>;

async fn create_sandbox(
    State(state): State<AppState>,
    Extension(tenant): TenantExt,
    JsonBody(body): JsonBody<CreateBody>,
) -> Result<Response, ApiError> {
    let spec = body.spec(&state.manager)?;
    let (entry, created) = state.manager.create(&tenant, spec).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(entry.info())).into_response())
}

/// Decodes `%XX` and `+` in a query component.
fn percent_decode(s: &str) -> Result<String, ApiError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| ApiError::bad_request("bad %-escape in the query"))?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| ApiError::bad_request("the query is not UTF-8"))
}

/// A list's filters: `label=k=v` pairs and at most one `template=NAME`
/// (other parameters are refused).
type ListFilter = (Vec<(String, String)>, Option<String>);

fn label_filter(query: Option<&str>) -> Result<ListFilter, ApiError> {
    let mut out = Vec::new();
    let mut template = None;
    for part in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = part.split_once('=').unwrap_or((part, ""));
        let name = percent_decode(name)?;
        if name == "template" {
            if template.is_some() {
                return Err(ApiError::bad_request("give template= at most once"));
            }
            template = Some(percent_decode(value)?);
            continue;
        }
        if name != "label" {
            return Err(ApiError::bad_request(format!(
                "unknown query parameter {name:?} (use label=KEY=VALUE or template=NAME)"
            )));
        }
        let value = percent_decode(value)?;
        let (k, v) = value
            .split_once('=')
            .or_else(|| value.split_once(':'))
            .ok_or_else(|| ApiError::bad_request("label filters are label=KEY=VALUE"))?;
        out.push((k.to_string(), v.to_string()));
    }
    Ok((out, template))
}

async fn list_sandboxes(
    State(state): State<AppState>,
    Extension(tenant): TenantExt,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let (filter, template) = label_filter(query.as_deref())?;
    if let Some(t) = &template {
        let cfg = state.manager.config();
        if cfg.template(t).is_none() {
            return Err(ApiError::bad_request(format!(
                "unknown template {t:?}; known templates: {}",
                cfg.template_names()
            )));
        }
    }
    let list: Vec<_> = state
        .manager
        .list(&tenant.name, &filter, template.as_deref())
        .iter()
        .map(|e| e.info())
        .collect();
    Ok(Json(json!({ "sandboxes": list })))
}

async fn get_sandbox(
    State(state): State<AppState>,
    Extension(tenant): TenantExt,
    Path(id): Path<String>,
) -> Result<Json<crate::manager::SandboxInfo>, ApiError> {
    Ok(Json(state.manager.get(&tenant.name, &id)?.info()))
}

async fn delete_sandbox(
    State(state): State<AppState>,
    Extension(tenant): TenantExt,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.manager.delete(&tenant.name, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TtlBody {
    ttl_s: f64,
}

async fn extend_ttl(
    State(state): State<AppState>,
    Extension(tenant): TenantExt,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<TtlBody>,
) -> Result<Json<crate::manager::SandboxInfo>, ApiError> {
    let entry = state.manager.get(&tenant.name, &id)?;
    state
        .manager
        .extend(&entry, seconds(body.ttl_s, "ttl_s")?)?;
    Ok(Json(entry.info()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecBody {
    cmd: Vec<String>,
    cwd: Option<String>,
    env: Option<BTreeMap<String, String>>,
    stdin: Option<String>,
    timeout_ms: Option<u64>,
    output_limit: Option<u64>,
    /// `utf8` (default) or `base64`: also give the exact bytes as base64
    /// (`stdout_base64`/`stderr_base64`, and `base64` in stream events).
    encoding: Option<String>,
}

fn wants_sse(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}

fn no_nul(s: &str, what: &str) -> Result<(), ApiError> {
    if s.contains('\0') {
        return Err(ApiError::bad_request(format!("{what} contains a NUL byte")));
    }
    Ok(())
}

async fn exec(
    State(state): State<AppState>,
    Extension(tenant): TenantExt,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ExecBody>,
) -> Result<Response, ApiError> {
    let entry = state.manager.get(&tenant.name, &id)?;
    if body.cmd.is_empty() || body.cmd[0].is_empty() {
        return Err(ApiError::bad_request(
            "cmd must name a program: [\"prog\", \"arg\", ...]",
        ));
    }
    for a in &body.cmd {
        no_nul(a, "cmd")?;
    }
    let mut req = ExecRequest::new(body.cmd);
    if let Some(cwd) = body.cwd {
        no_nul(&cwd, "cwd")?;
        req.cwd = Some(cwd);
    }
    if let Some(env) = body.env {
        let mut vars = Vec::new();
        for (k, v) in env {
            if k.is_empty() || k.contains('=') {
                return Err(ApiError::bad_request(format!("env name {k:?} is invalid")));
            }
            no_nul(&k, "env")?;
            no_nul(&v, "env")?;
            vars.push((k, v));
        }
        req.env = Some(vars);
    }
    req.stdin = body.stdin.map(String::into_bytes);
    req.timeout = match body.timeout_ms {
        Some(v) => timeout_ms(v, "timeout_ms")?,
        None => entry.timeout,
    };
    if let Some(limit) = body.output_limit {
        req.output_limit = limit.min(64 << 20);
    }
    let base64 = match body.encoding.as_deref() {
        None | Some("utf8") | Some("utf-8") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "encoding {other:?} is not utf8 or base64"
            )));
        }
    };
    let active = entry.activate();
    let started = Instant::now();
    if wants_sse(&headers) {
        let exec = match entry.sandbox.exec_stream(req).await {
            Ok(x) => x,
            Err(e) => return Err(state.manager.sandbox_error(&entry, e).await),
        };
        let (tx, rx) = mpsc::channel::<Event>(32);
        let manager = state.manager.clone();
        tokio::spawn(async move {
            let _active = active;
            let mut exec = exec;
            let mut utf8 = Utf8Split {
                base64,
                ..Utf8Split::default()
            };
            if !forward_chunks(&mut exec, &mut utf8, &tx, &manager, &entry, "command").await {
                return;
            }
            let ev = match exec.result().await {
                Ok(r) => {
                    manager.metrics().execution(
                        Latency::Exec,
                        "command",
                        status_name(&r.status),
                        started.elapsed(),
                    );
                    manager.metrics().memory_peak(r.memory_peak_bytes);
                    json_event("result", &r)
                }
                Err(e) => error_event(&manager.sandbox_error(&entry, e).await),
            };
            let _ = tx.send(ev).await;
        });
        return Ok(sse(rx));
    }
    let limit = usize::try_from(req.output_limit).unwrap_or(usize::MAX);
    let r = exec_collect(&entry, req, base64.then_some(limit)).await;
    drop(active);
    match r {
        Ok((r, bytes)) => {
            state.manager.metrics().execution(
                Latency::Exec,
                "command",
                status_name(&r.status),
                started.elapsed(),
            );
            state.manager.metrics().memory_peak(r.memory_peak_bytes);
            let mut v = serde_json::to_value(&r)
                .map_err(|e| ApiError::internal(format!("encoding the result: {e}")))?;
            if let Some((out, err)) = bytes {
                v["stdout_base64"] = json!(base64_encode(&out));
                v["stderr_base64"] = json!(base64_encode(&err));
            }
            Ok(Json(v).into_response())
        }
        Err(e) => Err(state.manager.sandbox_error(&entry, e).await),
    }
}

fn status_name(s: &paddock_types::Status) -> &'static str {
    match s {
        paddock_types::Status::Exited => "exited",
        paddock_types::Status::Signaled => "signaled",
        paddock_types::Status::Timeout => "timeout",
        paddock_types::Status::Oom => "oom",
    }
}

fn json_event<T: serde::Serialize>(name: &str, v: &T) -> Event {
    Event::default()
        .event(name)
        .data(serde_json::to_string(v).unwrap_or_else(|_| "null".into()))
}

fn error_event(e: &ApiError) -> Event {
    json_event("error", &e.body())
}

fn sse(rx: mpsc::Receiver<Event>) -> Response {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|ev| (Ok::<_, Infallible>(ev), rx))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(1)))
        .into_response()
}

/// Exact stdout and stderr bytes, when asked for.
type Kept = Option<(Vec<u8>, Vec<u8>)>;

/// Runs a command to its end; with `keep = Some(limit)` also returns up to
/// `limit` exact bytes of stdout and stderr.
async fn exec_collect(
    entry: &Entry,
    req: ExecRequest,
    keep: Option<usize>,
) -> Result<(paddock_types::RunResult, Kept), paddock_sandbox::SandboxError> {
    let Some(limit) = keep else {
        return entry.sandbox.exec(req).await.map(|r| (r, None));
    };
    let mut exec = entry.sandbox.exec_stream(req).await?;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    while let Some(c) = exec.next_chunk().await? {
        let (buf, data) = match &c {
            Chunk::Stdout(d) => (&mut out, d),
            Chunk::Stderr(d) => (&mut err, d),
            Chunk::Data(_) => continue,
        };
        let room = limit.saturating_sub(buf.len());
        buf.extend_from_slice(&data[..data.len().min(room)]);
    }
    let r = exec.result().await?;
    Ok((r, Some((out, err))))
}

/// Standard base64 with padding.
fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for group in data.chunks(3) {
        let b = [
            group[0],
            group.get(1).copied().unwrap_or(0),
            group.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= group.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Sends `stream`'s chunks to an SSE client until the stream ends. `false`
/// when the client went away (dropping the stream then cancels the command
/// or run inside) or the sandbox failed (an error event was sent).
async fn forward_chunks<S: paddock_sandbox::ChunkStream>(
    stream: &mut S,
    utf8: &mut Utf8Split,
    tx: &mpsc::Sender<Event>,
    manager: &Manager,
    entry: &Entry,
    what: &str,
) -> bool {
    loop {
        let chunk = tokio::select! {
            _ = tx.closed() => {
                tracing::info!(id = %entry.id, "client went away; the {what} is cancelled");
                return false;
            }
            c = stream.next_chunk() => c,
        };
        match chunk {
            Ok(Some(c)) => {
                if let Some(ev) = utf8.event(c)
                    && tx.send(ev).await.is_err()
                {
                    return false;
                }
            }
            Ok(None) => {
                for ev in utf8.flush() {
                    if tx.send(ev).await.is_err() {
                        return false;
                    }
                }
                return true;
            }
            Err(e) => {
                let err = manager.sandbox_error(entry, e).await;
                let _ = tx.send(error_event(&err)).await;
                return false;
            }
        }
    }
}

/// Turns output chunks into `stdout`/`stderr` events of whole UTF-8
/// characters (a character split between chunks is held back). In base64
/// mode every chunk goes out at once with its exact bytes as `base64`.
#[derive(Default)]
struct Utf8Split {
    out: Vec<u8>,
    err: Vec<u8>,
    base64: bool,
}

impl Utf8Split {
    /// What is still held back (an incomplete character at the end), lossily.
    fn flush(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        for (name, buf) in [("stdout", &mut self.out), ("stderr", &mut self.err)] {
            if !buf.is_empty() {
                let text = String::from_utf8_lossy(buf).into_owned();
                buf.clear();
                events.push(json_event(name, &json!({ "data": text })));
            }
        }
        events
    }

    fn event(&mut self, c: Chunk) -> Option<Event> {
        let (name, buf, data) = match c {
            Chunk::Stdout(d) => ("stdout", &mut self.out, d),
            Chunk::Stderr(d) => ("stderr", &mut self.err, d),
            Chunk::Data(_) => return None,
        };
        if self.base64 {
            return Some(json_event(
                name,
                &json!({ "data": String::from_utf8_lossy(&data), "base64": base64_encode(&data) }),
            ));
        }
        buf.extend_from_slice(&data);
        let keep = match std::str::from_utf8(buf) {
            Ok(_) => 0,
            Err(e) if e.error_len().is_none() => buf.len() - e.valid_up_to(),
            Err(_) => 0,
        };
        let cut = buf.len() - keep;
        let text = String::from_utf8_lossy(&buf[..cut]).into_owned();
        buf.drain(..cut);
        if text.is_empty() {
            return None;
        }
        Some(json_event(name, &json!({ "data": text })))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContextBody {
    language: String,
}

async fn create_context(
    State(state): State<AppState>,
    Extension(tenant): TenantExt,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ContextBody>,
) -> Result<Response, ApiError> {
    let entry = state.manager.get(&tenant.name, &id)?;
    let _active = entry.activate();
    match entry.sandbox.create_context(&body.language).await {
        Ok(ctx) => {
            entry.add_context(ctx.id(), ctx.language());
            Ok((
                StatusCode::CREATED,
                Json(json!({"id": ctx.id(), "language": ctx.language()})),
            )
                .into_response())
        }
        Err(e) => Err(state.manager.sandbox_error(&entry, e).await),
    }
}

fn context_of(entry: &Entry, cid: &str) -> Result<(u64, String), ApiError> {
    let n: u64 = cid
        .parse()
        .map_err(|_| ApiError::not_found(format!("no context {cid} in sandbox {}", entry.id)))?;
    let lang = entry
        .context_language(n)
        .ok_or_else(|| ApiError::not_found(format!("no context {cid} in sandbox {}", entry.id)))?;
    Ok((n, lang))
}

async fn delete_context(
    State(state): State<AppState>,
    Extension(tenant): TenantExt,
    Path((id, cid)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let entry = state.manager.get(&tenant.name, &id)?;
    let (n, lang) = context_of(&entry, &cid)?;
    let _active = entry.activate();
    match entry.sandbox.context(n, &lang).delete().await {
        Ok(()) => {
            entry.remove_context(n);
            Ok(StatusCode::NO_CONTENT)
        }
        Err(e) => {
            if e.agent_kind() == Some(paddock_sandbox::ErrorKind::NotFound) {
                entry.remove_context(n);
            }
            Err(state.manager.sandbox_error(&entry, e).await)
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunBody {
    code: String,
    timeout_ms: Option<u64>,
}

async fn run_code(
    State(state): State<AppState>,
    Extension(tenant): TenantExt,
    Path((id, cid)): Path<(String, String)>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<RunBody>,
) -> Result<Response, ApiError> {
    let entry = state.manager.get(&tenant.name, &id)?;
    let (n, lang) = context_of(&entry, &cid)?;
    let timeout = match body.timeout_ms {
        Some(v) => timeout_ms(v, "timeout_ms")?,
        None => entry.timeout,
    };
    let active = entry.activate();
    let started = Instant::now();
    let manager = state.manager.clone();
    if wants_sse(&headers) {
        let (tx, rx) = mpsc::channel::<Event>(32);
        let (ready_tx, ready_rx) = oneshot::channel::<Result<(), ApiError>>();
        let entry2 = entry.clone();
        tokio::spawn(async move {
            let _active = active;
            let entry = entry2;
            let ctx = entry.sandbox.context(n, &lang);
            let mut run = match ctx
                .run_stream(&body.code, timeout, paddock_sandbox::DEFAULT_OUTPUT_LIMIT)
                .await
            {
                Ok(r) => {
                    let _ = ready_tx.send(Ok(()));
                    r
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(manager.sandbox_error(&entry, e).await));
                    return;
                }
            };
            let mut utf8 = Utf8Split::default();
            if !forward_chunks(&mut run, &mut utf8, &tx, &manager, &entry, "run").await {
                return;
            }
            let ev = match run.result().await {
                Ok(r) => {
                    manager.metrics().execution(
                        Latency::Run,
                        &lang,
                        run_status(&r.status),
                        started.elapsed(),
                    );
                    json_event("result", &r)
                }
                Err(e) => error_event(&manager.sandbox_error(&entry, e).await),
            };
            let _ = tx.send(ev).await;
        });
        return match ready_rx.await {
            Ok(Ok(())) => Ok(sse(rx)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ApiError::internal("the run ended before it started")),
        };
    }
    let r = entry
        .sandbox
        .context(n, &lang)
        .run(&body.code, timeout)
        .await;
    drop(active);
    match r {
        Ok(r) => {
            manager.metrics().execution(
                Latency::Run,
                &lang,
                run_status(&r.status),
                started.elapsed(),
            );
            Ok(Json(r).into_response())
        }
        Err(e) => Err(manager.sandbox_error(&entry, e).await),
    }
}

fn run_status(s: &paddock_sandbox::RunStatus) -> &'static str {
    match s {
        paddock_sandbox::RunStatus::Ok => "ok",
        paddock_sandbox::RunStatus::Error => "error",
        paddock_sandbox::RunStatus::Timeout => "timeout",
    }
}

/// `/`-rooted path inside the sandbox, refusing `..` and NUL.
fn sandbox_path(p: &str) -> Result<String, ApiError> {
    if p.contains('\0') {
        return Err(ApiError::bad_request("the path contains a NUL byte"));
    }
    if p.split('/').any(|c| c == "..") {
        return Err(ApiError::bad_request("the path may not contain `..`"));
    }
    Ok(format!("/{}", p.trim_start_matches('/')))
}

fn has_flag(query: &Option<String>, flag: &str) -> bool {
    query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .any(|p| p == flag || p.starts_with(&format!("{flag}=")))
}

async fn list_or_read(
    state: &AppState,
    tenant: &Tenant,
    id: &str,
    path: &str,
    query: &Option<String>,
) -> Result<Response, ApiError> {
    let entry = state.manager.get(&tenant.name, id)?;
    let path = sandbox_path(path)?;
    let _active = entry.activate();
    if has_flag(query, "list") {
        return match entry.sandbox.list_dir(&path).await {
            Ok(entries) => Ok(Json(json!({"path": path, "entries": entries})).into_response()),
            Err(e) => Err(state.manager.sandbox_error(&entry, e).await),
        };
    }
    match entry.sandbox.read_file(&path).await {
        Ok(data) => Ok((
            [(header::CONTENT_TYPE, "application/octet-stream")],
            Body::from(data),
        )
            .into_response()),
        Err(e) => Err(state.manager.sandbox_error(&entry, e).await),
    }
}

async fn get_root(
    State(state): State<AppState>,
    Extension(tenant): TenantExt,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    list_or_read(
        &state,
        &tenant,
        &id,
        "/",
        &Some(query.unwrap_or_else(|| "list".into())),
    )
    .await
}

async fn get_file(
    State(state): State<AppState>,
    Extension(tenant): TenantExt,
    Path((id, path)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    list_or_read(&state, &tenant, &id, &path, &query).await
}

async fn put_file(
    State(state): State<AppState>,
    Extension(tenant): TenantExt,
    Path((id, path)): Path<(String, String)>,
    RawBody(data): RawBody,
) -> Result<Response, ApiError> {
    let entry = state.manager.get(&tenant.name, &id)?;
    let path = sandbox_path(&path)?;
    if path.ends_with('/') {
        return Err(ApiError::bad_request("a file path may not end with /"));
    }
    let _active = entry.activate();
    if let Some((parent, _)) = path.rsplit_once('/')
        && !parent.is_empty()
        && let Err(e) = entry.sandbox.mkdir(parent, true).await
        && e.agent_kind() != Some(paddock_sandbox::ErrorKind::AlreadyExists)
    {
        return Err(state.manager.sandbox_error(&entry, e).await);
    }
    match entry.sandbox.write_file(&path, &data).await {
        Ok(info) => Ok((
            StatusCode::CREATED,
            Json(json!({"path": path, "size": info.size})),
        )
            .into_response()),
        Err(e) => Err(state.manager.sandbox_error(&entry, e).await),
    }
}

async fn delete_file(
    State(state): State<AppState>,
    Extension(tenant): TenantExt,
    Path((id, path)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<StatusCode, ApiError> {
    let entry = state.manager.get(&tenant.name, &id)?;
    let path = sandbox_path(&path)?;
    if path == "/" {
        return Err(ApiError::bad_request("refusing to remove /"));
    }
    let _active = entry.activate();
    match entry
        .sandbox
        .remove(&path, has_flag(&query, "recursive"))
        .await
    {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(e) => Err(state.manager.sandbox_error(&entry, e).await),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FunctionBody {
    code: String,
    #[serde(default)]
    input: Value,
    memory_mb: Option<u64>,
    timeout_ms: Option<u64>,
    #[serde(default)]
    debug: bool,
}

async fn pool(state: &AppState) -> Result<Arc<Pool>, ApiError> {
    let manager = state.manager.clone();
    state
        .pool
        .get_or_try_init(|| async move {
            let cfg = manager.config();
            let mut pc = PoolConfig::new(cfg.agent_exe.clone());
            pc.workers = cfg.function_workers;
            tokio::task::spawn_blocking(move || Pool::new(pc))
                .await
                .map_err(|e| ApiError::internal(format!("starting the function pool: {e}")))?
                .map(Arc::new)
                .map_err(|e| ApiError::unavailable("functions_unavailable", e.to_string()))
        })
        .await
        .cloned()
}

async fn run_function(
    State(state): State<AppState>,
    Extension(_tenant): TenantExt,
    JsonBody(body): JsonBody<FunctionBody>,
) -> Result<Response, ApiError> {
    if state.manager.shutting_down() {
        return Err(ApiError::unavailable(
            "shutting_down",
            "the server is shutting down",
        ));
    }
    let mut call = Call::new(body.code, body.input.to_string());
    if let Some(mb) = body.memory_mb {
        call.options.memory_bytes =
            usize::try_from(mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
    }
    if let Some(ms) = body.timeout_ms {
        call.options.timeout = timeout_ms(ms, "timeout_ms")?;
    }
    call.options.debug = body.debug;
    let pool = pool(&state).await?;
    let (tx, rx) = oneshot::channel();
    let started = Instant::now();
    let submitted = pool.submit(call, move |r| {
        let _ = tx.send(r);
    });
    let r = match submitted {
        Ok(()) => rx.await.unwrap_or(Err(FunctionsError::ShutDown)),
        Err(e) => Err(e),
    };
    match r {
        Ok(r) => {
            state.manager.metrics().execution(
                Latency::Function,
                "javascript",
                r.status.as_str(),
                started.elapsed(),
            );
            Ok(Json(r).into_response())
        }
        Err(e) => Err(match e {
            FunctionsError::Busy { .. } => ApiError::unavailable("busy", e.to_string()),
            FunctionsError::InvalidCall(_) => ApiError::bad_request(e.to_string()),
            FunctionsError::WorkerStart(_) | FunctionsError::ShutDown => {
                ApiError::unavailable("functions_unavailable", e.to_string())
            }
            FunctionsError::WorkerCrashed(_) => ApiError::internal(e.to_string()),
        }),
    }
}

async fn stats(State(state): State<AppState>, Extension(tenant): TenantExt) -> Json<Value> {
    let mut v = state.manager.metrics().to_json();
    let (n, mem) = state.manager.usage(&tenant.name);
    v["tenant"] = json!({
        "name": tenant.name,
        "sandboxes": n,
        "memory_bytes": mem,
        "max_sandboxes": tenant.max_sandboxes,
        "max_memory_bytes": tenant.max_memory,
        "rate": tenant.rate,
        "burst": tenant.burst,
    });
    v["key_locks"] = json!(state.manager.key_locks());
    if let Some(p) = state.pool.get() {
        let s = p.stats();
        v["functions"] = json!({
            "workers": s.workers,
            "workers_busy": s.workers_busy,
            "queue_depth": s.queue_depth,
            "queue_capacity": s.queue_capacity,
            "submitted": s.submitted,
            "rejected_busy": s.rejected_busy,
            "ok": s.ok, "error": s.error, "timeout": s.timeout, "oom": s.oom,
            "worker_crashes": s.worker_crashes,
        });
    }
    Json(v)
}

async fn healthz(State(state): State<AppState>) -> Response {
    if state.manager.shutting_down() {
        return ApiError::unavailable("shutting_down", "the server is shutting down")
            .into_response();
    }
    Json(json!({"status": "ok", "sandboxes": state.manager.live()})).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.manager.metrics().render(),
    )
        .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_lists_every_route() {
        let doc: Value = serde_json::from_str(OPENAPI).expect("valid JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        let mut listed = 0;
        for (method, path) in ROUTES {
            assert!(
                doc["paths"][path][method].is_object(),
                "{method} {path} is missing from openapi.json"
            );
            listed += 1;
        }
        let documented: usize = doc["paths"]
            .as_object()
            .expect("paths")
            .values()
            .map(|v| v.as_object().map_or(0, |o| o.len()))
            .sum();
        assert_eq!(
            documented, listed,
            "openapi.json documents no route that does not exist"
        );
    }

    #[test]
    fn label_filters_parse() {
        assert_eq!(label_filter(None).unwrap(), (vec![], None));
        assert_eq!(
            label_filter(Some("label=a%3Db&template=tiny&label=c=d+e")).unwrap(),
            (
                vec![("a".into(), "b".into()), ("c".into(), "d e".into())],
                Some("tiny".to_string())
            )
        );
        assert!(label_filter(Some("template=a&template=b")).is_err());
        assert!(label_filter(Some("other=1")).is_err());
        assert!(label_filter(Some("label=novalue")).is_err());
        assert!(label_filter(Some("label=a%zz")).is_err());
        assert!(label_filter(Some("label=a%ff%fe=b")).is_err());
    }

    #[test]
    fn paths_are_rooted_and_dotdot_is_refused() {
        assert_eq!(sandbox_path("home/user/x").unwrap(), "/home/user/x");
        assert_eq!(sandbox_path("/tmp").unwrap(), "/tmp");
        assert!(sandbox_path("home/../etc").is_err());
        assert!(sandbox_path("a\u{0}b").is_err());
    }

    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(plain.as_bytes()), enc);
        }
        assert_eq!(base64_encode(&[0xff, 0xfe, b'A']), "//5B");
    }

    #[test]
    fn output_events_keep_utf8_characters_whole() {
        let mut split = Utf8Split::default();
        let euro = "€".as_bytes();
        assert!(split.event(Chunk::Stdout(euro[..1].to_vec())).is_none());
        assert!(split.event(Chunk::Stdout(euro[1..].to_vec())).is_some());
        assert!(split.out.is_empty());
        assert!(split.event(Chunk::Stdout(euro[..2].to_vec())).is_none());
        assert_eq!(
            split.flush().len(),
            1,
            "a cut character is flushed at the end"
        );
        assert!(split.out.is_empty());
        assert!(
            split.event(Chunk::Stderr(vec![0xff])).is_some(),
            "invalid bytes go out lossily"
        );
    }
}
