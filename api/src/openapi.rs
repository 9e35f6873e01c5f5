//! The OpenAPI 3.1 document, generated from the handlers' annotations and the permission table:
//! each operation says which roles may call it and whether a group-scoped key may.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{Content, OpenApi as Document, Ref, RefOr, ResponseBuilder};
use utoipa::OpenApi;

use crate::permissions::{self, ManagementPaths};

/// The whole document: management routes with their permissions, bearer security.
pub fn openapi() -> Document {
    let mut doc = ManagementPaths::openapi();
    doc.info.title = "fleetplane management API".into();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    doc.info.description = Some(
        "Every route takes `Authorization: Bearer fpk_...` or a signed-in session cookie \
         (`__Host-fleet_session`, with `X-CSRF-Token` on state-changing requests), as its \
         `x-fleet-callers` says; the sign-in steps take neither. Each operation's description \
         ends with the roles allowed (the one permission table)."
            .into(),
    );
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "api_key",
        SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
    );
    let requirement =
        utoipa::openapi::security::SecurityRequirement::new::<&str, [&str; 0], &str>("api_key", []);
    components.add_security_scheme(
        "session",
        SecurityScheme::ApiKey(utoipa::openapi::security::ApiKey::Cookie(
            utoipa::openapi::security::ApiKeyValue::new(crate::people::SESSION_COOKIE),
        )),
    );
    let session =
        utoipa::openapi::security::SecurityRequirement::new::<&str, [&str; 0], &str>("session", []);
    for (path, item) in doc.paths.paths.iter_mut() {
        for (method, operation) in operations(item) {
            let Some(rule) = permissions::ROUTES
                .iter()
                .find(|r| r.path == path && r.method == method)
            else {
                continue;
            };
            let roles: Vec<&str> = rule.roles.iter().map(|r| r.as_str()).collect();
            let scoped = if rule.group_scoped {
                "group-scoped keys: yes, within their groups"
            } else {
                "group-scoped keys: no"
            };
            let note = format!("Roles: {}. {scoped}.", roles.join(", "));
            let description = operation.description.get_or_insert_with(String::new);
            if !description.is_empty() {
                description.push_str("\n\n");
            }
            description.push_str(&note);
            let (security, callers) = match rule.callers {
                permissions::Callers::Both => (vec![requirement.clone(), session.clone()], "both"),
                permissions::Callers::KeysOnly => (vec![requirement.clone()], "api_keys"),
                permissions::Callers::SessionsOnly => (vec![session.clone()], "sessions"),
                permissions::Callers::Anonymous => (Vec::new(), "anonymous"),
            };
            operation.security = Some(security);
            qualify_operation_id(operation);
            document_common_answers(operation);
            let extensions = operation.extensions.get_or_insert_with(Default::default);
            extensions.insert("x-fleet-roles".into(), serde_json::json!(roles));
            extensions.insert(
                "x-fleet-group-scoped".into(),
                serde_json::json!(rule.group_scoped),
            );
            extensions.insert("x-fleet-callers".into(), serde_json::json!(callers));
        }
    }
    doc
}

/// Handlers in different modules share names (`list`, `show`, ...), and operation ids must be
/// unique in a document: each is qualified by its tag, as `devices.list`.
fn qualify_operation_id(operation: &mut Operation) {
    let tag = operation.tags.as_ref().and_then(|tags| tags.first());
    if let (Some(tag), Some(id)) = (tag, operation.operation_id.as_mut()) {
        *id = format!("{tag}.{id}");
    }
}

