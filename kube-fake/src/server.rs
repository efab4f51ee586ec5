//! The HTTP surface: routes a request to the store by verb and path, and answers as the apiserver
//! would (status codes, `Status` bodies, list envelopes, the scale subresource).

use crate::patch::{self, PatchType};
use crate::resource::ResourcePath;
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::{self, ApiError};
use crate::store::{Store, WriteMeta};
use crate::subresource::{get_scale, key_for, unknown_subresource, update_scale, update_status};
use crate::watch::{self, WatchRequest};
use crate::{RequestRecord, Shared};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

/// The apiserver's default request body limit (3 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// Handles one request. An `Err` makes hyper drop the connection without an answer: that is how an
/// injected outage looks to the client (a transport error, not an HTTP status).
pub(crate) async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::io::Error> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let params = parse_query(&query);
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let parsed = ResourcePath::parse(&path);
    let mut record = RequestRecord {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        content_type: content_type.clone(),
        field_manager: params.get("fieldManager").cloned(),
        verb: verb_of(&method, parsed.as_ref(), &params).to_owned(),
        api_group: parsed
            .as_ref()
            .map(|p| p.gvr.group.clone())
            .unwrap_or_default(),
        resource: parsed
            .as_ref()
            .map(ResourcePath::rbac_resource)
            .unwrap_or_default(),
        namespace: parsed.as_ref().and_then(|p| p.namespace.clone()),
        name: parsed.as_ref().and_then(|p| p.name.clone()),
        status: 0,
    };
    if shared.outage.load(Ordering::SeqCst) {
        shared.log.lock().push(record);
        return Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "fake apiserver outage",
        ));
    }
    let mut hang = shared.hang.subscribe();
    if *hang.borrow_and_update() {
        // Dropped senders cannot happen while the server runs; either way, stop waiting.
        let _ = hang.wait_for(|on| !*on).await;
    }
    let response = if let Some(code) = shared.take_fault(&method, &path) {
        error_response(&ApiError::new(
            code,
            status::reason_for(code),
            format!("injected fault {code}"),
        ))
    } else {
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => {
                record.status = 413;
                shared.log.lock().push(record);
                return Ok(error_response(&ApiError::new(
                    413,
                    "RequestEntityTooLarge",
                    "request body too large",
                )));
            }
        };
        match parsed {
            None => error_response(&ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            )),
            Some(p) => route(&shared, &method, p, &params, content_type.as_deref(), &body),
        }
    };
    record.status = response.status().as_u16();
    shared.log.lock().push(record);
    Ok(response)
}

/// The RBAC verb a request needs (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`).
fn verb_of(
    method: &Method,
    path: Option<&ResourcePath>,
    params: &HashMap<String, String>,
) -> &'static str {
    let item = path.is_some_and(|p| p.name.is_some());
    match *method {
        Method::GET if item => "get",
        Method::GET if is_true(params.get("watch")) => "watch",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if item => "delete",
        Method::DELETE => "deletecollection",
        _ => "unknown",
    }
}

fn is_true(v: Option<&String>) -> bool {
    v.is_some_and(|v| v == "true" || v == "1")
}

