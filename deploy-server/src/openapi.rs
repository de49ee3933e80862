//! The OpenAPI 3.1 document of the API.

/// The OpenAPI document, as JSON text.
#[must_use]
pub fn document() -> String {
    String::new()
}
