-- adjustd PostgreSQL schema, version 3: where a feed's reports went, as SQLite's migration
-- 0005. '' is the outbox itself, a merchant id its folder `outbox/<merchant>/`; feeds
-- recorded before this version keep NULL: not recorded.

ALTER TABLE feeds ADD COLUMN report_folder TEXT NULL;
