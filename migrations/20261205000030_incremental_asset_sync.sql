-- Incremental AssetSyncJob (docs/scanner-sync.md, "Incremental re-syncs").
--
-- Each scanner group remembers when its last successful sync started, and when its last *full*
-- sync started. A Qualys group synced before is asked only for the detections updated since
-- (detection_updated_since); a full pull still happens on the first sync, every
-- `full_sync_interval_hours` (payload, default one week) and when the payload says
-- "full_sync": true.
ALTER TABLE AssetGroup
    ADD COLUMN LastSyncStart     DATETIME(3) NULL AFTER LastTicketing,
    ADD COLUMN LastFullSyncStart DATETIME(3) NULL AFTER LastSyncStart,
    -- Whether that sync ran with the group in groups_exempt_from_global_exceptions: when the
    -- payload changes it, every device of the group has its Ignore re-evaluated.
    ADD COLUMN LastSyncExemptFromGlobals TINYINT(1) NULL AFTER LastFullSyncStart;

-- The detections an incremental sync does not fetch still get their Ignore re-evaluated when an
-- Ignore row changed since the last sync, so every change to an Ignore row, including one an
-- operator makes by hand in SQL, must move DBUpdatedDate.
ALTER TABLE `Ignore`
    MODIFY COLUMN DBUpdatedDate DATETIME(3) NULL ON UPDATE CURRENT_TIMESTAMP(3),
    ADD KEY ix_ignore_changed (OrganizationID, DBUpdatedDate),
    ADD KEY ix_ignore_created (OrganizationID, DBCreatedDate);

-- Finds detections whose attached Ignore lapsed without scanning the organization's detections.
ALTER TABLE Detection ADD KEY ix_detection_ignore (OrganizationID, IgnoreID);
