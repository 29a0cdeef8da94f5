//! Who may come in: client keys, the admin key, and the inbound rate limit.

use poem_openapi::{
    auth::{ApiKey, Bearer},
    payload::Json,
    SecurityScheme,
};

use super::{
    errors::{ApiError, AuthError, ErrorBody, ErrorCode},
    AppState, Asked,
};
use crate::resilience::limit::Verdict;

/// A client API key as a Bearer token.
#[derive(SecurityScheme)]
#[oai(ty = "bearer")]
pub(super) struct BearerKey(Bearer);

/// A client API key in the `X-API-Key` header.
#[derive(SecurityScheme)]
#[oai(ty = "api_key", key_name = "X-API-Key", key_in = "header")]
pub(super) struct HeaderKey(ApiKey);

/// How a client identified itself; `Anonymous` when it sent no key (allowed only when no
/// API keys are configured).
#[derive(SecurityScheme)]
pub(super) enum ClientAuth {
    Bearer(BearerKey),
    Header(HeaderKey),
    #[oai(fallback)]
    Anonymous,
}

impl ClientAuth {
    fn key(&self) -> Option<&str> {
        match self {
            ClientAuth::Bearer(b) => Some(&b.0.token),
            ClientAuth::Header(h) => Some(&h.0.key),
            ClientAuth::Anonymous => None,
        }
    }
}

/// The admin key, sent as `X-Admin-Key`.
#[derive(SecurityScheme)]
#[oai(ty = "api_key", key_name = "X-Admin-Key", key_in = "header")]
pub(super) struct AdminKey(ApiKey);

/// The client key a request carries (`X-API-Key`, or `Authorization: Bearer`).
pub(super) fn presented_key<R: Asked + ?Sized>(req: &R) -> Option<&str> {
    req.header("x-api-key").or_else(|| {
        req.header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
    })
}

/// Who a request counts against: its API key when it has one, else its IP.
pub(super) fn client_key<R: Asked + ?Sized>(req: &R) -> String {
    match presented_key(req) {
        Some(k) => format!("key:{k}"),
        None => match req.remote_ip() {
            Some(ip) => format!("ip:{ip}"),
            None => "ip:unknown".to_string(),
        },
    }
}

/// Equal without revealing where they differ (timing).
pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0));
    }
    diff == 0
}

impl AppState {
    /// With API keys configured, the request must carry one of them.
    pub(super) fn authenticate(&self, auth: &ClientAuth) -> Result<(), AuthError> {
        self.authenticate_key(auth.key())
    }

    /// With API keys configured, `presented` must be one of them.
    pub(super) fn authenticate_key(&self, presented: Option<&str>) -> Result<(), AuthError> {
        let keys = &self.config.api_keys;
        if keys.is_empty() {
            return Ok(());
        }
        let presented = presented.unwrap_or("");
        // Compare against every key, so timing does not tell which one (or none) matched.
        let ok = keys.iter().fold(false, |ok, k| {
            constant_time_eq(presented.as_bytes(), k.expose().as_bytes()) | ok
        });
        if ok {
            Ok(())
        } else {
            Err(AuthError::new())
        }
    }

    /// `/metrics` and `/status` need a key only with METRICS_REQUIRE_AUTH.
    pub(super) fn authenticate_ops(&self, auth: &ClientAuth) -> Result<(), AuthError> {
        if self.config.metrics_require_auth {
            self.authenticate(auth)
        } else {
            Ok(())
        }
    }

    pub(super) fn check_admin(&self, key: &AdminKey) -> Result<(), AdminError> {
        let Some(expected) = &self.config.admin_api_key else {
            return Err(AdminError::Forbidden(Json(ErrorBody::new(
                ErrorCode::AdminDisabled,
                "the admin API is disabled (ADMIN_API_KEY is not set)",
            ))));
        };
        if constant_time_eq(key.0.key.as_bytes(), expected.expose().as_bytes()) {
            Ok(())
        } else {
            Err(AdminError::Forbidden(Json(ErrorBody::new(
                ErrorCode::Forbidden,
                "the admin key is not valid",
            ))))
        }
    }

    /// The inbound rate limit; `Err` is the 429 to answer with.
    pub(super) async fn admit<R: Asked + Sync + ?Sized>(&self, req: &R) -> Result<(), ApiError> {
        if self.client_limiter.is_none() {
            return Ok(());
        }
        self.admit_client(&client_key(req)).await
    }

    /// The inbound rate limit for `client` (see [`client_key`]).
    pub(super) async fn admit_client(&self, client: &str) -> Result<(), ApiError> {
        let Some(limiter) = &self.client_limiter else {
            return Ok(());
        };
        match limiter.check(client).await {
            Verdict::Allowed { .. } => Ok(()),
            Verdict::Limited { limit, retry_after } => {
                self.metrics
                    .rate_limited
                    .with_label_values(&["client"])
                    .inc();
                let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                Err(ApiError::TooManyRequests(
                    Json(ErrorBody::new(
                        ErrorCode::RateLimited,
                        format!("too many requests; retry in {secs} s"),
                    )),
                    secs,
                    limit,
                    0,
                ))
            }
        }
    }
}

error_responses! {
    pub(super) enum AdminError {
        /// The registration is not valid.
        400 => BadRequest,
        /// No admin key was sent. (Answered by the security scheme's extractor before the
        /// operation runs; declared here so the spec lists it.)
        401 => Unauthorized,
        /// The admin key is wrong, or the admin API is disabled (`ADMIN_API_KEY` unset).
        403 => Forbidden,
        /// No agent of that name.
        404 => NotFound,
        /// The body is larger than allowed.
        413 => PayloadTooLarge,
        /// The body is not `application/json`.
        415 => UnsupportedMediaType,
        /// The knowledge graph is unavailable.
        503 => Unavailable,
    }
}

impl From<ApiError> for AdminError {
    /// By the status of the error's code: nothing changes status on the way.
    fn from(e: ApiError) -> Self {
        let body = e.into_body();
        match body.code.status().as_u16() {
            401 => AdminError::Unauthorized(body),
            403 => AdminError::Forbidden(body),
            404 => AdminError::NotFound(body),
            413 => AdminError::PayloadTooLarge(body),
            415 => AdminError::UnsupportedMediaType(body),
            503 => AdminError::Unavailable(body),
            _ => AdminError::BadRequest(body),
        }
    }
}
