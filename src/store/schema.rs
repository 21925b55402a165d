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
        expires_at -> Nullable<Timestamptz>,
        last_used_at -> Nullable<Timestamptz>,
        changed_at -> Timestamptz,
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
        stored_at -> Timestamptz,
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
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    usage_unique_keys (account, meter, bucket, key) {
        account -> Text,
        meter -> Text,
        bucket -> Timestamptz,
        key -> Text,
        written_at -> Timestamptz,
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
    event_type_totals (event_type, shard) {
        event_type -> Text,
        shard -> Text,
        event_count -> Int8,
        first_seen_at -> Timestamptz,
        last_seen_at -> Timestamptz,
        updated_at -> Timestamptz,
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

diesel::table! {
    accounts (account) {
        account -> Text,
        name -> Nullable<Text>,
        email -> Nullable<Text>,
        employees -> Nullable<Int4>,
        industry -> Nullable<Text>,
        country -> Nullable<Text>,
        crm_owner -> Nullable<Text>,
        stripe_customer_id -> Nullable<Text>,
        currency -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        credit_balance -> Numeric,
        payment_method -> Nullable<Text>,
        test_clock -> Nullable<Text>,
    }
}

diesel::table! {
    subscriptions (account) {
        account -> Text,
        plan -> Text,
        plan_version -> Int4,
        seats -> Int4,
        status -> Text,
        anchor -> Timestamptz,
        period_start -> Timestamptz,
        period_end -> Timestamptz,
        trial_end -> Nullable<Timestamptz>,
        scheduled -> Nullable<Jsonb>,
        revision -> Int8,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        past_due_since -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    quotes (account, id) {
        account -> Text,
        id -> Text,
        base_revision -> Int8,
        body -> Jsonb,
        expires_at -> Timestamptz,
        accepted_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    idempotency_keys (account, key) {
        account -> Text,
        key -> Text,
        target -> Text,
        status -> Int2,
        response -> Jsonb,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    subscription_changes (account, id) {
        account -> Text,
        id -> Int8,
        kind -> Text,
        at -> Timestamptz,
        quote_id -> Nullable<Text>,
        from_plan -> Nullable<Text>,
        from_version -> Nullable<Int4>,
        from_seats -> Nullable<Int4>,
        to_plan -> Nullable<Text>,
        to_version -> Nullable<Int4>,
        to_seats -> Nullable<Int4>,
        lines -> Jsonb,
        amount -> Numeric,
        currency -> Nullable<Text>,
    }
}

diesel::table! {
    invoice_counter (singleton) {
        singleton -> Bool,
        next_number -> Int8,
    }
}

diesel::table! {
    invoice_numbers (number) {
        number -> Int8,
        account -> Text,
    }
}

diesel::table! {
    invoices (account, number) {
        account -> Text,
        number -> Int8,
        kind -> Text,
        period_start -> Timestamptz,
        period_end -> Timestamptz,
        plan -> Text,
        plan_version -> Int4,
        seats -> Int4,
        currency -> Text,
        total -> Numeric,
        status -> Text,
        collection -> Text,
        issued_at -> Timestamptz,
        period_share -> Nullable<Numeric>,
    }
}

diesel::table! {
    invoice_lines (account, number, line_no) {
        account -> Text,
        number -> Int8,
        line_no -> Int4,
        kind -> Text,
        meter -> Nullable<Text>,
        quantity -> Numeric,
        amount -> Numeric,
        description -> Text,
        event_count -> Nullable<Int8>,
        first_event_at -> Nullable<Timestamptz>,
        last_event_at -> Nullable<Timestamptz>,
        usage_from -> Nullable<Timestamptz>,
        usage_to -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    jobs (id) {
        id -> Int8,
        kind -> Text,
        due_key -> Text,
        run_at -> Timestamptz,
        leased_until -> Nullable<Timestamptz>,
        attempts -> Int4,
        last_error -> Nullable<Text>,
        done_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    invoice_payments (account, number) {
        account -> Text,
        number -> Int8,
        stripe_invoice_id -> Nullable<Text>,
        state -> Text,
        attempts -> Int4,
        first_failure_at -> Nullable<Timestamptz>,
        next_attempt_at -> Nullable<Timestamptz>,
        amount_paid -> Numeric,
        paid_at -> Nullable<Timestamptz>,
        last_error -> Nullable<Text>,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    invoice_settlements (account, number) {
        account -> Text,
        number -> Int8,
        kind -> Text,
        amount -> Numeric,
        settled_at -> Timestamptz,
        reference -> Nullable<Text>,
        reason -> Nullable<Text>,
        settled_by -> Text,
        credit_restored -> Numeric,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    dunning_steps (account, id) {
        account -> Text,
        id -> Int8,
        number -> Int8,
        at -> Timestamptz,
        step -> Text,
        attempt -> Int4,
        reason -> Text,
    }
}

diesel::table! {
    stripe_events (event_id) {
        event_id -> Text,
        event_type -> Text,
        object_id -> Nullable<Text>,
        account -> Nullable<Text>,
        received_at -> Timestamptz,
    }
}

diesel::table! {
    installation (singleton) {
        singleton -> Bool,
        id -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    account_mrr (account) {
        account -> Text,
        mrr -> Numeric,
        usage_mrr -> Numeric,
        currency -> Text,
        had_mrr -> Bool,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    revenue_movements (account, id) {
        account -> Text,
        id -> Int8,
        at -> Timestamptz,
        kind -> Text,
        cause -> Text,
        mrr_before -> Numeric,
        mrr_after -> Numeric,
        currency -> Text,
        ref_kind -> Text,
        ref_id -> Int8,
    }
}

diesel::table! {
    outbox (account, id) {
        account -> Text,
        id -> Int8,
        event_id -> Text,
        kind -> Text,
        payload -> Jsonb,
        created_at -> Timestamptz,
        seq -> Nullable<Int8>,
    }
}

diesel::table! {
    outbox_sequencer (singleton) {
        singleton -> Bool,
        next_seq -> Int8,
    }
}

diesel::table! {
    webhook_endpoints (id) {
        id -> Int8,
        url -> Text,
        kinds -> Array<Text>,
        secret -> Text,
        cursor_seq -> Int8,
        created_at -> Timestamptz,
        disabled_at -> Nullable<Timestamptz>,
        idempotency_key -> Nullable<Text>,
    }
}

diesel::table! {
    webhook_deliveries (endpoint_id, seq) {
        endpoint_id -> Int8,
        seq -> Int8,
        account -> Text,
        event_id -> Text,
        state -> Text,
        attempts -> Int4,
        next_attempt_at -> Timestamptz,
        last_error -> Nullable<Text>,
        delivered_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    limit_alerts (account, meter, period_start, threshold) {
        account -> Text,
        meter -> Text,
        period_start -> Timestamptz,
        threshold -> Int2,
        at -> Timestamptz,
    }
}

diesel::table! {
    pql_scores (account) {
        account -> Text,
        score -> Int4,
        tier -> Text,
        breakdown -> Jsonb,
        zone -> Text,
        zone_reasons -> Jsonb,
        owner -> Nullable<Text>,
        scored_at -> Timestamptz,
        tier_since -> Timestamptz,
        activated_at -> Nullable<Timestamptz>,
        first_pql_at -> Nullable<Timestamptz>,
        best_tier -> Nullable<Text>,
        routed_at -> Nullable<Timestamptz>,
        converted_at -> Nullable<Timestamptz>,
        attribution -> Nullable<Text>,
    }
}

diesel::table! {
    web_sessions (token_hash) {
        token_hash -> Text,
        kind -> Text,
        account -> Nullable<Text>,
        key_id -> Nullable<Int8>,
        csrf -> Text,
        return_url -> Nullable<Text>,
        expires_at -> Timestamptz,
        used_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
    }
}

diesel::allow_tables_to_appear_in_same_query!(invoices, invoice_payments);
diesel::allow_tables_to_appear_in_same_query!(invoices, invoice_settlements);
diesel::allow_tables_to_appear_in_same_query!(invoices, invoice_numbers, invoice_lines);
