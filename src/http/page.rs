//! `GET /`: the console page, one self-contained HTML file built into the binary (no script,
//! style or font is fetched from anywhere, so it works offline and behind strict proxies).
//! It classifies a picked or dropped image with the chosen rule, prior, coverage level and
//! abstention threshold, and shows the adaptive prior and the drift and feedback gauges.

use axum::response::Html;

#[utoipa::path(get, path = "/", tag = "v1", operation_id = "console",
    responses((status = 200, description = "The console page", body = String, content_type = "text/html")))]
/// `GET /`.
pub async fn console() -> Html<&'static str> {
    Html(include_str!("page.html"))
}
