-- The per-type counts go back into `event_type_counts` before the table goes, so the version
-- before this one still reports them: each type's total is added to one of its rows (a group
-- writes a type's (account, type) rows with its counts, so every counted type has one).
UPDATE event_type_counts c
   SET event_count = c.event_count + t.n,
       first_seen_at = LEAST(c.first_seen_at, t.f),
       last_seen_at = GREATEST(c.last_seen_at, t.l)
  FROM (SELECT event_type, SUM(event_count) AS n, MIN(first_seen_at) AS f,
               MAX(last_seen_at) AS l
          FROM event_type_totals
         GROUP BY event_type) t,
       (SELECT event_type, MIN(account) AS account
          FROM event_type_counts
         GROUP BY event_type) a
 WHERE t.event_type = a.event_type AND c.event_type = a.event_type AND c.account = a.account;
DROP TABLE event_type_totals;
