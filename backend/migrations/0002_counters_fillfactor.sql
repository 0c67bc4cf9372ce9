-- Counters are updated in place every flush: free space on each page lets Postgres do HOT updates (no new index
-- entry per update), which more than halves the cost of a flush of tens of thousands of counters.
ALTER TABLE counters SET (fillfactor = 50);
