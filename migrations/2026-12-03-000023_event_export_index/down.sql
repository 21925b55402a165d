DROP INDEX events_received_brin;
