ALTER TABLE accounts DROP COLUMN test_clock;
DROP TABLE test_clocks;
