//! The edge: what every request goes through once — the server span, the header and body
//! limits, error normalization, the trace id on errors, and request metrics.

use std::sync::Arc;

use poem::{Endpoint, Request};

use super::{
    errors::{self, ErrorCode},
    lane,
    passage::Passage,
    AppState,
};

/// Everything every request goes through, once.
pub(super) async fn edge<E: Endpoint>(
    ep: &E,
    mut req: Request,
    state: &Arc<AppState>,
) -> poem::Response {
    use tracing::Instrument;

    let passage = Passage::open(
        req.method().clone(),
        req.uri().path(),
        req.header("traceparent"),
    );
    req.extensions_mut().insert(passage.agent_time.clone());
    let max_body = state.config.max_body_bytes;
    let header_bytes = errors::head_bytes(
        req.headers()
            .iter()
            .map(|(k, v)| (k.as_str().len(), v.len())),
        req.uri().path_and_query().map_or(1, |pq| pq.as_str().len()),
    );
    let max_headers = state.config.max_header_bytes;
    // Boxed, as is each way on below: the futures behind them are kilobytes, and a future
    // held inline is copied whole each time the one holding it moves.
    let resp = Box::pin(async {
        if header_bytes > max_headers {
            return errors::error_response(
                ErrorCode::HeadersTooLarge,
                format!("request line and headers exceed {max_headers} bytes (MAX_HEADER_BYTES)"),
            );
        }
        let operation = |req| Box::pin(errors::normalize(ep, req));
        match errors::limit_body(req, max_body, state.config.body_read_timeout).await {
            Ok((req, body)) if lane::wants(&req) => {
                match Box::pin(lane::serve(state, req, &body)).await {
                    Ok(resp) => resp,
                    Err(req) => operation(req).await,
                }
            }
            Ok((req, _)) => operation(req).await,
            Err(resp) => resp,
        }
    })
    .instrument(passage.span.clone())
    .await;
    passage.finish(state, resp).await
}
