//! The dashboard: one self-contained page at `/` of the admin address that
//! an operator keeps open. It reads the JSON API on the same origin every
//! two seconds and posts target states from its buttons; everything it needs
//! (CSS, JS) is inline in `dashboard.html`, so it works with no build step and
//! no network beyond the admin address. The ids and classes it keeps stable
//! are listed in the comment at the top of the HTML.

use axum::response::Html;

/// The page, embedded in the binary at build time.
const PAGE: &str = include_str!("dashboard.html");

/// The dashboard page, for `GET /`.
pub fn page() -> Html<&'static str> {
    Html(PAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_self_contained() {
        let html = page().0;
        assert!(html.starts_with("<!DOCTYPE html>"));
        // Nothing from another origin: the page must work on a machine with no network.
        for needle in ["http://", "https://", "//cdn", "<link", "src="] {
            assert!(!html.contains(needle), "the page references {needle:?}");
        }
        for path in ["/services", "/pools", "/sessions?limit=", "/snat", "/state"] {
            assert!(html.contains(path), "the page uses {path}");
        }
    }
}
