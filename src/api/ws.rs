//! Batches over a WebSocket at `/ws`: a client sends `{"type":"process","id",…}` messages
//! (the `/process` body plus an `id`), and gets `task` and `done` messages tagged with that
//! id as results complete; several batches may run at once, `{"type":"cancel","id"}` stops
//! one, and a socket that closes stops all of its own.
//!
//! The same rules as `/process`: a client key (in a header, or `{"type":"auth","key"}` as
//! the first message), the inbound rate limit per batch, MAX_BODY_BYTES per message,
//! MAX_TASKS per batch, and the connection idle timeout. Bad messages get an `error`
//! message on the socket; only auth failures (1008) and oversize messages (1009) close it.

use std::{collections::HashMap, sync::Arc};

use futures::{SinkExt, StreamExt};
use poem::{
    handler,
    web::{
        websocket::{CloseCode, Message, WebSocket, WebSocketConfig, WebSocketStream},
        Data,
    },
    IntoResponse, Request, Response,
};
use poem_openapi::types::ParseFromJSON;
use serde_json::{json, Map, Value};
use tokio::{sync::mpsc, task::AbortHandle};
use tracing::Instrument;

use super::{
    auth::{client_key, presented_key},
    batch::{Progress, Update},
    dto::{ProcessBody, PROCESS_SHAPE},
    errors::{ApiError, AuthError, ErrorCode},
    validate::MAX_ID_CHARS,
    AppState,
};
use crate::context::RequestCtx;

/// Batches one socket may have in flight.
pub const MAX_BATCHES: usize = 16;
/// Messages queued for a slow reader before the batches wait for it.
const OUTBOX: usize = 64;

/// What every socket upgrade (`/ws`, `/graphql/ws`) settles first: a key in a header is
/// checked before the upgrade (`Err`: answer 401); without one, and with keys
/// configured, the socket must authenticate in its first message.
pub(super) struct Upgrade {
    /// Authenticated already (a valid key in a header, or no keys configured).
    pub authed: bool,
    /// Who the socket counts against for the inbound rate limit.
    pub client: String,
    /// Messages and frames bounded by MAX_BODY_BYTES.
    pub config: WebSocketConfig,
}

impl Upgrade {
    pub(super) fn check(app: &AppState, req: &Request) -> Result<Self, AuthError> {
        let authed = match presented_key(req) {
            Some(key) => {
                app.authenticate_key(Some(key))?;
                true
            }
            None => app.config.api_keys.is_empty(),
        };
        let mut config = WebSocketConfig::default();
        config.max_message_size = Some(app.config.max_body_bytes);
        config.max_frame_size = Some(app.config.max_body_bytes);
        Ok(Upgrade {
            authed,
            client: client_key(req),
            config,
        })
    }
}

/// `GET /ws`: upgrades to the batch protocol.
#[handler]
pub(super) async fn ws(req: &Request, upgrade: WebSocket, app: Data<&Arc<AppState>>) -> Response {
    let app = app.0.clone();
    let start = match Upgrade::check(&app, req) {
        Ok(start) => start,
        Err(e) => return ApiError::from(e).into_response(),
    };
    upgrade
        .config(start.config)
        .on_upgrade(move |socket| Session::new(app, start.client, start.authed).run(socket))
        .into_response()
}

/// One socket: who it is, and its batches in flight by id.
struct Session {
    app: Arc<AppState>,
    client: String,
    authed: bool,
    batches: HashMap<String, AbortHandle>,
}

/// What the session does after a message.
enum Next {
    Continue,
    Close(CloseCode, &'static str),
}

fn error(id: Option<&Value>, code: ErrorCode, message: &str) -> Message {
    Message::text(
        json!({"type": "error", "id": id, "code": code.as_str(), "error": message}).to_string(),
    )
}

fn api_error(id: Option<&Value>, e: ApiError) -> Message {
    let body = e.into_body().0;
    error(id, body.code, &body.error)
}

/// `{"type":…,"id":…,"<field>":<json>}` without re-parsing what is already JSON text.
fn tagged(kind: &str, id: &Value, field: &str, json: &str) -> Message {
    Message::text(format!(
        "{{\"type\":\"{kind}\",\"id\":{id},\"{field}\":{json}}}"
    ))
}

impl Session {
    fn new(app: Arc<AppState>, client: String, authed: bool) -> Self {
        Session {
            app,
            client,
            authed,
            batches: HashMap::new(),
        }
    }

