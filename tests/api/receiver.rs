//! A webhook receiver for the outbound-event tests (and the chaos suite, which includes this
//! file): it fails every fifth request and checks each signature with its own HMAC.

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex};

/// HMAC-SHA256 written from RFC 2104 over sha2, independent of the `hmac` crate accrue uses.
fn rfc2104_hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::digest([ipad.as_slice(), msg].concat());
    Sha256::digest([opad.as_slice(), inner.as_slice()].concat()).to_vec()
}

#[derive(Default)]
pub(crate) struct Receiver {
    /// Requests that arrived (counted before the answer's delay).
    pub arrived: usize,
    /// Requests answered.
    pub requests: usize,
    /// (event id, verified) of each request answered 2xx.
    pub accepted: Vec<(String, bool)>,
}

/// A webhook receiver failing every fifth request, answering after `delay_ms`.
pub(crate) async fn start_receiver(
    secret: Arc<Mutex<String>>,
    delay_ms: u64,
) -> (String, Arc<Mutex<Receiver>>) {
    let state = Arc::new(Mutex::new(Receiver::default()));
    let data = (state.clone(), secret);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let server = HttpServer::new(move || {
        let data = data.clone();
        App::new().route(
            "/hook",
            web::post().to(move |req: HttpRequest, body: web::Bytes| {
                let (state, secret) = data.clone();
                async move {
                    state.lock().unwrap().arrived += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
                    let header = req
                        .headers()
                        .get("Accrue-Signature")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let (t, v1) = header
                        .split_once(",v1=")
                        .map(|(t, v)| (t.trim_start_matches("t=").to_owned(), v.to_owned()))
                        .unwrap_or_default();
                    let secret = secret.lock().unwrap().clone();
                    let expected = hex::encode(rfc2104_hmac_sha256(
                        secret.as_bytes(),
                        format!("{t}.{}", std::str::from_utf8(&body).unwrap()).as_bytes(),
                    ));
                    let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let mut s = state.lock().unwrap();
                    s.requests += 1;
                    if s.requests % 5 == 0 {
                        return HttpResponse::InternalServerError().finish();
                    }
                    s.accepted.push((
                        event["id"].as_str().unwrap_or_default().to_owned(),
                        expected == v1,
                    ));
                    HttpResponse::Ok().finish()
                }
            }),
        )
    })
    .workers(2)
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    (url, state)
}