fn route(
    shared: &Arc<Shared>,
    method: &Method,
    path: ResourcePath,
    params: &HashMap<String, String>,
    content_type: Option<&str>,
    body: &Bytes,
) -> Response<Body> {
    if path.gvr.namespaced() && path.namespace.is_none() && *method != Method::GET {
        return error_response(&ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ));
    }
    let ns = path.namespace.clone().unwrap_or_default();
    let write = WriteMeta {
        field_manager: params.get("fieldManager").cloned(),
        operation: "Update",
        subresource: path.subresource.clone(),
        dry_run: params.get("dryRun").is_some_and(|v| v == "All"),
    };
    let result = match (method, path.name.as_deref(), path.subresource.as_deref()) {
        (&Method::GET, None, None) if is_true(params.get("watch")) => {
            return watch_response(shared, path, params);
        }
        (&Method::GET, None, None) => list(&shared.store.lock(), &path, params),
        (&Method::GET, Some(name), None) => {
            let store = shared.store.lock();
            store
                .get(&key_for(&path.gvr, &ns, name))
                .cloned()
                .ok_or_else(|| ApiError::not_found(&path.gvr.group, &path.gvr.resource, name))
        }
        (&Method::GET, Some(name), Some("scale")) => {
            get_scale(&shared.store.lock(), &path.gvr, &ns, name)
        }
        (&Method::POST, None, None) => {
            parse_body(body).and_then(|obj| shared.store.lock().create(&path.gvr, &ns, obj, &write))
        }
        (&Method::PUT, Some(name), None) => parse_body(body).and_then(|obj| {
            shared
                .store
                .lock()
                .replace(&path.gvr, &ns, name, obj, &write)
        }),
        (&Method::PATCH, Some(name), sub) => {
            match content_type.and_then(PatchType::from_content_type) {
                None => Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!(
                        "the body of the request was in an unknown format - accepted media types include: \
                     application/merge-patch+json, application/strategic-merge-patch+json (got {})",
                        content_type.unwrap_or("none")
                    ),
                )),
                Some(_) => parse_body(body).and_then(|p| {
                    let mut store = shared.store.lock();
                    match sub {
                        None => store.patch(&path.gvr, &ns, name, &p, &write),
                        Some("scale") => {
                            update_scale(&mut store, &path.gvr, &ns, name, &write, |scale| {
                                patch::merge(scale, &p);
                                Ok(())
                            })
                        }
                        Some("status") => {
                            update_status(&mut store, &path.gvr, &ns, name, &write, |obj| {
                                patch::merge(obj, &p);
                            })
                        }
                        Some(other) => Err(unknown_subresource(other)),
                    }
                }),
            }
        }
        (&Method::PUT, Some(name), Some("scale")) => parse_body(body).and_then(|new_scale| {
            update_scale(
                &mut shared.store.lock(),
                &path.gvr,
                &ns,
                name,
                &write,
                |scale| {
                    let wanted = new_scale
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str);
                    let current = scale
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str);
                    if wanted.is_some_and(|w| !w.is_empty() && Some(w) != current) {
                        return Err(ApiError::conflict(
                            &path.gvr.group,
                            &path.gvr.resource,
                            name,
                        ));
                    }
                    scale["spec"] = new_scale.get("spec").cloned().unwrap_or_else(|| json!({}));
                    Ok(())
                },
            )
        }),
        (&Method::PUT, Some(name), Some("status")) => parse_body(body).and_then(|new| {
            update_status(
                &mut shared.store.lock(),
                &path.gvr,
                &ns,
                name,
                &write,
                |obj| {
                    obj["status"] = new.get("status").cloned().unwrap_or(Value::Null);
                },
            )
        }),
        (&Method::DELETE, Some(name), None) => shared.store.lock().delete(&path.gvr, &ns, name),
        (_, _, Some(other)) if other != "scale" && other != "status" => {
            Err(unknown_subresource(other))
        }
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("{method} is not supported here"),
        )),
    };
    match result {
        Ok(value) => {
            let code = if *method == Method::POST {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            json_response(code, &value)
        }
        Err(err) => error_response(&err),
    }
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(ApiError::bad_request("the body is not a JSON object"))
    }
}

