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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_templates() {
        assert_eq!(route_template("/agents/Evil%20Agent"), "/agents/{name}");
        assert_eq!(route_template("/wp-admin/x.php"), "unmatched");
        assert_eq!(allowed_methods("/agents"), "GET, POST");
    }
}
