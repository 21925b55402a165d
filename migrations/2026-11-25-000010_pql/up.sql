-- Product-qualified lead scores and routing, one row per account, rewritten as signals move.
CREATE TABLE pql_scores (
    account text NOT NULL PRIMARY KEY REFERENCES accounts (account),
    score integer NOT NULL,
    tier text NOT NULL CHECK (tier IN ('none', 'watching', 'warm', 'hot')),
    breakdown jsonb NOT NULL,
    zone text NOT NULL CHECK (zone IN ('self_serve', 'sales_available', 'sales_required')),
    zone_reasons jsonb NOT NULL,
    owner text NULL,
    scored_at timestamptz NOT NULL,
    -- When the tier last changed (the queue's order: newest first).
    tier_since timestamptz NOT NULL,
    -- Funnel milestones: first activation, first PQL (warm or hot) and its best tier before
    -- conversion, first hand-off to sales, the conversion to paid and how it is attributed.
    activated_at timestamptz NULL,
    first_pql_at timestamptz NULL,
    best_tier text NULL,
    routed_at timestamptz NULL,
    converted_at timestamptz NULL,
    attribution text NULL CHECK (attribution IN ('self_serve', 'plg_assisted', 'sales_led'))
);
CREATE INDEX pql_scores_queue ON pql_scores (tier, tier_since DESC);
