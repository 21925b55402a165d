DROP TABLE pql_scores;
