//! GraphiQL at `GET /graphql`, its assets served from the binary (no CDN).

use poem::{handler, Response};

use crate::api::errors::{error_response, ErrorCode};

/// `GET /graphql`: GraphiQL, its assets served from the binary (no CDN).
#[handler]
pub(in crate::api) fn page() -> poem::web::Html<&'static str> {
    poem::web::Html(GRAPHIQL_PAGE)
}

const GRAPHIQL_PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Myriad Orchestrator · GraphiQL</title>
<style>body { margin: 0; } #graphiql { height: 100vh; }</style>
<link rel="stylesheet" href="/graphql/assets/graphiql.min.css">
</head>
<body>
<div id="graphiql">Loading GraphiQL…</div>
<script src="/graphql/assets/react.production.min.js"></script>
<script src="/graphql/assets/react-dom.production.min.js"></script>
<script src="/graphql/assets/graphiql.min.js"></script>
<script>
  const ws = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/graphql/ws';
  const fetcher = GraphiQL.createFetcher({ url: '/graphql', subscriptionUrl: ws });
  ReactDOM.createRoot(document.getElementById('graphiql')).render(
    React.createElement(GraphiQL, {
      fetcher,
      defaultQuery: '{\n  candidates(concept: "lightbulb") {\n    agent\n    score\n    health\n    breaker\n  }\n}\n',
    }));
</script>
</body>
</html>
"#;

/// GraphiQL's files (MIT; `assets/graphiql/LICENSE.*`), by name.
const ASSETS: [(&str, &str, &[u8]); 4] = [
    (
        "graphiql.min.js",
        "text/javascript",
        include_bytes!("../../../assets/graphiql/graphiql.min.js"),
    ),
    (
        "graphiql.min.css",
        "text/css",
        include_bytes!("../../../assets/graphiql/graphiql.min.css"),
    ),
    (
        "react.production.min.js",
        "text/javascript",
        include_bytes!("../../../assets/graphiql/react.production.min.js"),
    ),
    (
        "react-dom.production.min.js",
        "text/javascript",
        include_bytes!("../../../assets/graphiql/react-dom.production.min.js"),
    ),
];

/// `GET /graphql/assets/{file}`.
#[handler]
pub(in crate::api) fn asset(poem::web::Path(file): poem::web::Path<String>) -> Response {
    match ASSETS.iter().find(|(name, ..)| *name == file) {
        Some((_, content_type, bytes)) => Response::builder()
            .content_type(*content_type)
            .header("cache-control", "public, max-age=86400")
            .body(*bytes),
        None => error_response(ErrorCode::NotFound, "no such asset"),
    }
}
