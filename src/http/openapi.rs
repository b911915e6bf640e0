//! The OpenAPI 3 document of every HTTP route, generated from the handlers' own annotations
//! (utoipa), so it cannot drift from the code: `GET /openapi.json`. `GET /docs` is a page that
//! renders it, self-contained (no script or style is fetched from anywhere).

use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::error::{ErrorBody, ErrorDetail};
use super::v2::V2ErrorBody;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// One handler may serve several methods (`POST` and `PUT /v1/classify`); OpenAPI wants each
/// operation's id unique, so every method after the first gets its name appended.
struct UniqueOperationIds;

impl Modify for UniqueOperationIds {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let mut seen = std::collections::HashSet::new();
            let operations = [
                ("get", &mut item.get),
                ("post", &mut item.post),
                ("put", &mut item.put),
                ("delete", &mut item.delete),
                ("patch", &mut item.patch),
                ("head", &mut item.head),
                ("options", &mut item.options),
                ("trace", &mut item.trace),
            ];
            for (method, operation) in operations {
                let Some(id) = operation.as_mut().and_then(|o| o.operation_id.as_mut()) else {
                    continue;
                };
                if !seen.insert(id.clone()) {
                    id.push('_');
                    id.push_str(method);
                }
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "proco-serve",
        description = "Calibrated, prior-adjusted long-tailed image classification with ProCo's vMF class distributions. /v1 is the server's own API; /v2 is the Open Inference Protocol (KServe, Triton)."
    ),
    paths(
        super::classify::classify,
        super::classify::classify_model,
        super::info::model,
        super::info::models,
        super::info::versions,
        super::monitor::feedback,
        super::monitor::monitoring,
        super::page::console,
        super::info::live,
        super::info::ready,
        super::info::metrics,
        super::admin::admin_reload,
        super::admin::learn_examples,
        super::admin::remove_class,
        super::admin::rollback,
        super::v2::server_metadata,
        super::v2::live,
        super::v2::ready,
        super::v2::model_metadata,
        super::v2::model_version_metadata,
        super::v2::model_ready,
        super::v2::model_version_ready,
        super::v2::infer,
        super::v2::version_infer,
        super::v2::repository::index,
        super::v2::repository::load,
        super::v2::repository::unload,
        document,
        page,
    ),
    components(schemas(ErrorBody, ErrorDetail, V2ErrorBody, super::monitor::FeedbackBody)),
    modifiers(&BearerAuth, &UniqueOperationIds),
    tags(
        (name = "v1", description = "Classification, the model, prototype versions"),
        (name = "v2", description = "Open Inference Protocol v2"),
        (name = "admin", description = "Prototype reloads and changes (bearer token)"),
        (name = "health", description = "Liveness, readiness, metrics"),
    )
)]
pub struct ApiDoc;

/// The document as served (built once).
pub fn json() -> &'static str {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = ApiDoc::openapi();
        doc.info.version = env!("CARGO_PKG_VERSION").to_string();
        doc.to_pretty_json()
            .expect("the OpenAPI document is plain JSON")
    })
}

#[utoipa::path(get, path = "/openapi.json", tag = "health", operation_id = "openapi",
    responses((status = 200, description = "This document", body = serde_json::Value)))]
/// `GET /openapi.json`.
pub async fn document() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], json()).into_response()
}

#[utoipa::path(get, path = "/docs", tag = "health", operation_id = "docs",
    responses((status = 200, description = "A page that renders this document", body = String, content_type = "text/html")))]
/// `GET /docs`.
pub async fn page() -> Html<&'static str> {
    Html(include_str!("docs.html"))
}