/// The answers that come from the layers every management route shares rather than from its
/// handler, added where the handler's annotation does not already name them: the permission
/// check (401, 403, 429), the JSON body extractor (400, 413, 415, 422), the query parser (400 for
/// a bad cursor, 422 for a bad or unknown parameter) and the lookup of a path id (404). Every
/// refusal is a [`crate::Problem`] served as `application/problem+json`.
fn document_common_answers(operation: &mut Operation) {
    let has_body = operation.request_body.is_some();
    let params = operation.parameters.as_deref().unwrap_or_default();
    let has_query = params.iter().any(|p| p.parameter_in == ParameterIn::Query);
    let has_path = params.iter().any(|p| p.parameter_in == ParameterIn::Path);
    let mut common = vec![
        ("401", "No valid API key: missing, malformed, unknown, revoked, expired, or not allowed from this address or origin."),
        ("403", "The key's role or group scope does not allow this."),
        ("429", "Too many failed attempts from this address; see `Retry-After`."),
    ];
    if has_body {
        common.extend([
            ("400", "The body is not JSON."),
            ("413", "The body is larger than 64 KiB."),
            ("415", "The body is not declared as `application/json`."),
            (
                "422",
                "A field is missing, unknown or refused; `field` names it.",
            ),
        ]);
    }
    if has_query {
        common.extend([
            ("400", "The `cursor` is not one this server gave out."),
            (
                "422",
                "A query parameter is unknown, repeated or refused; `field` names it.",
            ),
        ]);
    }
    if has_path {
        common.push(("404", "No such resource visible to the caller."));
    }
    let responses = &mut operation.responses.responses;
    for (status, description) in common {
        responses.entry(status.to_owned()).or_insert_with(|| {
            let mut response = ResponseBuilder::new()
                .description(description)
                .content(PROBLEM_JSON, problem_content());
            if status == "429" {
                response = response.header(
                    "Retry-After",
                    HeaderBuilder::new()
                        .schema(ObjectBuilder::new().schema_type(Type::Integer))
                        .description(Some("Seconds to wait."))
                        .build(),
                );
            }
            RefOr::T(response.build())
        });
    }
    // Refusals are problem documents (RFC 7807), whatever media type the annotation defaulted to.
    for response in responses.values_mut() {
        let RefOr::T(response) = response else {
            continue;
        };
        if let Some(content) = response.content.shift_remove("application/json") {
            if is_problem(&content) {
                response.content.insert(PROBLEM_JSON.to_owned(), content);
            } else {
                response
                    .content
                    .insert("application/json".to_owned(), content);
            }
        }
    }
}

/// The media type of every refusal.
const PROBLEM_JSON: &str = "application/problem+json";

fn problem_content() -> Content {
    Content::new(Some(Ref::from_schema_name("Problem")))
}

fn is_problem(content: &Content) -> bool {
    matches!(&content.schema, Some(RefOr::Ref(r)) if r.ref_location == "#/components/schemas/Problem")
}

/// The operations of a path item with their method names, as the permission table spells them.
pub(crate) fn operations(
    item: &mut utoipa::openapi::PathItem,
) -> Vec<(&'static str, &mut utoipa::openapi::path::Operation)> {
    [
        ("GET", &mut item.get),
        ("POST", &mut item.post),
        ("PATCH", &mut item.patch),
        ("DELETE", &mut item.delete),
        ("PUT", &mut item.put),
    ]
    .into_iter()
    .filter_map(|(name, slot)| slot.as_mut().map(|op| (name, op)))
    .collect()
}

/// `GET /v1/openapi.json`, no authentication: the document is the same for everyone.
pub(crate) async fn serve() -> Response {
    static JSON: OnceLock<String> = OnceLock::new();
    let body = JSON.get_or_init(|| {
        openapi()
            .to_json()
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    });
    ([(header::CONTENT_TYPE, "application/json")], body.clone()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_ids_are_unique() {
        let mut doc = openapi();
        let mut seen = std::collections::HashSet::new();
        for (path, item) in doc.paths.paths.iter_mut() {
            for (method, operation) in operations(item) {
                let id = operation.operation_id.clone().expect("an operation id");
                assert!(seen.insert(id.clone()), "{method} {path}: {id} twice");
            }
        }
    }

    #[test]
    fn every_operation_documents_the_shared_refusals_as_problem_json() {
        let mut doc = openapi();
        for (path, item) in doc.paths.paths.iter_mut() {
            for (method, operation) in operations(item) {
                let has_body = operation.request_body.is_some();
                let responses = &operation.responses.responses;
                let mut expected = vec!["401", "403", "429"];
                if has_body {
                    expected.extend(["400", "413", "415", "422"]);
                }
                for status in expected {
                    assert!(
                        responses.contains_key(status),
                        "{method} {path} does not document {status}"
                    );
                }
                for (status, response) in responses {
                    let RefOr::T(response) = response else {
                        continue;
                    };
                    if status.starts_with('4') {
                        assert!(
                            response.content.contains_key(PROBLEM_JSON),
                            "{method} {path} {status} is not {PROBLEM_JSON}"
                        );
                    }
                }
            }
        }
    }
}
