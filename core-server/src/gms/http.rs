//! The GMS HTTP/JSON API, for mobile and web clients (`[gms] http_listen`).
//!
//! ```text
//! POST /gms/v1/tenants/{tenant}/access   {"group", "caller", "user_data"?, "code_len"?}
//!   201 {"booking", "number", "code"?, "expires_ms"}
//! POST /gms/v1/tenants/{tenant}/match    {"number", "caller"?, "code"?}
//!   200 {"booking", "group", "caller", "user_data"}
//! ```
//!
//! Every request names its account: `X-Deskmux-Account: <agent>` and `Authorization: Bearer
//! <secret>`, a credential of that tenant made with `core-server creds` (an API key, checked
//! with a keyed hash; a password works too but costs an argon2 check per request), under the
//! same lockout as logins. Errors are `{"error", "retry"}` where `retry` is the protocol's retry
//! class: `not_sent` (503: the pool is exhausted or the server busy; ask again later or ask the
//! other site), `outcome_unknown` (500), or `rejected` (400, 401, 404: do not repeat it as is).
//!
//! Bodies are at most 64 KiB; user data is held to the interaction-property caps.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::{AccessMatch, AccessRequest, GmsError};
use crate::auth::{Attempt, Proof, Verdict, secret::Secret};
use crate::server::Shared;

/// Largest request body accepted.
const MAX_BODY: usize = 64 * 1024;

/// Serve the API on `listener` until the process ends.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let router = axum::Router::new()
        .route("/gms/v1/tenants/{tenant}/access", post(access))
        .route("/gms/v1/tenants/{tenant}/match", post(match_call))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared);
    let app = router.into_make_service_with_connect_info::<SocketAddr>();
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!("gms http api stopped: {e}");
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessBody {
    group: String,
    caller: String,
    #[serde(default)]
    user_data: serde_json::Map<String, Value>,
    code_len: Option<u8>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchBody {
    number: String,
    caller: Option<String>,
    code: Option<String>,
}

fn error(status: StatusCode, retry: &str, msg: &str) -> Response {
    (status, Json(json!({ "error": msg, "retry": retry }))).into_response()
}

fn gms_error(e: &GmsError) -> Response {
    let msg = e.to_string();
    match e {
        GmsError::Malformed(_) => error(StatusCode::BAD_REQUEST, "rejected", &msg),
        GmsError::UnknownGroup(_) | GmsError::NotFound => {
            error(StatusCode::NOT_FOUND, "rejected", &msg)
        }
        GmsError::Exhausted(_) | GmsError::Overloaded => {
            error(StatusCode::SERVICE_UNAVAILABLE, "not_sent", &msg)
        }
        GmsError::Storage {
            maybe_applied: false,
            ..
        } => error(StatusCode::SERVICE_UNAVAILABLE, "not_sent", &msg),
        GmsError::Storage { .. } => {
            error(StatusCode::INTERNAL_SERVER_ERROR, "outcome_unknown", &msg)
        }
    }
}

/// The account of the request, checked like a login; `Err` is the answer to send.
async fn authenticate(
    shared: &Shared,
    tenant: u32,
    h: &HeaderMap,
    source: SocketAddr,
) -> Result<(), Response> {
    let unauthorized = || {
        error(
            StatusCode::UNAUTHORIZED,
            "rejected",
            "unknown account or wrong secret",
        )
    };
    let account = h
        .get("x-deskmux-account")
        .and_then(|v| v.to_str().ok())
        .filter(|a| !a.is_empty() && a.len() <= 128)
        .ok_or_else(unauthorized)?;
    let secret = h
        .get("authorization")
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .ok_or_else(unauthorized)?;
    if !shared.tenant_known(tenant) {
        return Err(unauthorized());
    }
    let Some(auth) = shared.auth.get() else {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_sent",
            "not primary",
        ));
    };
    let (tx, rx) = oneshot::channel();
    auth.check(
        Attempt {
            tenant,
            agent: account.to_string(),
            proof: Proof::Secret(Secret::new(secret.to_vec())),
            source: Some(source.ip()),
        },
        move |v| {
            let _ = tx.send(v);
        },
    );
    match rx.await {
        Ok(Verdict::Ok { .. }) => Ok(()),
        Ok(Verdict::Busy) => Err(error(StatusCode::SERVICE_UNAVAILABLE, "not_sent", "busy")),
        Ok(Verdict::Unavailable) | Err(_) => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_sent",
            "credentials unavailable",
        )),
        Ok(Verdict::LockedOut(d)) => Err(error(
            StatusCode::UNAUTHORIZED,
            "rejected",
            &format!(
                "locked out after failed attempts; retry in {} ms",
                d.as_millis()
            ),
        )),
        Ok(Verdict::Refused) => Err(unauthorized()),
    }
}

/// What every call does first: its JSON body, its account, and the service (a standby has
/// none until it takes over). `Err` is the answer to send.
async fn admit<T>(
    shared: &Shared,
    tenant: u32,
    h: &HeaderMap,
    source: SocketAddr,
    body: Result<Json<T>, axum::extract::rejection::JsonRejection>,
) -> Result<(T, super::Gms), Response> {
    let Json(b) = body.map_err(|e| error(StatusCode::BAD_REQUEST, "rejected", &e.body_text()))?;
    authenticate(shared, tenant, h, source).await?;
    let gms = shared.gms.get().cloned().ok_or_else(|| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_sent",
            "no gms here (not primary)",
        )
    })?;
    Ok((b, gms))
}

fn deadline(shared: &Shared) -> Instant {
    Instant::now() + Duration::from_millis(shared.cfg.request_timeout_ms.into())
}

async fn access(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<u32>,
    ConnectInfo(source): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    body: Result<Json<AccessBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let (b, gms) = match admit(&shared, tenant, &h, source, body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let mut user_data = Vec::with_capacity(b.user_data.len());
    for (k, v) in b.user_data {
        match v {
            Value::String(s) => user_data.push((k, s)),
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "rejected",
                    "user_data values must be strings",
                );
            }
        }
    }
    let (tx, rx) = oneshot::channel();
    gms.request(
        AccessRequest {
            tenant,
            group: b.group,
            caller: b.caller,
            user_data,
            code_len: b.code_len,
        },
        deadline(&shared),
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    match rx.await {
        Ok(Ok(bk)) => (
            StatusCode::CREATED,
            Json(json!({
                "booking": bk.id,
                "number": bk.number,
                "code": bk.code,
                "expires_ms": bk.expires_ms,
            })),
        )
            .into_response(),
        Ok(Err(e)) => gms_error(&e),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_sent",
            "storage stopped",
        ),
    }
}

async fn match_call(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<u32>,
    ConnectInfo(source): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    body: Result<Json<MatchBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let (b, gms) = match admit(&shared, tenant, &h, source, body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let (tx, rx) = oneshot::channel();
    gms.match_call(
        AccessMatch {
            tenant,
            number: b.number,
            caller: b.caller,
            code: b.code,
        },
        deadline(&shared),
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    match rx.await {
        Ok(Ok(m)) => {
            let user_data: serde_json::Map<String, Value> = m
                .user_data
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect();
            (
                StatusCode::OK,
                Json(json!({
                    "booking": m.id,
                    "group": m.group,
                    "caller": m.caller,
                    "user_data": user_data,
                })),
            )
                .into_response()
        }
        Ok(Err(e)) => gms_error(&e),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_sent",
            "storage stopped",
        ),
    }
}
