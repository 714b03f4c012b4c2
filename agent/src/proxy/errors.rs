//! Responses the agent answers itself: always `{error, message, request_id}` JSON, plus
//! fields specific to the error (quota: `metric`, `limit`, `remaining`, `retry_after_seconds`).

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde_json::{Map, Value};

pub fn json_error(
    status: StatusCode,
    code: &str,
    message: &str,
    request_id: &str,
    extra: Map<String, Value>,
) -> Response<Bytes> {
    let mut body = Map::new();
    body.insert("error".into(), code.into());
    body.insert("message".into(), message.into());
    body.insert("request_id".into(), request_id.into());
    body.extend(extra);
    let mut resp = Response::new(Bytes::from(Value::Object(body).to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}