    async fn run(mut self, socket: WebSocketStream) {
        let (mut sink, mut source) = socket.split();
        // One writer: batches and replies queue for it. A client that stops reading fills
        // the queue, and then the session stops reading it too: bounded either way.
        let (out, mut outbox) = mpsc::channel::<Message>(OUTBOX);
        let writer = tokio::spawn(async move {
            while let Some(message) = outbox.recv().await {
                let last = matches!(message, Message::Close(_));
                if sink.send(message).await.is_err() || last {
                    break;
                }
            }
        });
        let (finished, mut finished_ids) = mpsc::channel::<String>(MAX_BATCHES);
        let idle = self.app.config.connections.idle_timeout;
        let close = loop {
            let next = tokio::select! {
                incoming = source.next() => match incoming {
                    None | Some(Ok(Message::Close(_))) => break None,
                    // Over MAX_BODY_BYTES, or a broken frame.
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "websocket read failed");
                        break Some((CloseCode::Size, "message too big or malformed"));
                    }
                    Some(Ok(Message::Text(text))) => self.message(&text, &out, &finished).await,
                    Some(Ok(Message::Binary(_))) => {
                        let m = error(None, ErrorCode::InvalidBody, "send JSON text messages, not binary");
                        let _ = out.send(m).await;
                        Next::Continue
                    }
                    Some(Ok(_)) => Next::Continue, // ping / pong
                },
                Some(id) = finished_ids.recv() => {
                    self.batches.remove(&id);
                    Next::Continue
                }
                () = tokio::time::sleep(idle), if self.batches.is_empty() => {
                    Next::Close(CloseCode::Normal, "idle")
                }
            };
            if let Next::Close(code, why) = next {
                break Some((code, why));
            }
        };
        // The client is gone or is being closed: its batches stop (counted as cancelled).
        for batch in self.batches.values() {
            batch.abort();
        }
        if let Some((code, why)) = close {
            let _ = out.send(Message::close_with(code, why)).await;
        }
        drop(out);
        let abort = writer.abort_handle();
        if tokio::time::timeout(std::time::Duration::from_secs(5), writer)
            .await
            .is_err()
        {
            abort.abort();
        }
    }

    async fn message(
        &mut self,
        text: &str,
        out: &mpsc::Sender<Message>,
        finished: &mpsc::Sender<String>,
    ) -> Next {
        let Ok(Value::Object(mut msg)) = serde_json::from_str::<Value>(text) else {
            let m = error(
                None,
                ErrorCode::InvalidBody,
                "a message is a JSON object with a type: auth, process or cancel",
            );
            let _ = out.send(m).await;
            return Next::Continue;
        };
        let kind = msg.remove("type");
        let id = msg.remove("id");
        let (reply, next) = match kind.as_ref().and_then(Value::as_str) {
            Some("auth") => {
                let key = msg.get("key").and_then(Value::as_str);
                if self.app.authenticate_key(key).is_err() {
                    let m = error(None, ErrorCode::Unauthorized, "the API key is not valid");
                    (Some(m), Next::Close(CloseCode::Policy, "unauthorized"))
                } else {
                    self.authed = true;
                    if let Some(key) = key {
                        self.client = format!("key:{key}");
                    }
                    (None, Next::Continue)
                }
            }
            _ if !self.authed => (
                Some(error(
                    id.as_ref(),
                    ErrorCode::Unauthorized,
                    "a valid API key is required: send {\"type\":\"auth\",\"key\":…} first",
                )),
                Next::Close(CloseCode::Policy, "unauthorized"),
            ),
            Some("process") => (
                self.start(id, msg, out, finished).await.err(),
                Next::Continue,
            ),
            Some("cancel") => {
                let key = id.as_ref().map(Value::to_string).unwrap_or_default();
                let m = match self.batches.remove(&key) {
                    Some(batch) => {
                        batch.abort();
                        Message::text(json!({"type": "cancelled", "id": id}).to_string())
                    }
                    None => error(
                        id.as_ref(),
                        ErrorCode::NotFound,
                        "no batch with this id is running",
                    ),
                };
                (Some(m), Next::Continue)
            }
            _ => (
                Some(error(
                    id.as_ref(),
                    ErrorCode::UnknownMessage,
                    "type must be auth, process or cancel",
                )),
                Next::Continue,
            ),
        };
        if let Some(m) = reply {
            let _ = out.send(m).await;
        }
        next
    }

    /// Starts the batch of a `process` message, or says why not.
    async fn start(
        &mut self,
        id: Option<Value>,
        body: Map<String, Value>,
        out: &mpsc::Sender<Message>,
        finished: &mpsc::Sender<String>,
    ) -> Result<(), Message> {
        let id = match id {
            Some(id @ Value::String(_)) | Some(id @ Value::Number(_))
                if id.to_string().chars().count() <= MAX_ID_CHARS =>
            {
                id
            }
            other => {
                return Err(error(
                    other.as_ref(),
                    ErrorCode::InvalidBody,
                    "id must be a string or a number of at most 128 characters",
                ))
            }
        };
        let key = id.to_string();
        if self.batches.contains_key(&key) {
            return Err(error(
                Some(&id),
                ErrorCode::DuplicateBatchId,
                "a batch with this id is already running on this socket",
            ));
        }
        if self.batches.len() >= MAX_BATCHES {
            return Err(error(
                Some(&id),
                ErrorCode::TooManyBatches,
                "at most 16 batches may run at once on one socket",
            ));
        }
        self.app
            .admit_client(&self.client)
            .await
            .map_err(|e| api_error(Some(&id), e))?;
        let request = ProcessBody::parse_from_json(Some(Value::Object(body)))
            .map_err(|_| error(Some(&id), ErrorCode::InvalidBody, PROCESS_SHAPE))?
            .0;
        let app = self.app.clone();
        let priority = request.priority().unwrap_or_default();
        let ctx = RequestCtx::new(app.config.request_timeout, true, Arc::default())
            .with_priority(priority);
        let (out, finished) = (out.clone(), finished.clone());
        let span = tracing::info_span!(
            "WS /ws process",
            otel.kind = "server",
            http.route = "/ws",
            batch = key.as_str(),
        );
        let batch_key = key.clone();
        let batch = async move {
            match app.prepare(request, &ctx).await {
                Err(e) => {
                    let _ = out.send(api_error(Some(&id), e)).await;
                }
                Ok(prepared) => {
                    let mut progress = Progress::new(app, prepared, ctx);
                    loop {
                        let (update, more) = progress.next().await;
                        let message = match update {
                            Update::Task(_) => tagged("task", &id, "result", &update.json()),
                            Update::Done(_) => tagged("done", &id, "body", &update.json()),
                        };
                        if out.send(message).await.is_err() || !more {
                            break;
                        }
                    }
                }
            }
            let _ = finished.send(batch_key).await;
        };
        let handle = tokio::spawn(batch.instrument(span));
        self.batches.insert(key, handle.abort_handle());
        Ok(())
    }
}