/// Lists with `labelSelector`, `fieldSelector`, `limit` and `continue`.
fn list(
    store: &Store,
    path: &ResourcePath,
    params: &HashMap<String, String>,
) -> Result<Value, ApiError> {
    let labels = LabelSelector::parse(params.get("labelSelector").map_or("", String::as_str))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let fields = FieldSelector::parse(params.get("fieldSelector").map_or("", String::as_str))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let limit = match params.get("limit").filter(|l| !l.is_empty()) {
        Some(l) => Some(
            l.parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {l}")))?,
        ),
        None => None,
    };
    // Continue tokens are opaque to clients: "{listRV}:{namespace}/{name}" of the last item served.
    let (list_rv, after) = match params.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let (rv, last) = token
                .split_once(':')
                .and_then(|(rv, last)| Some((rv.parse::<u64>().ok()?, last)))
                .ok_or_else(|| ApiError::bad_request("invalid continue token"))?;
            let (ns, name) = last.split_once('/').unwrap_or(("", last));
            (rv, Some((ns.to_owned(), name.to_owned())))
        }
        None => (store.resource_version(), None),
    };
    let builtin = matches!(
        path.gvr.group.as_str(),
        "" | "apps" | "discovery.k8s.io" | "coordination.k8s.io" | "events.k8s.io" | "autoscaling"
    );
    let mut items = Vec::new();
    let mut next = None;
    for (key, object) in store.list(&path.gvr, path.namespace.as_deref()) {
        if let Some((ns, name)) = &after
            && (key.namespace.as_str(), key.name.as_str()) <= (ns.as_str(), name.as_str())
        {
            continue;
        }
        if !labels.matches_object(object) || !fields.matches_object(object) {
            continue;
        }
        if limit.is_some_and(|l| l > 0 && items.len() >= l) {
            if let Some(last) = items
                .last()
                .map(|(k, _): &(crate::ObjectKey, Value)| k.clone())
            {
                next = Some(format!("{list_rv}:{}/{}", last.namespace, last.name));
            }
            break;
        }
        let mut item = object.clone();
        // Built-in lists leave the type out of each item; custom resources keep it.
        if builtin && let Some(m) = item.as_object_mut() {
            m.remove("kind");
            m.remove("apiVersion");
        }
        items.push((key.clone(), item));
    }
    let mut metadata = json!({"resourceVersion": list_rv.to_string()});
    if let Some(token) = next {
        metadata["continue"] = json!(token);
    }
    Ok(json!({
        "kind": format!("{}List", path.gvr.kind()),
        "apiVersion": path.gvr.api_version(),
        "metadata": metadata,
        "items": items.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
    }))
}

fn watch_response(
    shared: &Arc<Shared>,
    path: ResourcePath,
    params: &HashMap<String, String>,
) -> Response<Body> {
    let labels = match LabelSelector::parse(params.get("labelSelector").map_or("", String::as_str))
    {
        Ok(l) => l,
        Err(e) => return error_response(&ApiError::bad_request(e.to_string())),
    };
    let fields = match FieldSelector::parse(params.get("fieldSelector").map_or("", String::as_str))
    {
        Ok(f) => f,
        Err(e) => return error_response(&ApiError::bad_request(e.to_string())),
    };
    let since = match params.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(rv) => match rv.parse::<u64>() {
            Ok(rv) => Some(rv),
            Err(_) => {
                return error_response(&ApiError::bad_request(format!(
                    "invalid resource version: {rv}"
                )));
            }
        },
    };
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let rx = watch::start(
        shared.clone(),
        WatchRequest {
            path,
            labels,
            fields,
            since,
            bookmarks: is_true(params.get("allowWatchBookmarks")),
            send_initial_events: is_true(params.get("sendInitialEvents")),
            timeout,
        },
    );
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, Infallible>(Frame::data(chunk)), rx))
    });
    let mut response = Response::new(StreamBody::new(stream).boxed_unsync());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())).boxed_unsync());
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

pub(crate) fn error_response(err: &ApiError) -> Response<Body> {
    json_response(
        StatusCode::from_u16(err.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &err.to_status(),
    )
}

/// `application/x-www-form-urlencoded` query parsing (`+` is a space, `%XX` a byte).
pub(crate) fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let q = parse_query("labelSelector=a%3Db%2Cc+in+%28x%29&watch=true&x=%zz");
        assert_eq!(q["labelSelector"], "a=b,c in (x)");
        assert_eq!(q["watch"], "true");
        assert_eq!(q["x"], "%zz");
    }
}
