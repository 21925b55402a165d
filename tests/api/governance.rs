//! GET /v1/governance/event-types.

use crate::helpers::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_type_seen_is_listed_with_its_count_and_whether_a_meter_reads_it() {
    let app = spawn_app().await;
    let key = app.key("ingest,admin", None).await;
    let (status, _) = app
        .send(&key, &json!({"events": [
            {"id": "1", "account": "acme", "type": "api.request"},
            {"id": "2", "account": "globex", "type": "api.request"},
            {"id": "3", "account": "acme", "type": "onboarding.tour_skipped"},
            {"id": "3", "account": "acme", "type": "onboarding.tour_skipped"},
            {"id": "4", "account": "acme", "type": "job.completed", "properties": {"minutes": 2, "runner": "gpu"}},
        ]}))
        .await;
    assert_eq!(status, 200);
    let (status, body) = app.get(&key, "/v1/governance/event-types").await;
    assert_eq!(status, 200);
    let types = body["data"].as_array().unwrap();
    let find = |t: &str| types.iter().find(|x| x["event_type"] == t).unwrap().clone();
    assert_eq!(types.len(), 3);
    assert_eq!(find("api.request")["event_count"], 2);
    assert_eq!(find("api.request")["accounts"], 2);
    assert_eq!(find("api.request")["metered"], true);
    assert_eq!(find("onboarding.tour_skipped")["event_count"], 1);
    assert_eq!(find("onboarding.tour_skipped")["metered"], false);
    assert_eq!(
        find("job.completed")["meters"],
        json!(["compute_minutes", "gpu_minutes"])
    );
}
