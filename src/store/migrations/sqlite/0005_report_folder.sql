-- adjustd SQLite schema, version 5: where a feed's reports went, so `feeds list` names them
-- without looking at the disk. '' is the outbox itself, a merchant id its folder
-- `outbox/<merchant>/` (a feed from `inbox/<merchant>/`). Feeds recorded before this version
-- keep NULL: not recorded.

ALTER TABLE feeds ADD COLUMN report_folder TEXT NULL;
