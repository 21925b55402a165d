DROP TABLE event_type_counts;
DROP TABLE usage_unique_keys;
DROP TABLE usage_rollups;
DROP TABLE events;
DROP TABLE api_keys;
