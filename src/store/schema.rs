// Diesel table definitions for the tables in `migrations/`, in the form `diesel print-schema`
// writes (diesel_cli needs libpq, which this project does not link). Changed only together
// with a migration; the integration tests read and write every table through it.

diesel::table! {
    api_keys (id) {
        id -> Int8,
        key_hash -> Text,
        prefix -> Text,
        name -> Text,
        scopes -> Array<Text>,
        account -> Nullable<Text>,
        created_by -> Text,
        created_at -> Timestamptz,
        revoked_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    events (account, id) {
        account -> Text,
        id -> Text,
        event_type -> Text,
        ts -> Timestamptz,
        properties -> Jsonb,
        received_at -> Timestamptz,
    }
}

diesel::table! {
    usage_rollups (account, meter, bucket) {
        account -> Text,
        meter -> Text,
        bucket -> Timestamptz,
        event_count -> Int8,
        value_sum -> Numeric,
        value_max -> Nullable<Numeric>,
        latest_at -> Nullable<Timestamptz>,
        latest_event_id -> Nullable<Text>,
        latest_value -> Nullable<Numeric>,
        first_event_at -> Timestamptz,
        last_event_at -> Timestamptz,
    }
}

diesel::table! {
    usage_unique_keys (account, meter, bucket, key) {
        account -> Text,
        meter -> Text,
        bucket -> Timestamptz,
        key -> Text,
    }
}

diesel::table! {
    event_type_counts (account, event_type) {
        account -> Text,
        event_type -> Text,
        event_count -> Int8,
        first_seen_at -> Timestamptz,
        last_seen_at -> Timestamptz,
    }
}

diesel::table! {
    plan_versions (plan, version) {
        plan -> Text,
        version -> Int4,
        name -> Text,
        self_serve -> Bool,
        content_hash -> Text,
        definition -> Jsonb,
        published_at -> Timestamptz,
        published_by -> Text,
    }
}

diesel::table! {
    catalogue_audit (id) {
        id -> Int8,
        action -> Text,
        plan -> Text,
        version -> Int4,
        content_hash -> Text,
        actor -> Text,
        detail -> Text,
        at -> Timestamptz,
    }
}
