//! Route templates: the fixed set of `route` label values, never the raw path.

/// Route template of a request path: a fixed set, never the raw path.
pub fn route_template(path: &str) -> &'static str {
    match path {
        "/health" => "/health",
        "/ready" => "/ready",
        "/status" => "/status",
        "/agents" => "/agents",
        "/metrics" => "/metrics",
        "/metrics/json" => "/metrics/json",
        "/discover" => "/discover",
        "/feedback" => "/feedback",
        "/process" => "/process",
        "/process_query" => "/process_query",
        "/openapi.json" => "/openapi.json",
        "/ws" => "/ws",
        "/graphql" => "/graphql",
        "/graphql/schema" => "/graphql/schema",
        "/graphql/ws" => "/graphql/ws",
        p if p == "/docs" || p.starts_with("/docs/") => "/docs",
        p if p.starts_with("/agents/") => "/agents/{name}",
        p if p.starts_with("/graphql/assets/") => "/graphql/assets/{file}",
        _ => "unmatched",
    }
}

/// The methods a route template answers (the `Allow` header of a 405).
pub fn allowed_methods(route: &str) -> &'static str {
    match route {
        "/agents" => "GET, POST",
        "/agents/{name}" => "DELETE",
        "/discover" | "/feedback" | "/process" | "/process_query" => "POST",
        "/graphql" => "GET, POST",
        "unmatched" => "",
        _ => "GET",
    }
}

/// A request span's name, `METHOD route` — written out for the routes' own methods (no
/// formatting per request), formatted for anything else.
pub fn span_name(method: &str, route: &'static str) -> std::borrow::Cow<'static, str> {
    let name = match (method, route) {
        ("POST", "/process") => "POST /process",
        ("POST", "/process_query") => "POST /process_query",
        ("POST", "/discover") => "POST /discover",
        ("POST", "/feedback") => "POST /feedback",
        ("GET", "/health") => "GET /health",
        ("GET", "/ready") => "GET /ready",
        ("GET", "/status") => "GET /status",
        ("GET", "/metrics") => "GET /metrics",
        ("GET", "/metrics/json") => "GET /metrics/json",
        ("GET", "/agents") => "GET /agents",
        ("POST", "/agents") => "POST /agents",
        ("DELETE", "/agents/{name}") => "DELETE /agents/{name}",
        ("GET", "/graphql") => "GET /graphql",
        ("POST", "/graphql") => "POST /graphql",
        _ => return format!("{method} {route}").into(),
    };
    name.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_templates() {
        assert_eq!(route_template("/agents/Evil%20Agent"), "/agents/{name}");
        assert_eq!(route_template("/wp-admin/x.php"), "unmatched");
        assert_eq!(allowed_methods("/agents"), "GET, POST");
    }

    #[test]
    fn span_names_are_the_method_and_the_template() {
        let paths = [
            "/process",
            "/agents",
            "/agents/x",
            "/graphql",
            "/health",
            "/nope",
        ];
        for method in ["GET", "POST", "DELETE", "PATCH"] {
            for path in paths {
                let route = route_template(path);
                assert_eq!(span_name(method, route), format!("{method} {route}"));
            }
        }
    }
}
